#!/usr/bin/env bash
# Install gatewayd on a gateway box: its own venv under $PREFIX (from the locked dependencies),
# the systemd unit, the service user, an example config (never overwriting one), and a
# `gatewayd` command on PATH; with the zwave extra also what zwave-js-server.service runs (the
# locked npm stack under $PREFIX/zwave, the key script, its user). Honours DESTDIR (staged
# install: nothing outside it is touched).
#
#   sudo make install                                # PREFIX=/opt/gatewayd
#   make install DESTDIR=/tmp/stage                  # a staged tree, e.g. for packaging
#
# Environment: PREFIX, DESTDIR, EXTRAS (default "zwave zigbee"), PYTHON (an interpreter >= 3.12),
# NODE (Node.js >= 20 for zwave-js-server; default: `node` on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/opt/gatewayd}
DESTDIR=${DESTDIR:-}
EXTRAS=${EXTRAS-zwave zigbee}
SYSCONFDIR=/etc/gatewayd
UNITDIR=/etc/systemd/system
SYSUSERSDIR=/usr/lib/sysusers.d
BINDIR=/usr/local/bin
UV_VERSION=0.13.9

say() { echo "install: $*"; }
die() { echo "install: $*" >&2; exit 1; }

case "$PREFIX" in /*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
# Paths written into systemd units: systemd splits at spaces and expands % and $, sed takes & and |.
unit_safe() { case "$1" in *[[:space:]\|\&\\%\$\"\']*) return 1 ;; esac; }
unit_safe "$PREFIX" || die "PREFIX must not contain spaces or any of | & \\ % \$ or quotes: '$PREFIX'"
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    die "installing into / needs root: run 'sudo make install' (or set DESTDIR for a staged tree)"
fi

find_python() {
    local c
    if [ -n "${PYTHON:-}" ]; then
        "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null \
            || return 1
        "$PYTHON" -c 'import sys; print(sys.executable)'
        return 0
    fi
    for c in python3.13 python3.12 python3; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
            "$c" -c 'import sys; print(sys.executable)'; return 0
        fi
    done
    local root
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    for c in "$root"/versions/3.12*/bin/python3 "$root"/versions/3.13*/bin/python3; do
        if [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
            echo "$c"; return 0
        fi
    done
    return 1
}
managed=
if [ "${PYTHON:-}" = managed ]; then
    # Debian 12 ships Python 3.11: let uv put a CPython 3.12 under $PREFIX/python instead.
    managed=1
    unset PYTHON
    tools_py=$(command -v python3) || die "no python3 to run uv with"
else
    PY=$(find_python) || die "gatewayd needs Python >= 3.12: set PYTHON=/path/to/python3.12, or PYTHON=managed for a CPython 3.12 under $PREFIX/python"
    tools_py=$PY
fi

