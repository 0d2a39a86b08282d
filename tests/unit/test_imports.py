"""What a daemon with only the Z-Wave driver enabled imports: its driver, and no radio library it
does not use (zigpy and the Zigbee driver)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

# Run in a fresh interpreter: this test process may have imported anything already.
_CHILD = """
import json, sys
import anyio
from gatewayd import logging as gwlog
from gatewayd.config import parse_config
from gatewayd.daemon import Daemon

gwlog.configure("warning", "json", sys.stderr)
config = parse_config(sys.argv[1])

async def main() -> None:
    daemon = Daemon(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            await daemon.wait_started()
        assert daemon.registry is not None
        drivers = sorted(daemon.registry.drivers)
        print(json.dumps({"drivers": drivers, "modules": sorted(sys.modules)}))
        daemon.stop()

anyio.run(main)
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_zwave_only_daemon_imports_no_other_radio_library(tmp_path: Path) -> None:
    # zwave-server is not running: the driver starts DOWN and keeps retrying, as on a box whose
    # radio service is late; what matters here is what got imported.
    config = f"""
[gateway]
state_dir = "{tmp_path / "state"}"
[status]
listen = "127.0.0.1:0"
[drivers.zwave]
enabled = true
url = "ws://127.0.0.1:{_closed_port()}"
connect_timeout_s = 2.0
interview_timeout_s = 2.0
"""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, config],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["drivers"] == ["zwave"]
    modules = set(result["modules"])
    assert "drivers.zwave.driver" in modules
    roots = {m.partition(".")[0] for m in modules}
    assert not roots & {"zigpy", "bellows", "zhaquirks", "zigpy_znp", "zigpy_deconz"}
    assert not {m for m in modules if m.startswith("drivers.zigbee")}
    assert "zwave_js_server.client" in modules
