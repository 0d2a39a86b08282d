#!/usr/bin/env bash
# Generate the Z-Wave network keys (S0 and S2) once, into DIR/zwave-server.json (mode 0600), the
# zwave-js-server config. An existing file is never overwritten: new keys would orphan every
# securely included lock. Usage: zwave-keys.sh [DIR] (default /var/lib/zwave-js-server).
set -euo pipefail
dir=${1:-/var/lib/zwave-js-server}
cfg="$dir/zwave-server.json"
if [ -s "$cfg" ]; then
    chmod 0600 "$cfg"
    exit 0
fi
umask 077
mkdir -p "$dir/cache"
key() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
tmp=$(mktemp "$dir/.zwave-server.json.XXXXXX")
cat >"$tmp" <<JSON
{
  "securityKeys": {
    "S0_Legacy": "$(key)",
    "S2_Unauthenticated": "$(key)",
    "S2_Authenticated": "$(key)",
    "S2_AccessControl": "$(key)"
  },
  "securityKeysLongRange": {
    "S2_Authenticated": "$(key)",
    "S2_AccessControl": "$(key)"
  },
  "storage": { "cacheDir": "$dir/cache" },
  "logConfig": { "enabled": true, "level": "info", "logToFile": false }
}
JSON
chmod 0600 "$tmp"
mv "$tmp" "$cfg"
echo "zwave-keys: generated network keys in $cfg" >&2