if [ ! -x .tools/bin/uv ] || [ "$(.tools/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    "$tools_py" -m venv .tools
    .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
UV=.tools/bin/uv

if [ -n "$managed" ]; then
    UV_PYTHON_INSTALL_DIR="$DESTDIR$PREFIX/python" "$UV" python install --quiet 3.12
    PY=$(UV_PYTHON_INSTALL_DIR="$DESTDIR$PREFIX/python" "$UV" python find --managed-python --no-project 3.12)
fi
case "$(readlink -f "$PY")" in
    /root/* | /home/*)
        say "WARNING: $PY is in a home directory, which the service cannot see (ProtectHome=yes)."
        say "WARNING: it will not start; install again with PYTHON=managed or another interpreter."
        ;;
esac

root=$DESTDIR
venv=$root$PREFIX/venv
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. The venv: the exact locked versions, then gatewayd itself, byte-compiled (the tree is
#    read-only to the service). Relocatable, so a staged DESTDIR tree runs once moved into place.
extra_args=()
for e in $EXTRAS; do extra_args+=(--extra "$e"); done
say "venv $PREFIX/venv (extras: ${EXTRAS:-none})"
"$UV" export --quiet --frozen --no-dev --no-emit-project "${extra_args[@]}" -o "$work/requirements.txt"
# Built beside the old one and swapped in, so a running daemon keeps working until restarted.
new=$venv.new
rm -rf "$new"
"$UV" venv --quiet --relocatable --python "$PY" "$new"
"$UV" pip install --quiet --python "$new/bin/python" --compile-bytecode --no-deps \
    -r "$work/requirements.txt"
"$UV" pip install --quiet --python "$new/bin/python" --compile-bytecode --no-deps .
# The unit runs the daemon with PYTHONOPTIMIZE=2: its bytecode too (gatewayd from a shell is
# not optimised and uses the default level's).
"$new/bin/python" -m compileall -q -o 2 -j 0 "$new/lib" >/dev/null
"$new/bin/gatewayd" check-config -c config.example.toml >/dev/null \
    || die "the new venv does not run: $new kept for inspection"
rm -rf "$venv.old"
if [ -e "$venv" ]; then mv "$venv" "$venv.old"; fi
mv "$new" "$venv"
rm -rf "$venv.old"
install -d -m 0755 "$root$PREFIX/share"
install -m 0644 config.example.toml "$root$PREFIX/share/config.example.toml"
install -m 0644 README.md "$root$PREFIX/README.md"

# 2. systemd: the unit and the service user. The units name /opt/gatewayd: another PREFIX is
#    written into the installed copies. The units this install owns are listed in
#    $PREFIX/share/units: an install replaces them (local changes go in drop-ins, `systemctl
#    edit`), uninstall removes them with what they run; a zwave-js-server.service that is not
#    ours (this machine's own zwave-js-server) is never touched.
install -d -m 0755 "$root$UNITDIR" "$root$SYSUSERSDIR"
owned=$root$PREFIX/share/units
: >"$work/units"
# shellcheck source=scripts/units.sh
. scripts/units.sh
ours() {  # ours NAME: no such unit yet, or one an earlier install wrote
    [ ! -e "$root$UNITDIR/$1" ] || installed_by_us "$1"
}
install_unit() {  # install_unit SOURCE NAME [SED-EXPRESSION...]
    local src=$1 name=$2 exprs=(-e "s|/opt/gatewayd|$PREFIX|g")
    shift 2
    for e in "$@"; do exprs+=(-e "$e"); done
    sed "${exprs[@]}" "$src" >"$work/$name"
    install -m 0644 "$work/$name" "$root$UNITDIR/$name"
    echo "$name" >>"$work/units"
}
install_unit systemd/gatewayd.service gatewayd.service
install -m 0644 systemd/gatewayd.sysusers "$root$SYSUSERSDIR/gatewayd.conf"
if [ -z "$DESTDIR" ] && command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$SYSUSERSDIR/gatewayd.conf"
fi

# 3. Z-Wave (with the zwave extra): zwave-js-server.service runs the locked npm stack from
#    $PREFIX/zwave with a Node.js >= 20 as its own user, its keys made at first start by
#    $PREFIX/scripts/zwave-keys.sh. Without such a Node.js the unit is not installed (a unit that
#    cannot start would only fail at boot); gatewayd itself does not need it.
node_ok() { "$1" -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null; }
zwave_done=
if [[ " $EXTRAS " == *" zwave "* ]] && [ -f systemd/zwave-js-server.service ]; then
    node=${NODE:-$(command -v node || true)}
    if [ -n "$node" ] && node_ok "$node"; then
        node=$("$node" -e 'process.stdout.write(process.execPath)')
        npm_cmd=$(dirname "$node")/npm  # the npm of that Node.js, run by it (not another's)
        [ -x "$npm_cmd" ] || npm_cmd=$(command -v npm || true)
    fi
    if [ -z "$node" ] || ! node_ok "$node" || [ -z "${npm_cmd:-}" ]; then
        say "WARNING: no Node.js >= 20 with npm (set NODE=/path/to/node): zwave-js-server.service"
        say "WARNING: is not installed. Install Node.js 20 or later and run this again for Z-Wave."
    elif ! unit_safe "$node"; then
        die "the Node.js path goes into a systemd unit: no spaces or | & \\ % \$ quotes: '$node'"
    elif ! ours zwave-js-server.service; then
        say "keeping this machine's own $UNITDIR/zwave-js-server.service (not installed by"
        say "gatewayd): point [drivers.zwave] url at the zwave-server it runs"
    else
        case "$node" in
            /root/* | /home/*)
                say "WARNING: $node is in a home directory, which zwave-js-server cannot see"
                say "WARNING: (ProtectHome=yes): it will not start; set NODE to another Node.js."
                ;;
            /snap/*)
                say "WARNING: $node is a snap's versioned path: it goes away when the snap is"
                say "WARNING: refreshed; set NODE to a Node.js with a stable path (e.g. /usr/bin/node)."
                ;;
        esac
        stack=$root$PREFIX/zwave
        say "zwave-js stack $PREFIX/zwave (Node.js $node)"
        # Built beside the old one and swapped in, as the venv is.
        rm -rf "$stack.new"
        install -d -m 0755 "$stack.new"
        install -m 0644 package.json package-lock.json "$stack.new/"
        PATH="$(dirname "$node"):$PATH" "$npm_cmd" ci --omit=dev --no-audit --no-fund \
            --loglevel=error --prefix "$stack.new" >/dev/null
        [ -f "$stack.new/node_modules/@zwave-js/server/dist-esm/bin/server.js" ] \
            || die "the npm stack has no zwave-server: $stack.new kept for inspection"
        rm -rf "$stack.old"
        if [ -e "$stack" ]; then mv "$stack" "$stack.old"; fi
        mv "$stack.new" "$stack"
        rm -rf "$stack.old"
        install -d -m 0755 "$root$PREFIX/scripts"
        install -m 0755 scripts/zwave-keys.sh "$root$PREFIX/scripts/zwave-keys.sh"
        install_unit systemd/zwave-js-server.service zwave-js-server.service \
            "s|^ExecStart=/usr/bin/node |ExecStart=$node |"
        install -m 0644 systemd/zwave-js.sysusers "$root$SYSUSERSDIR/gatewayd-zwave-js.conf"
        if [ -z "$DESTDIR" ] && command -v systemd-sysusers >/dev/null 2>&1; then
            systemd-sysusers "$SYSUSERSDIR/gatewayd-zwave-js.conf"
        fi
        zwave_done=1
    fi
fi
if [ -z "$zwave_done" ] && [ -f "$owned" ] && grep -qxF zwave-js-server.service "$owned"; then
    echo zwave-js-server.service >>"$work/units"  # installed before and left as it was: still ours
fi
install -m 0644 "$work/units" "$owned"

# 4. The config: the example on first install only; a config already there is never replaced.
install -d -m 0750 "$root$SYSCONFDIR"
config=$root$SYSCONFDIR/config.toml
if [ -e "$config" ]; then
    say "keeping $SYSCONFDIR/config.toml (the example is in $PREFIX/share/config.example.toml)"
else
    install -m 0640 config.example.toml "$config"
    say "wrote $SYSCONFDIR/config.toml from the example: enable a driver in it"
fi
if getent group gatewayd >/dev/null 2>&1; then
    chgrp gatewayd "$root$SYSCONFDIR" "$config"
else
    say "no gatewayd group here: $SYSCONFDIR stays root-only until systemd-sysusers has run"
fi

# 5. The command on PATH.
install -d -m 0755 "$root$BINDIR"
ln -sfn "$PREFIX/venv/bin/gatewayd" "$root$BINDIR/gatewayd"

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "done. Next: edit $SYSCONFDIR/config.toml, then 'systemctl enable --now gatewayd'"
