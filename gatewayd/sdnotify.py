"""systemd notification (sd_notify) over NOTIFY_SOCKET: READY, STATUS, WATCHDOG, STOPPING."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Final

import structlog

log = structlog.get_logger(__name__)

SEND_TIMEOUT_S: Final = 0.1
"""The longest a notification may hold up the event loop while systemd's queue is full."""
_MUST_ARRIVE: Final = ("READY", "STOPPING")  # resent with the next notification if dropped
# systemd writes WATCHDOG_USEC in ASCII digits; str.isdigit also takes "²" (which int() then
# refuses) and other scripts' digits
_USEC: Final = re.compile(r"[0-9]{1,20}")


class Notifier:
    """Sends sd_notify datagrams when NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        self._failed = False
        self._owed: dict[str, str] = {}
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if _USEC.fullmatch(usec) and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def owed(self) -> bool:
        """A READY or STOPPING that was dropped and waits for the next notification."""
        return bool(self._owed)

    def notify(self, **fields: str) -> bool:
        """Send e.g. notify(READY="1", STATUS="...") as one datagram."""
        if not self._address:
            return False
        fields = {**self._owed, **fields}
        # one line per field: a value holding a newline would add fields of its own (a cloud's
        # text in STATUS= saying "WATCHDOG=trigger" would have systemd kill the service)
        payload = "\n".join(f"{k}={_one_line(v)}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full queue (systemd busy) would otherwise block the event loop, every lock
                # with it, until systemd reads again.
                self._sock.settimeout(SEND_TIMEOUT_S)
            self._sock.sendto(payload, self._address)
        except OSError as exc:  # TimeoutError too: the datagram is dropped
            self._owed = {k: v for k, v in fields.items() if k in _MUST_ARRIVE}
            if not self._failed:
                log.warning("sdnotify.send_failed", error=str(exc) or type(exc).__name__)
            self._failed = True
            return False
        self._owed = {}
        self._failed = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(value: str) -> str:
    """`value` with every control character (newlines among them) shown as a space."""
    return "".join(" " if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in value)
