"""Free space of the file system under the state dir: a warning before SQLite refuses commits.

A full disk is handled (frames wait in memory, `store.last_error`), but by then nothing the
gateway hears is durable; an operator wants to know while there is still room. A space reserve
(`Reserve`) holds a few MiB the store gives up when the disk fills, so what it holds in memory
still reaches the disk.
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
RESERVE_NAME: Final = "store.reserve"
# A door event costs about 2 KB of outbox: 4 MiB commits some 2,000 of them (hours of a busy
# box's doors, and many times the batch a stop finds unsaved) once the disk is full, with
# room for the WAL pages that carry them, at under a tenth of the `disk_low_mb` warning.
RESERVE_BYTES: Final = 4 << 20


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


def free_space(path: Path, read: Callable[[Path], int] = free_bytes) -> int | None:
    """`free_bytes` (or `read`), or None when it cannot be read."""
    try:
        return read(path)
    except OSError:
        return None


def free_space_note(path: Path, read: Callable[[Path], int] = free_bytes) -> str:
    """ " (the file system holding PATH has N free)", or "" when it cannot be read."""
    free = free_space(path, read)
    if free is None:
        return ""
    return f" (the file system holding {path} has {describe_bytes(free)} free)"


class Reserve:
    """A file of really allocated blocks in the state dir, deleted to make room for the store's
    commits when the disk is full (`release`), made again once there is room (`DiskWatch`)."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size
        self._refused = False  # the last make() failed: its warning is not repeated every check

    @property
    def in_place(self) -> bool:
        return self.path.exists()

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(self.path.name + ".tmp")

    def make(self) -> bool:
        """Allocate the reserve (under a temporary name, so a half-made one is never taken for
        it). False if the disk has no room for it."""
        tmp = self._tmp
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)  # blocks taken, not a sparse file
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if not self._refused:
                log.warning("store.reserve_not_made", path=str(self.path), error=str(exc))
            self._refused = True
            return False
        self._refused = False
        log.info("store.reserve_made", path=str(self.path), size_bytes=self.size)
        return True

    def release(self) -> bool:
        """Delete the reserve: its blocks are free for the store's commit. False if none was.
        One half made (a power cut before its rename) is given up too: its blocks are taken."""
        freed = False
        for path in (self.path, self._tmp):
            try:
                path.unlink()
            except OSError:
                continue
            freed = True
        if not freed:
            return False
        log.critical(
            "store.reserve_released",
            path=str(self.path),
            free_bytes=free_space(self.path.parent),
            hint="the disk is full: free space on this file system before this room is used up",
        )
        return True


class DiskWatch:
    """Reads the free space under `path` and logs `store.disk_low` once when it falls below
    `low_bytes`, `store.disk_ok` once when it is back above it by a fifth (no flapping while it
    hovers at the threshold). `low_bytes` 0: never low. Makes `reserve` (again) once the free
    space is above `low_bytes` by its size, so making it does not bring the disk low."""

    def __init__(
        self,
        path: Path,
        low_bytes: int,
        read: Callable[[Path], int] = free_bytes,
        reserve: Reserve | None = None,
    ) -> None:
        self.path = path
        self.low_bytes = low_bytes
        self.ok_bytes = low_bytes + low_bytes // 5
        self.low = False
        self.free: int | None = None  # the last reading
        self._read = read
        self.reserve = reserve

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
        reserve = self.reserve
        if reserve is not None and free >= self.low_bytes + reserve.size and not reserve.in_place:
            reserve.make()
        return free
