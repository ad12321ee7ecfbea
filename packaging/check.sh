#!/usr/bin/env bash
# Builds the .deb from the debug build CI already has (stripped, fast compression: a check of the
# packaging, not a release) and checks it: its contents, the binaries run from an extracted
# root, and the server's unit passes `systemd-analyze verify`. A release .deb is `cargo deb`.
#
# Needs cargo-deb and packaging/fleetrun-agent.service (the agent's unit).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
out=$(mktemp -d)
root=$(mktemp -d)
trap 'rm -rf "$out" "$root"' EXIT

# The binaries of the debug build (cargo-deb's own build would rebuild every dependency for
# its target); it warns that the dev profile is for checks like this one, not releases.
cargo build --locked --bin fleetrun --bin fleetrun-agent
cargo deb --profile dev --no-build --strip --fast --output "$out"
deb=$(ls "$out"/fleetrun_*.deb)
echo "packaging: built $(basename "$deb") ($(du -h "$deb" | cut -f1))"

contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/fleetrun ./usr/bin/fleetrun-agent \
    ./lib/systemd/system/fleetrun.service ./lib/systemd/system/fleetrun-agent.service \
    ./lib/systemd/system/fleetrun-agent.service.d/config.conf \
    ./etc/fleetrun/server.toml ./etc/fleetrun/agent.toml; do
    if ! grep -qE " ${path//./\\.}$" <<<"$contents"; then
        echo "packaging: $path is not in the package:"
        echo "$contents"
        exit 1
    fi
done
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
for conf in /etc/fleetrun/server.toml /etc/fleetrun/agent.toml; do
    grep -qx "$conf" <<<"$conffiles" || { echo "packaging: $conf is not a conffile"; exit 1; }
done
control=$(dpkg-deb --ctrl-tarfile "$deb" | tar -t)
for script in postinst prerm postrm; do
    grep -qx "./$script" <<<"$control" || { echo "packaging: no $script"; exit 1; }
    sh -n "packaging/debian/$script"
done

# Installed into a throwaway root: the binaries run, and the shipped server.toml is one the
# server takes (a bad key there would stop the service at its first start).
dpkg -x "$deb" "$root"
"$root/usr/bin/fleetrun" --version
"$root/usr/bin/fleetrun-agent" --version
"$root/usr/bin/fleetrun" serve --config "$root/etc/fleetrun/server.toml" --print-config >/dev/null

if command -v systemd-analyze >/dev/null 2>&1; then
    # Checked where it is installed, so that the binary on ExecStart exists (verify wants it).
    unit_dir=$(mktemp -d)
    trap 'rm -rf "$out" "$root" "$unit_dir"' EXIT
    sed "s|/usr/bin/fleetrun|$root/usr/bin/fleetrun|g" "$root/lib/systemd/system/fleetrun.service" \
        >"$unit_dir/fleetrun.service"
    # User=fleetrun need not exist here; verify does not check users.
    systemd-analyze verify "$unit_dir/fleetrun.service"
    echo "packaging: systemd-analyze verify accepts fleetrun.service"
else
    echo "packaging: systemd-analyze not found; the unit was not verified"
fi
echo "packaging: ok"
