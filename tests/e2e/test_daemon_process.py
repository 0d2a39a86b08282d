"""The real `gatewayd run` process: readiness over a real NOTIFY_SOCKET, actions, no PIN leak,
and a clean SIGTERM shutdown with a consistent store."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import anyio
import pytest

from gatewayd.sdnotify import Notifier
from tests.support import (
    DaemonProcess,
    config_text,
    free_port,
    http_json,
    running_daemon,
    wait_status,
)

PIN = "739152"  # distinctive: must appear nowhere but in the request that carried it


def notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    return sock


def drain(sock: socket.socket, seconds: float) -> list[str]:
    out: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


@pytest.mark.stack
def test_daemon_process_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    cfg = tmp_path / "gatewayd.toml"
    cfg.write_text(config_text(state, status_port=port, latency_ms=20))
    sock = notify_socket(tmp_path)
    log_file = tmp_path / "daemon.log"
    daemon = DaemonProcess(
        cfg,
        log_file,
        env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"},
    ).start()
    try:
        daemon.wait_healthy(port)
        base = f"http://127.0.0.1:{port}"
        messages = drain(sock, 0.6)
        joined = "\n".join(messages)
        assert "READY=1" in joined
        assert "STATUS=unclaimed, tunnel off, 2 locks, 0 actions in flight" in joined
        assert sum("WATCHDOG=1" in m for m in messages) >= 2  # every 0.2 s

        status = http_json(f"{base}/status")
        assert len(status["devices"]) == 2
        device = status["devices"][0]["id"]

        unlock = http_json(f"{base}/actions", {"device_id": device, "action": "unlock"})
        done = wait_status(base, unlock["action_request_id"])
        assert done["status"] == "completed"
        assert [t["status"] for t in done["transitions"]] == [
            "gateway_received",
            "processing",
            "completed",
        ]
        dev = next(d for d in http_json(f"{base}/status")["devices"] if d["id"] == device)
        assert dev["properties"]["locked"] is False
        assert dev["last_event"]["event_name"] == "door unlocked"
        assert dev["last_event"]["details"]["action_request_id"] == unlock["action_request_id"]

        code = http_json(
            f"{base}/actions",
            {"device_id": device, "action": "set_code", "inputs": {"code": PIN, "slot_id": 4}},
        )
        assert wait_status(base, code["action_request_id"])["status"] == "completed"
        bad = http_json(
            f"{base}/actions",
            {"device_id": device, "action": "set_code", "inputs": {"code": "12x4", "slot_id": 4}},
        )
        failed = wait_status(base, bad["action_request_id"])
        assert failed["error"]["type"] == "invalid_input"

        ghost = http_json(f"{base}/actions", {"device_id": "no-such-lock", "action": "lock"})
        assert wait_status(base, ghost["action_request_id"])["error"]["type"] == "device_not_found"

        status_text = f"{http_json(f'{base}/status')}"
        assert PIN not in status_text

        # In flight while SIGTERM arrives: the store must come out consistent.
        http_json(f"{base}/actions", {"device_id": device, "action": "lock"})
        started = time.monotonic()
        daemon.signal()
        assert daemon.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
        assert "STOPPING=1" in "\n".join(drain(sock, 0.3))
    finally:
        daemon.kill()
        sock.close()

    log_text = log_file.read_text()
    assert "daemon.stopped" in log_text
    assert PIN not in log_text
    for f in state.iterdir():
        assert PIN.encode() not in f.read_bytes(), f"PIN found in {f.name}"
    db = sqlite3.connect(state / "gatewayd.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    statuses = [r[0] for r in db.execute("SELECT status FROM actions")]
    assert statuses.count("completed") >= 2
    db.close()

    # Started again on the same state: nothing is left unfinished, nothing runs twice.
    again = DaemonProcess(cfg, log_file).start()
    try:
        again.wait_healthy(port)
        db = sqlite3.connect(state / "gatewayd.db")
        open_ = db.execute(
            "SELECT count(*) FROM actions WHERE status IN ('gateway_received', 'processing')"
        ).fetchone()[0]
        assert open_ == 0
        assert len(http_json(f"http://127.0.0.1:{port}/status")["devices"]) == 2
        assert {d["id"] for d in http_json(f"http://127.0.0.1:{port}/status")["devices"]} == {
            d for (d,) in db.execute("SELECT device_id FROM devices")
        }
        again.signal()
        assert again.wait(timeout=5) == 0
    finally:
        again.kill()


async def test_watchdog_pings_stop_when_the_event_loop_stalls(tmp_path: Path) -> None:
    sock = notify_socket(tmp_path)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "100000"})
    sock.setblocking(False)

    def pings() -> int:
        n = 0
        while True:
            try:
                n += "WATCHDOG=1" in sock.recv(4096).decode()
            except BlockingIOError:
                return n

    async with running_daemon(tmp_path / "state", notifier=notifier):
        await anyio.sleep(0.5)
        assert pings() >= 3  # every 50 ms while the loop runs
        time.sleep(0.6)  # the event loop is blocked: nothing may ping for it
        assert pings() == 0
        await anyio.sleep(0.3)
        assert pings() >= 2  # and pings resume with the loop
    sock.close()


def test_signals_repeated_during_shutdown_do_not_cut_it_short(tmp_path: Path) -> None:
    """After the first SIGTERM the daemon closed its signal receiver: a second one (an
    impatient Ctrl-C, a supervisor that signals twice) got the default handler during the
    shutdown and killed the process before the store was closed."""
    import signal as signals

    port = free_port()
    cfg = tmp_path / "gatewayd.toml"
    cfg.write_text(config_text(tmp_path / "state", status_port=port))
    log_file = tmp_path / "daemon.log"
    proc = DaemonProcess(cfg, log_file).start()
    try:
        proc.wait_healthy(port)
        assert proc.proc is not None
        deadline = time.monotonic() + 10
        while proc.proc.poll() is None and time.monotonic() < deadline:
            proc.signal(signals.SIGTERM)
            time.sleep(0.002)
    finally:
        proc.kill()
    assert "daemon.stopped" in log_file.read_text()
