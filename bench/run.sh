#!/usr/bin/env bash
# Runs every benchmark scenario of issue 5 against a fresh `fleetrun serve` on loopback, prints
# one table and writes target/bench/results.json (and details.json). Everything it starts is
# stopped on exit, including on Ctrl-C. See docs/PERFORMANCE.md.
#
# bench/run.sh --postgres (or POSTGRES=1) also runs the `pg` group of issue 12: a fresh database
# on the machine's PostgreSQL, three `fleetrun serve` replicas on it, and the fan-outs of 1,000
# and 10,000 virtual agents spread over them; the database is dropped on exit.
#
# Environment (all optional):
#   ROUNDS=5            measured rounds per fan-out figure (after one warm-up)
#   VIRTUAL_AGENTS=10000, REAL_AGENTS=100, IDLE_SECS=60, INGEST_MIB=256
#   ONLY=virtual,records,real,ingest,idle   scenario groups to run (records needs virtual;
#                       `pg` runs the PostgreSQL group, as --postgres adds it)
#   FLEETRUN_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test
#                       the PostgreSQL server the `pg` group creates its database on
#   PG_LOG_MIN_DURATION_MS=100  have PostgreSQL log the `pg` group's statements slower than this
#                       (in its own log, e.g. /var/log/postgresql/), to see where time goes
#   KEEP=1              keep the work directory (server data, logs) for inspection
#   SKIP_BUILD=1        use the binaries already in target/release ($CARGO_TARGET_DIR/release)
#   SERVER_BIN=path     serve with another fleetrun build, for A/B runs
#   AGENT_BIN=path      real agents from another build (`fleetrun-agent`, or a `fleetrun` binary)
set -euo pipefail
cd "$(dirname "$0")/.."

for arg in "$@"; do
    case "$arg" in
        --postgres) POSTGRES=1 ;;
        *) echo "usage: bench/run.sh [--postgres]  (options are environment variables; see the top of this file)" >&2; exit 2 ;;
    esac
done

ROUNDS=${ROUNDS:-5}
VIRTUAL_AGENTS=${VIRTUAL_AGENTS:-10000}
REAL_AGENTS=${REAL_AGENTS:-100}
IDLE_SECS=${IDLE_SECS:-60}
INGEST_MIB=${INGEST_MIB:-256}
ONLY=${ONLY:-virtual,records,real,ingest,idle}
# Cargo's target directory, wherever CARGO_TARGET_DIR puts it.
TARGET=${CARGO_TARGET_DIR:-target}
SERVER_BIN=${SERVER_BIN:-$TARGET/release/fleetrun}
AGENT_BIN=${AGENT_BIN:-$TARGET/release/fleetrun-agent}
if [[ -n "${POSTGRES:-}" && ",$ONLY," != *,pg,* ]]; then
    ONLY="$ONLY,pg"
fi
PG_SERVER=${FLEETRUN_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}

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
REPLICA_PIDS=()
PG_DATABASE=""

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
    for pid in "${REPLICA_PIDS[@]}"; do
        stop "$pid"
    done
    if [[ -n "$PG_DATABASE" ]]; then
        psql "$PG_SERVER" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $PG_DATABASE WITH (FORCE)" ||
            echo "could not drop the database $PG_DATABASE on $PG_SERVER; drop it by hand" >&2
    fi
    if [[ -n "${KEEP:-}" ]]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts `fleetrun serve` on port 0 (the kernel picks a free port) with the given extra options,
# logging to $WORK/NAME.log, and waits for the address it bound: sets STARTED_PID and
# STARTED_ADDRESS.
start_server() {
    local name=$1
    shift
    NO_COLOR=1 "$SERVER_BIN" serve \
        --listen 127.0.0.1:0 \
        --data-dir "$WORK/$name" \
        --admin-password "$PASSWORD" \
        --max-instances 10000 \
        "$@" \
        2>"$WORK/$name.log" &
    STARTED_PID=$!
    STARTED_ADDRESS=""
    for _ in $(seq 300); do
        STARTED_ADDRESS=$(bound_address "$name" "$STARTED_PID")
        [[ -n "$STARTED_ADDRESS" ]] && break
        kill -0 "$STARTED_PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; exit 1; }
        sleep 0.1
    done
    if [[ -z "$STARTED_ADDRESS" ]]; then
        echo "the server $name did not report its address; log:" >&2
        cat "$WORK/$name.log" >&2
        exit 1
    fi
    echo "$name pid $STARTED_PID on http://$STARTED_ADDRESS (work dir $WORK)" >&2
}

# The address a server bound: from its "listening" log line, or from the socket table.
# Never fails: an empty answer means "not yet".
bound_address() {
    local name=$1 pid=$2
    {
        sed -e 's/\x1b\[[0-9;]*m//g' "$WORK/$name.log" |
            sed -n 's/.*listening[^0-9]*\([0-9][0-9.]*:[0-9][0-9]*\).*/\1/p'
        if command -v ss >/dev/null; then
            ss -ltnpH 2>/dev/null | grep "pid=$pid," | awk '{print $4}'
        fi
    } | head -n1 || true
}

start_server server
SERVER_PID=$STARTED_PID
ADDRESS=$STARTED_ADDRESS

REPLICA_ARGS=()
if [[ ",$ONLY," == *,pg,* ]]; then
    # A fresh database for this run, on the server the tests use (DROP-ped on exit).
    PG_DATABASE="fleetrun_bench_$$_$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    if ! psql "$PG_SERVER" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $PG_DATABASE" >/dev/null; then
        PG_DATABASE=""
        echo "no PostgreSQL answers at $PG_SERVER; start one (\`pg_ctlcluster 15 main start\`) or point FLEETRUN_TEST_POSTGRES at one" >&2
        exit 1
    fi
    if [[ -n "${PG_LOG_MIN_DURATION_MS:-}" ]]; then
        psql "$PG_SERVER" -qX -c "ALTER DATABASE $PG_DATABASE SET log_min_duration_statement = $PG_LOG_MIN_DURATION_MS" >/dev/null
    fi
    # The same server URL with this database in place of its own (any ?options kept).
    base=${PG_SERVER%%\?*}
    PG_URL="${base%/*}/$PG_DATABASE${PG_SERVER#"$base"}"
    # The first replica migrates the empty database and creates the admin; then the others.
    urls=()
    for name in replica-a replica-b replica-c; do
        start_server "$name" --database-url "$PG_URL"
        REPLICA_PIDS+=("$STARTED_PID")
        urls+=("http://$STARTED_ADDRESS")
    done
    REPLICA_ARGS=(
        --replicas "$(IFS=,; echo "${urls[*]}")"
        --replica-pids "$(IFS=,; echo "${REPLICA_PIDS[*]}")"
    )
fi

FLEETRUN_PASSWORD="$PASSWORD" "$TARGET/release/fleetrun-bench" run \
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
    --only "$ONLY" \
    "${REPLICA_ARGS[@]}" &
BENCH_PID=$!
STATUS=0
wait "$BENCH_PID" || STATUS=$?
BENCH_PID=""
exit "$STATUS"
