#!/usr/bin/env bash
# Remove what scripts/install.sh installed. Kept: the state (/var/lib/gatewayd: identity, devices,
# radio databases; /var/lib/zwave-js-server: the Z-Wave network keys, without which every securely
# included lock would have to be included again), the service users, and /etc/gatewayd/config.toml
# when it differs from the example.
set -euo pipefail

PREFIX=${PREFIX:-/opt/gatewayd}
DESTDIR=${DESTDIR:-}
SYSCONFDIR=/etc/gatewayd
UNITDIR=/etc/systemd/system
SYSUSERSDIR=/usr/lib/sysusers.d
BINDIR=/usr/local/bin

say() { echo "uninstall: $*"; }
die() { echo "uninstall: $*" >&2; exit 1; }

case "$PREFIX" in /*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
[ "$PREFIX" != / ] || die "refusing PREFIX=/"
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    die "uninstalling from / needs root: run 'sudo make uninstall'"
fi
root=$DESTDIR

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl disable --now gatewayd.service 2>/dev/null || true
fi

config=$root$SYSCONFDIR/config.toml
example=$root$PREFIX/share/config.example.toml
if [ -f "$config" ] && [ -f "$example" ] && cmp -s "$config" "$example"; then
    rm -f "$config"
    say "removed $SYSCONFDIR/config.toml (unchanged from the example)"
elif [ -f "$config" ]; then
    say "kept $SYSCONFDIR/config.toml (changed since install)"
fi
rmdir "$root$SYSCONFDIR" 2>/dev/null || true

link=$root$BINDIR/gatewayd
if [ -L "$link" ] && [ "$(readlink "$link")" = "$PREFIX/venv/bin/gatewayd" ]; then
    rm -f "$link"
fi
rm -f "$root$UNITDIR/gatewayd.service" "$root$SYSUSERSDIR/gatewayd.conf"
# zwave-js-server.service only when install.sh wrote it (it lists the units it owns), with what
# it runs; this machine's own zwave-js-server.service is not ours to take.
# shellcheck source=scripts/units.sh
. "$(dirname "$0")/units.sh"
zwave_unit=$root$UNITDIR/zwave-js-server.service
if installed_by_us zwave-js-server.service; then
    if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
        systemctl disable --now zwave-js-server.service 2>/dev/null || true
    fi
    rm -f "$zwave_unit"
elif [ -f "$zwave_unit" ]; then
    say "kept zwave-js-server.service (this machine's own, not installed by gatewayd)"
fi
rm -f "$root$SYSUSERSDIR/gatewayd-zwave-js.conf"
# Only what install.sh put under PREFIX, so a mistyped PREFIX cannot take anything else with it.
rm -rf "$root$PREFIX/venv" "$root$PREFIX/venv.new" "$root$PREFIX/venv.old" "$root$PREFIX/python" \
    "$root$PREFIX/share" "$root$PREFIX/README.md" "$root$PREFIX/zwave" "$root$PREFIX/zwave.new" \
    "$root$PREFIX/zwave.old" "$root$PREFIX/scripts/zwave-keys.sh"
rmdir "$root$PREFIX/scripts" 2>/dev/null || true
rmdir "$root$PREFIX" 2>/dev/null || say "left $PREFIX: it holds files this install did not put there"

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "done. Kept: /var/lib/gatewayd (the gateway's identity and devices), /var/lib/zwave-js-server"
say "(the Z-Wave network keys) and the service users"
