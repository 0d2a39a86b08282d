"""What a daemon imports: with only the Z-Wave driver enabled, its driver and no radio library it
does not use (zigpy and the Zigbee driver); and prometheus_client only once /metrics is scraped."""

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


# A daemon that nobody scrapes never imports prometheus_client; the first GET /metrics does, and
# answers the same exposition as before.
_SCRAPE_CHILD = """
import json, sys
import aiohttp, anyio
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
        before = "prometheus_client" in sys.modules
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{daemon.status_port}"
            async with http.get(url + "/status") as resp:
                assert resp.status == 200
            status_page = "prometheus_client" in sys.modules
            async with http.get(url + "/metrics") as resp:
                metrics = {"status": resp.status, "type": resp.headers["Content-Type"],
                           "body": await resp.text()}
        print(json.dumps({"before": before, "after_status": status_page,
                          "after_scrape": "prometheus_client" in sys.modules, **metrics}))
        daemon.stop()

anyio.run(main)
"""


def test_prometheus_client_is_imported_at_the_first_scrape(tmp_path: Path) -> None:
    config = f"""
[gateway]
state_dir = "{tmp_path / "state"}"
[status]
listen = "127.0.0.1:0"
"""
    out = subprocess.run(
        [sys.executable, "-c", _SCRAPE_CHILD, config],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"] is False
    assert result["after_status"] is False
    assert result["after_scrape"] is True
    assert result["status"] == 200
    assert result["type"].startswith("text/plain; version=0.0.4")
    body = result["body"]
    assert 'gatewayd_info{version="' in body
    assert "gatewayd_outbox_backlog 0.0" in body
    assert "# TYPE gatewayd_actions_total counter" in body
