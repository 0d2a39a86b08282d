"""sd_notify when systemd is slow to read: the event loop must not wait on it, and a readiness
notice dropped meanwhile must still arrive."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

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

        receiver.setblocking(False)
        try:
            while receiver.recv(4096):
                pass
        except BlockingIOError:
            pass  # drained: systemd reads again
        assert notifier.notify(WATCHDOG="1")
        assert receiver.recv(4096).decode().splitlines() == ["READY=1", "WATCHDOG=1"]
        assert notifier.notify(WATCHDOG="1")
        assert receiver.recv(4096).decode() == "WATCHDOG=1"  # owed only until delivered
    finally:
        receiver.close()  # also wakes a send still blocked on it
        worker.join(timeout=5)
        notifier.close()
