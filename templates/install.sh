#!/bin/sh
# Installs the fleetrun agent from the fleetrun server @SERVER@, enrols this machine with an
# activation and runs the agent as a systemd service. Read it before you run it:
#
#   curl -fsSL @SERVER@/install.sh | less
#   curl -fsSL @SERVER@/install.sh | sh -s -- --activation-id ID --activation-code CODE [OPTIONS]
#
# It downloads @SERVER@/download/fleetrun-agent, checks it against the SHA-256 the server gives
# at /download/fleetrun-agent.sha256 (which catches a damaged or cut download; it is no
# signature: the https certificate check is what tells that the server is yours), installs it,
# and runs `fleetrun-agent install`, which enrols, writes its state directory (0700) and the
# unit fleetrun-agent.service, and enables and starts it. Run it as root, unless --no-service
# installs for the current user only.
#
# Options:
#   --activation-id ID       the activation (the console's Activations page, or the API)
#   --activation-code CODE   its code (or FLEETRUN_ACTIVATION_CODE in the environment)
#   --name NAME              the instance's name in the console (default: its id)
#   --tag KEY=VALUE          a tag the instance enrols with; repeat for more
#   --ca-file FILE           PEM file of the CA that signed the server's certificate, or of the
#                            server's self-signed certificate: the downloads here trust it, and
#                            the agent gets a copy (in its state directory)
#   --server URL             the server (default: @SERVER@, where this script came from)
#   --bin-dir DIR            where fleetrun-agent goes (default /usr/local/bin; FLEETRUN_BIN_DIR)
#   --state-dir DIR          the agent's state directory (default /var/lib/fleetrun-agent)
#   --no-service             enrol without a service, and print the command line that runs the
#                            agent, for another supervisor (FLEETRUN_NO_SERVICE=1)
#   --insecure-plaintext     allow http:// to a server that is not this machine (credentials,
#                            commands and this download then cross the network unencrypted)
set -eu

say() { printf 'fleetrun install: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

main() {
    server='@DEFAULT_SERVER@'
    activation_id=''
    activation_code=${FLEETRUN_ACTIVATION_CODE:-}
    name=''
    tags=''
    ca_file=''
    bin_dir=${FLEETRUN_BIN_DIR:-/usr/local/bin}
    state_dir=''
    no_service=''
    case ${FLEETRUN_NO_SERVICE:-} in 1|true|yes) no_service=1 ;; esac
    insecure=''
    while [ $# -gt 0 ]; do
        case $1 in
            --activation-id) need "$@"; activation_id=$2; shift ;;
            --activation-code) need "$@"; activation_code=$2; shift ;;
            --name) need "$@"; name=$2; shift ;;
            --tag) need "$@"; tags="$tags$2
