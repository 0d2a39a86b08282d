"""sd_notify when systemd is slow to read: the event loop must not wait on it, and a readiness
notice dropped meanwhile must still arrive."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from gatewayd.sdnotify import Notifier


def full_notify_socket(path: Path) -> socket.socket:
    """A bound notify socket whose queue is full, as when systemd does not read for a while."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)
    try:
        while True:
            sender.sendto(b"X=1", str(path))
    except BlockingIOError:
        pass
    finally:
        sender.close()
    return receiver


def drain(receiver: socket.socket) -> list[str]:
    """Read what the queue holds, as systemd does when it reads again."""
    receiver.setblocking(False)
    got = []
    try:
        while True:
            got.append(receiver.recv(4096).decode())
    except BlockingIOError:
        return got


def test_a_full_notify_queue_does_not_block_and_ready_is_sent_once_it_drains(
    tmp_path: Path,
) -> None:
    path = tmp_path / "notify.sock"
    receiver = full_notify_socket(path)
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    sent: list[bool] = []
    # in a thread, so that a send that blocks for good cannot hang the test run
    worker = threading.Thread(target=lambda: sent.append(notifier.notify(READY="1")), daemon=True)
    try:
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "notify() blocked on a full queue"
        assert sent == [False]

        drain(receiver)
        assert notifier.notify(WATCHDOG="1")
        assert receiver.recv(4096).decode().splitlines() == ["READY=1", "WATCHDOG=1"]
        assert notifier.notify(WATCHDOG="1")
        assert receiver.recv(4096).decode() == "WATCHDOG=1"  # owed only until delivered
    finally:
        receiver.close()  # also wakes a send still blocked on it
        worker.join(timeout=5)
        notifier.close()


# "²"; 30000000 in Arabic-Indic digits; 30 in fullwidth digits
@pytest.mark.parametrize("usec", ["\u00b2", "\u0663" + "\u0660" * 7, "\uff13\uff10"])
def test_a_watchdog_usec_that_is_not_plain_ascii_digits_is_ignored(usec: str) -> None:
    """`str.isdigit` took superscripts (int() then raised: the daemon could not start) and
    other scripts' digits; systemd writes ASCII digits only."""
    assert Notifier({"WATCHDOG_USEC": usec}).watchdog_s is None


class _Stop(Exception):
    pass


async def test_a_tiny_watchdog_usec_does_not_make_the_ping_loop_spin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_USEC=1 had the loop ping systemd every half microsecond, flat out."""
    import gatewayd.daemon
    from gatewayd.config import parse_config
    from gatewayd.daemon import Daemon
    from tests.support import config_text

    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1"})
    daemon = Daemon(parse_config(config_text(tmp_path / "state")), notifier=notifier)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise _Stop

    monkeypatch.setattr(gatewayd.daemon.anyio, "sleep", sleep)
    try:
        with pytest.raises(_Stop):
            await daemon._watchdog()
        assert receiver.recv(4096).decode().startswith("WATCHDOG=1")  # it still pings
    finally:
        receiver.close()
        notifier.close()
    assert min(waits) >= 0.05  # at most 20 pings a second


def test_a_value_holding_a_newline_cannot_add_a_field(tmp_path: Path) -> None:
    """STATUS= carries text from outside (names, the cloud's errors): a newline in it made a
    field of its own, and `WATCHDOG=trigger` has systemd kill the service."""
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    try:
        assert notifier.notify(STATUS="claimed as gw-1\nWATCHDOG=trigger\x1b[2J")
        fields = receiver.recv(4096).decode().split("\n")
    finally:
        notifier.close()
        receiver.close()
    assert fields == ["STATUS=claimed as gw-1 WATCHDOG=trigger [2J"]


async def test_a_dropped_ready_is_sent_again_without_a_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without WatchdogSec= the ping loop sends only a changed STATUS=: a READY=1 dropped on a
    full queue (and the first STATUS= with it) waited for the status line to change, which on a
    quiet box is never, and systemd killed the service at TimeoutStartSec=."""
    import anyio

    import gatewayd.daemon
    from gatewayd.config import parse_config
    from gatewayd.daemon import Daemon
    from tests.support import config_text

    monkeypatch.setattr(gatewayd.daemon, "WATCHDOG_MAX_PING_S", 0.1)  # the loop's turn, sooner
    path = tmp_path / "notify.sock"
    receiver = full_notify_socket(path)
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})  # no WATCHDOG_USEC
    daemon = Daemon(parse_config(config_text(tmp_path / "state")), notifier=notifier)
    received: list[str] = []
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                await daemon.wait_started()
                await anyio.sleep(0.3)  # READY=1 and the first STATUS= went while it was full
                drain(receiver)
                await anyio.sleep(1.0)
                received = drain(receiver)
                daemon.stop()
    finally:
        receiver.close()
    assert any("READY=1" in datagram.splitlines() for datagram in received), received
