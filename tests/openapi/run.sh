#!/usr/bin/env bash
# Validates the OpenAPI document a real `fleetrun serve` serves at /api/v1/openapi.json with
# openapi-spec-validator from PyPI (pinned: tests/openapi/requirements.txt), as the issue 16
# acceptance asks. Whether the document covers every route is checked by tests/it/openapi.rs.
#
#   tests/openapi/run.sh               build, install the validator, start a server, validate
#
# Environment: CARGO_TARGET_DIR (where the binary and the venv live; default ./target),
# SKIP_BUILD=1 (use the binary already built). The exit status is non-zero when the document
# is not valid OpenAPI.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
here=$root/tests/openapi

# shellcheck source=tests/support/python.sh
. "$root/tests/support/python.sh"
fleetrun_binary
venv=$target/openapi-venv
pinned_venv "$venv" "$here/requirements.txt"

data=$(mktemp -d "${TMPDIR:-/tmp}/fleetrun-openapi.XXXXXX")
server=
stop() {
    status=$?
    [ -z "$server" ] || { kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
    [ "$status" = 0 ] || { echo "server log:" >&2; cat "$data/server.log" >&2 || true; }
    rm -rf "$data"
    exit "$status"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Port 0: the server binds a free port and logs its address; no probing, no race.
password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
"$bin" serve --listen 127.0.0.1:0 --data-dir "$data" --admin-password "$password" </dev/null >"$data/server.log" 2>&1 &
server=$!
url=
for _ in $(seq 300); do
    url=$(sed -n 's|.*fleetrun server listening on \(http://[0-9.:]*\).*|\1|p' "$data/server.log" | head -1)
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || { echo "fleetrun serve exited" >&2; exit 1; }
    sleep 0.2
done
[ -n "$url" ] || { echo "fleetrun serve did not log its address within 60 s" >&2; exit 1; }

echo "== GET $url/api/v1/openapi.json (no credentials: the document is public)"
curl -fsS --noproxy '*' "$url/api/v1/openapi.json" -o "$data/openapi.json"
echo "== openapi-spec-validator $("$venv/bin/openapi-spec-validator" --version 2>&1 | tail -1)"
"$venv/bin/openapi-spec-validator" --schema 3.1 --validation-errors all "$data/openapi.json"
