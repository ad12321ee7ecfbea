#!/usr/bin/env bash
# The ECS API suite (issue 13): the official Alibaba Cloud SDKs, unchanged, against a real
# `fleetrun demo` (server and four real agents) on 127.0.0.1.
#
#   tests/ecs/run.sh                 build, install the SDKs, start the demo, run every test
#   tests/ecs/run.sh -k legacy -x    arguments go to pytest
#
# Environment: CARGO_TARGET_DIR (where the binary and the Python venv live; default ./target),
# SKIP_BUILD=1 (use the binary already built), SKIP_NODE=1 (only the Python tests),
# KEEP_DATA=1 (leave the demo's data directory and log behind for a look).
#
# Pinned SDK versions: tests/ecs/requirements.txt (pip) and tests/ecs/node/package-lock.json
# (npm ci). The tests find the server through FLEETRUN_ECS_URL, FLEETRUN_ECS_ADMIN_PASSWORD,
# FLEETRUN_ECS_DATA_DIR and FLEETRUN_ECS_LOG. The exit status is non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
here=$root/tests/ecs

# shellcheck source=tests/support/python.sh
. "$root/tests/support/python.sh"
fleetrun_binary
venv=$target/ecs-venv
pinned_venv "$venv" "$here/requirements.txt"

if [ "${SKIP_NODE:-0}" != 1 ]; then
    lock=$(sha256sum "$here/node/package-lock.json" | cut -d' ' -f1)
    if [ "$(cat "$here/node/node_modules/.lock.sha256" 2>/dev/null)" != "$lock" ]; then
        echo "== npm ci in tests/ecs/node"
        # No install scripts: the only one (@alicloud/openapi-core's) installs TypeScript for Node 10/12.
        (cd "$here/node" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
        echo "$lock" >"$here/node/node_modules/.lock.sha256"
    fi
fi

data=$(mktemp -d "${TMPDIR:-/tmp}/fleetrun-ecs.XXXXXX")
log=$data.log
password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
demo=

# Stops the demo, its agents and anything they started: the demo leads its own session (setsid),
# and commands the agents run get process groups of their own inside that session.
stop() {
    status=$?
    if [ -n "$demo" ]; then
        kill -TERM -- "-$demo" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$demo" 2>/dev/null || break; sleep 0.2; done
        session=$(ps -eo pid=,sid= | awk -v sid="$demo" '$2 == sid { print $1 }')
        [ -z "$session" ] || kill -KILL $session 2>/dev/null || true
    fi
    if [ "${KEEP_DATA:-0}" = 1 ]; then
        echo "kept: data $data, log $log"
    else
        rm -rf "$data" "$log"
    fi
    exit "$status"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Port 0: the demo binds a free port itself and prints its address; no probing, no race. A small
# retained-command quota lets test_commands fill it.
echo "== fleetrun demo (data in $data)"
FLEETRUN_RETAINED_COMMAND_QUOTA=12 setsid "$bin" demo --listen 127.0.0.1:0 --data-dir "$data" \
    --admin-password "$password" </dev/null >"$log" 2>&1 &
demo=$!

url=
for _ in $(seq 300); do
    url=$(sed -n 's|^ *console and API: \(http://[0-9.:]*\).*|\1|p' "$log" | head -1)
    [ -n "$url" ] && break
    kill -0 "$demo" 2>/dev/null || { echo "fleetrun demo exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.2
done
[ -n "$url" ] || { echo "fleetrun demo did not print its address within 60 s:" >&2; cat "$log" >&2; exit 1; }

online=0
for _ in $(seq 180); do
    online=$(curl -fsS -u "admin:$password" "$url/api/v1/instances" 2>/dev/null |
        "$venv/bin/python" -c 'import json, sys; print(sum(i["agent"]["online"] for i in json.load(sys.stdin)["instances"]))' \
            2>/dev/null) || online=0
    [ "$online" = 4 ] && break
    sleep 0.5
done
if [ "$online" != 4 ]; then
    echo "the demo's 4 agents did not come online within 90 s ($online online):" >&2
    cat "$log" "$data"/agents/*/agent.log >&2 || true
    exit 1
fi
echo "== server $url with 4 online agents"

export FLEETRUN_ECS_URL=$url FLEETRUN_ECS_ADMIN_PASSWORD=$password FLEETRUN_ECS_DATA_DIR=$data FLEETRUN_ECS_LOG=$log
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost PYTHONDONTWRITEBYTECODE=1

failed=0
echo "== pytest (Python SDKs: alibabacloud-ecs20140526, aliyun-python-sdk-core)"
# Time limits so that a server that never answers cannot hold CI: the suite takes a few minutes.
timeout --kill-after=10 1500 "$venv/bin/python" -m pytest "$here" -p no:cacheprovider "$@" || failed=1
if [ "${SKIP_NODE:-0}" != 1 ]; then
    echo "== node --test (Node SDK: @alicloud/ecs20140526)"
    (cd "$here/node" && timeout --kill-after=10 600 node --test --test-reporter=spec test.mjs) || failed=1
fi
if [ "$failed" != 0 ]; then
    echo "ECS SDK tests FAILED; the server log's last lines follow (KEEP_DATA=1 keeps all of it):" >&2
    tail -n 50 "$log" >&2 || true
fi
exit "$failed"
