#!/usr/bin/env bash
# Idempotent set-up: find Python >= 3.12, install uv into .tools/, sync the locked deps into .venv,
# and install the locked npm stack (zwave-js mock controller + zwave-server) when package-lock.json exists.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local c
    for c in python3.13 python3.12; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
            command -v "$c"; return 0
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

PY=$(find_python) || {
    echo "gatewayd needs Python >= 3.12: install it (apt-get install python3.12, or pyenv install 3.12) and run make again" >&2
    exit 1
}

UV_VERSION=0.13.9
if [ ! -x .tools/bin/uv ] || [ "$(.tools/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    "$PY" -m venv .tools
    .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

.tools/bin/uv sync --quiet --frozen --all-extras --python "$PY"

# Only the Z-Wave tests need the npm stack: `make demo` (simulated locks) runs without Node.js.
stamp=node_modules/.package-lock.stamp
if [ -f package-lock.json ] && ! cmp -s package-lock.json "$stamp"; then
    if command -v npm >/dev/null 2>&1; then
        npm ci --no-audit --no-fund --loglevel=error
        cp package-lock.json "$stamp"
    elif [ "${1:-}" = "--test" ]; then
        echo "gatewayd tests need Node.js >= 20 with npm (the Z-Wave tests run zwave-server): install it and run make again" >&2
        exit 1
    else
        echo "bootstrap: npm not found, the Z-Wave stack is left out (the demo does not need it; make test does)" >&2
    fi
fi

# System packages only the tests use (`bootstrap.sh --test`): Chromium (the status page is tested
# in a real headless browser), systemd (systemd-analyze verify/security on the units) and curl
# (the demo's printed commands are run as printed). Installed only when missing.
[ "${1:-}" = "--test" ] || exit 0
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "gatewayd tests need: ${missing[*]}; apt-get is not available, install them by hand" >&2
        exit 1
    fi
    if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
    echo "bootstrap: installing ${missing[*]}" >&2
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
