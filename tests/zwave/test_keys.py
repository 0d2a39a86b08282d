"""scripts/zwave-keys.sh: keys generated once, 0600, never overwritten, accepted by zwave-server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.zwave.stack import ROOT


def test_keys_are_generated_once_private_and_distinct(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "zwave-keys.sh"
    subprocess.run([str(script), str(tmp_path)], check=True, capture_output=True)
    cfg = tmp_path / "zwave-server.json"
    assert cfg.stat().st_mode & 0o777 == 0o600
    first = cfg.read_text()
    keys = json.loads(first)["securityKeys"]
    assert set(keys) == {"S0_Legacy", "S2_Unauthenticated", "S2_Authenticated", "S2_AccessControl"}
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys.values())
    assert len(set(keys.values())) == 4
    out = subprocess.run([str(script), str(tmp_path)], check=True, capture_output=True)
    assert cfg.read_text() == first  # a second run keeps the keys locks were included with
    assert b"generated" not in out.stderr
    assert first[:40] not in out.stderr.decode()
