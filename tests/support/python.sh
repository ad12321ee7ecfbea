# Sourced by tests/ecs/run.sh and tests/openapi/run.sh: the fleetrun binary they run against, and
# a Python venv pinned to a requirements file. Expects $root (the repository) to be set.

# Sets $target and $bin (the debug `fleetrun`), building it unless SKIP_BUILD=1.
fleetrun_binary() {
    target=${CARGO_TARGET_DIR:-$root/target}
    case $target in /*) ;; *) target=$root/$target ;; esac
    bin=$target/debug/fleetrun
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        echo "== cargo build --bin fleetrun"
        cargo build --quiet --bin fleetrun
    fi
    [ -x "$bin" ] || { echo "no $bin: build it (cargo build --bin fleetrun) or drop SKIP_BUILD" >&2; exit 1; }
}

# pinned_venv DIR REQUIREMENTS: a venv at DIR with exactly REQUIREMENTS installed, rebuilt
# whenever the file changes (a stamp holds its hash).
pinned_venv() {
    local venv=$1 requirements=$2 wanted
    wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$wanted" ]; then
        echo "== Python venv $venv from ${requirements#"$root"/}"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$requirements"
        echo "$wanted" >"$venv/.requirements.sha256"
    fi
}
