"""Free space of the file system under the state dir: a warning before SQLite refuses commits.

A full disk is handled (frames wait in memory, `store.last_error`), but by then nothing the
gateway hears is durable; an operator wants to know while there is still room.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger(__name__)

MB: Final = 1_000_000
CHECK_EVERY_S: Final = 10.0  # one statvfs: cheap, and a filling disk takes longer than this


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def describe_bytes(n: int) -> str:
    """`n` bytes for a person: "0 bytes", "812 KB", "48.2 MB", "3.1 GB" (1 MB = 10^6 bytes)."""
    if n < 1000:
        return f"{n} bytes"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", MB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n // 1000} KB"


def free_space_note(path: Path, read: Callable[[Path], int] = free_bytes) -> str:
    """ " (the file system holding PATH has N free)", or "" when it cannot be read."""
    try:
        free = read(path)
    except OSError:
        return ""
    return f" (the file system holding {path} has {describe_bytes(free)} free)"


class DiskWatch:
    """Reads the free space under `path` and logs `store.disk_low` once when it falls below
    `low_bytes`, `store.disk_ok` once when it is back above it by a fifth (no flapping while it
    hovers at the threshold). `low_bytes` 0: never low."""

    def __init__(
        self, path: Path, low_bytes: int, read: Callable[[Path], int] = free_bytes
    ) -> None:
        self.path = path
        self.low_bytes = low_bytes
        self.ok_bytes = low_bytes + low_bytes // 5
        self.low = False
        self.free: int | None = None  # the last reading
        self._read = read

    def check(self) -> int | None:
        """The free bytes now (None if they cannot be read), logging a crossing."""
        try:
            free = self.free = self._read(self.path)
        except OSError:  # the dir gone or unreadable: the store says more than we could
            self.free = None
            return None
        if not self.low and free < self.low_bytes:
            self.low = True
            log.warning(
                "store.disk_low",
                path=str(self.path),
                free_bytes=free,
                threshold_bytes=self.low_bytes,
                hint="free space on this file system: the store stops saving when it is full",
            )
        elif self.low and free >= self.ok_bytes:
            self.low = False
            log.info("store.disk_ok", path=str(self.path), free_bytes=free)
        return free
