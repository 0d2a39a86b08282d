#!/usr/bin/env bash
# Remove what scripts/install.sh installed. Kept: the state (/var/lib/gatewayd: identity, devices,
# radio databases), the service user, and /etc/gatewayd/config.toml when it differs from the example.
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
# zwave-js-server.service only when it is the copy this project installed.
if [ -f "$root$UNITDIR/zwave-js-server.service" ] && [ -f "$(dirname "$0")/../systemd/zwave-js-server.service" ] \
    && cmp -s "$root$UNITDIR/zwave-js-server.service" "$(dirname "$0")/../systemd/zwave-js-server.service"; then
    if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
        systemctl disable --now zwave-js-server.service 2>/dev/null || true
    fi
    rm -f "$root$UNITDIR/zwave-js-server.service"
fi
# Only what install.sh put under PREFIX, so a mistyped PREFIX cannot take anything else with it.
rm -rf "$root$PREFIX/venv" "$root$PREFIX/venv.new" "$root$PREFIX/python" "$root$PREFIX/share" \
    "$root$PREFIX/README.md"
rmdir "$root$PREFIX" 2>/dev/null || say "left $PREFIX: it holds files this install did not put there"

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "done. Kept: /var/lib/gatewayd (the gateway's identity and devices) and the gatewayd user"
