"""A radio stick that is not plugged in: the daemon stays up, serves the other locks, and says
what is wrong in systemd's STATUS= line."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support import DaemonProcess, config_text, free_port, http_json

pytestmark = pytest.mark.stack


def test_missing_stick_is_reported_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "gatewayd.toml"
    zigbee = '[drivers.zigbee]\nenabled = true\nradio_type = "znp"\ndevice = "/dev/ttyUSB-none"\n'
    cfg.write_text(config_text(tmp_path / "state", status_port=port, extra=zigbee))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    proc = DaemonProcess(cfg, tmp_path / "daemon.log", env=env).start()
    try:
        proc.wait_healthy(port, timeout=60)
        statuses: list[str] = []
        end = time.monotonic() + 20
        while time.monotonic() < end and not any("radio down: zigbee" in s for s in statuses):
            try:
                msg = sock.recv(4096).decode()
            except TimeoutError:
                continue
            statuses += [f[7:] for f in msg.splitlines() if f.startswith("STATUS=")]
        line = next(s for s in statuses if "radio down: zigbee" in s)
        assert "No such file or directory" in line
        assert "\n" not in line

        # The simulated locks still work while the stick is missing.
        device = http_json(f"http://127.0.0.1:{port}/status")["devices"][0]["id"]
        http_json(f"http://127.0.0.1:{port}/actions", {"device_id": device, "action": "unlock"})
        end = time.monotonic() + 10
        while time.monotonic() < end:
            status = http_json(f"http://127.0.0.1:{port}/status")
            if any(a["status"] == "completed" for a in status["actions"]["recent"]):
                break
            time.sleep(0.05)
        assert status["actions"]["recent"][0]["status"] == "completed"
        assert status["drivers"]["zigbee"]["state"] == "down"
        assert proc.proc is not None
        assert proc.proc.poll() is None
    finally:
        proc.kill()
        sock.close()
