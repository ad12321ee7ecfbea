#!/usr/bin/env bash
# Runs every benchmark scenario of issue 5 against a fresh `fleetrun serve` on loopback, prints
# one table and writes target/bench/results.json (and details.json). Everything it starts is
# stopped on exit, including on Ctrl-C. See docs/PERFORMANCE.md.
#
# Environment (all optional):
#   ROUNDS=5            measured rounds per fan-out figure (after one warm-up)
#   VIRTUAL_AGENTS=10000, REAL_AGENTS=100, IDLE_SECS=60, INGEST_MIB=256
#   ONLY=virtual,records,real,ingest,idle   scenario groups to run (records needs virtual)
#   KEEP=1              keep the work directory (server data, logs) for inspection
#   SKIP_BUILD=1        use the binaries already in target/release
#   SERVER_BIN=path     serve with another fleetrun build, for A/B runs
#   AGENT_BIN=path      real agents from another build (`fleetrun-agent`, or a `fleetrun` binary)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
VIRTUAL_AGENTS=${VIRTUAL_AGENTS:-10000}
REAL_AGENTS=${REAL_AGENTS:-100}
IDLE_SECS=${IDLE_SECS:-60}
INGEST_MIB=${INGEST_MIB:-256}
ONLY=${ONLY:-virtual,records,real,ingest,idle}
SERVER_BIN=${SERVER_BIN:-target/release/fleetrun}
AGENT_BIN=${AGENT_BIN:-target/release/fleetrun-agent}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bins
    # The agent as users get it: built without the server's crates (README, "Install an agent").
    cargo build --release --no-default-features --bin fleetrun-agent
fi

# Ten thousand agent sockets on each side of loopback.
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleetrun-bench.XXXXXX")
PASSWORD="bench-$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
SERVER_PID=""
BENCH_PID=""

stop() {
    local pid=$1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    # The bench's agent processes die with it (parent-death signal).
    stop "$BENCH_PID"
    stop "$SERVER_PID"
    if [[ -n "${KEEP:-}" ]]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Port 0: the kernel picks a free port and the server logs the address it bound.
NO_COLOR=1 "$SERVER_BIN" serve \
    --listen 127.0.0.1:0 \
    --data-dir "$WORK/server" \
    --admin-password "$PASSWORD" \
    --max-instances 10000 \
    2>"$WORK/server.log" &
SERVER_PID=$!

# The address the server bound: from its "listening" log line, or from the socket table.
# Never fails: an empty answer means "not yet".
bound_address() {
    {
        sed -e 's/\x1b\[[0-9;]*m//g' "$WORK/server.log" |
            sed -n 's/.*listening[^0-9]*\([0-9][0-9.]*:[0-9][0-9]*\).*/\1/p'
        if command -v ss >/dev/null; then
            ss -ltnpH 2>/dev/null | grep "pid=$SERVER_PID," | awk '{print $4}'
        fi
    } | head -n1 || true
}
ADDRESS=""
for _ in $(seq 100); do
    ADDRESS=$(bound_address)
    [[ -n "$ADDRESS" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.1
done
if [[ -z "$ADDRESS" ]]; then
    echo "the server did not report its address; log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
fi
echo "server pid $SERVER_PID on http://$ADDRESS (work dir $WORK)" >&2

FLEETRUN_PASSWORD="$PASSWORD" target/release/fleetrun-bench run \
    --server "http://$ADDRESS" \
    --server-pid "$SERVER_PID" \
    --agent "$AGENT_BIN" \
    --work-dir "$WORK" \
    --out target/bench/results.json \
    --rounds "$ROUNDS" \
    --virtual-agents "$VIRTUAL_AGENTS" \
    --real-agents "$REAL_AGENTS" \
    --idle-secs "$IDLE_SECS" \
    --ingest-mib "$INGEST_MIB" \
    --only "$ONLY" &
BENCH_PID=$!
STATUS=0
wait "$BENCH_PID" || STATUS=$?
BENCH_PID=""
exit "$STATUS"