"; shift ;;
            --ca-file) need "$@"; ca_file=$2; shift ;;
            --server) need "$@"; server=${2%/}; shift ;;
            --bin-dir) need "$@"; bin_dir=$2; shift ;;
            --state-dir) need "$@"; state_dir=$2; shift ;;
            --no-service) no_service=1 ;;
            --insecure-plaintext) insecure=1 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown option $1 (--help lists them)" ;;
        esac
        shift
    done
    [ -n "$server" ] || die "give the server with --server URL"
    [ -n "$activation_id" ] || die "give --activation-id (the console's Activations page has the whole line)"
    [ -n "$activation_code" ] || die "give --activation-code, or set FLEETRUN_ACTIVATION_CODE"
    case $server in
        https://*) ;;
        http://127.*|http://localhost|http://localhost[:/]*|http://\[::1\]*) ;;
        http://*) [ -n "$insecure" ] || die "$server is plain http to another machine: the agent and its credential would cross the network unencrypted. Serve fleetrun over https, or add --insecure-plaintext" ;;
        *) die "--server must be an http:// or https:// URL, not $server" ;;
    esac
    if [ -n "$ca_file" ]; then
        [ -r "$ca_file" ] || die "cannot read --ca-file $ca_file"
        case $ca_file in /*) ;; *) ca_file=$(pwd)/$ca_file ;; esac
    fi
    if [ -z "$no_service" ] && [ "$(id -u)" -ne 0 ]; then
        die "run it as root (put sudo before sh), or add --no-service --bin-dir DIR --state-dir DIR to install for this user without a service"
    fi

    mkdir -p "$bin_dir" || die "cannot create $bin_dir"
    # Downloaded beside its destination: the move into place is then one rename, and the file
    # is tried where it will run (/tmp may be mounted noexec).
    work=$(mktemp -d "$bin_dir/.fleetrun-agent.XXXXXX") || die "cannot write in $bin_dir"
    trap 'rm -rf "$work"' EXIT
    trap 'exit 1' HUP INT TERM
    fetch "$server/download/fleetrun-agent" "$work/fleetrun-agent"
    fetch "$server/download/fleetrun-agent.sha256" "$work/fleetrun-agent.sha256"
    expected=$(cut -d ' ' -f 1 "$work/fleetrun-agent.sha256")
    case $expected in
        *[!0-9a-f]*|'') die "$server/download/fleetrun-agent.sha256 holds no SHA-256" ;;
    esac
    actual=$(sha256 "$work/fleetrun-agent")
    if [ "$actual" != "$expected" ]; then
        die "the download is damaged: its SHA-256 is $actual, the server says $expected. Nothing was installed; run the line again"
    fi
    chmod 0755 "$work/fleetrun-agent"
    "$work/fleetrun-agent" --version >/dev/null 2>&1 ||
        die "the agent binary the server hands out does not run on this machine ($(uname -sm)): nothing was installed"
    mv -f "$work/fleetrun-agent" "$bin_dir/fleetrun-agent"
    say "installed $bin_dir/fleetrun-agent (SHA-256 $actual)"

    set -- install --server "$server" --activation-id "$activation_id"
    [ -z "$name" ] || set -- "$@" --name "$name"
    [ -z "$ca_file" ] || set -- "$@" --ca-file "$ca_file"
    [ -z "$state_dir" ] || set -- "$@" --state-dir "$state_dir"
    [ -z "$no_service" ] || set -- "$@" --no-service
    [ -z "$insecure" ] || set -- "$@" --insecure-plaintext
    set -f
    old_ifs=$IFS
    IFS='
'
    for tag in $tags; do set -- "$@" --tag "$tag"; done
    IFS=$old_ifs
    set +f
    # The code goes in the environment, not on the agent's command line, where `ps` shows it;
    # stdin is this script when it comes through a pipe, so the agent gets none.
    FLEETRUN_ACTIVATION_CODE=$activation_code "$bin_dir/fleetrun-agent" "$@" </dev/null
}

need() {
    [ $# -ge 2 ] || die "$1 needs a value"
}

fetch() {
    url=$1
    out=$2
    if command -v curl >/dev/null 2>&1; then
        set -- -sSL -o "$out" -w '%{http_code}'
        [ -z "$ca_file" ] || set -- "$@" --cacert "$ca_file"
        code=$(curl "$@" "$url") || die "cannot download $url"
        # The server's refusal says what it lacks (no agent binary, say): show it.
        [ "$code" = 200 ] || die "$url answered HTTP $code: $(head -c 1000 "$out")"
    elif command -v wget >/dev/null 2>&1; then
        if [ -n "$ca_file" ]; then
            wget -q --ca-certificate="$ca_file" -O "$out" "$url" || die "cannot download $url"
        else
            wget -q -O "$out" "$url" || die "cannot download $url"
        fi
    else
        die "neither curl nor wget is installed: install one of them"
    fi
}

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d ' ' -f 1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d ' ' -f 1
    else
        die "no sha256sum (coreutils) to check the download with"
    fi
}

usage() {
    cat <<'USAGE'
Usage: curl -fsSL @SERVER@/install.sh | sh -s -- --activation-id ID --activation-code CODE [OPTIONS]

  --name NAME            the instance's name in the console
  --tag KEY=VALUE        a tag to enrol with; repeat for more
  --ca-file FILE         the server's CA or self-signed certificate (PEM), for a private CA
  --server URL           the server (default: @SERVER@)
  --bin-dir DIR          where fleetrun-agent goes (default /usr/local/bin)
  --state-dir DIR        the agent's state directory (default /var/lib/fleetrun-agent)
  --no-service           enrol without a systemd service; print the command that runs the agent
  --insecure-plaintext   allow plain http:// to another machine
USAGE
}

# Called on the last line, so that a download cut short runs nothing.
main "$@"
