"""Locks removed from the gateway without a confirmed leave, by IEEE address, kept in a file.

Such a lock still holds the network key and its PIN codes: when it speaks again zigpy would
take it back as a new device. The driver refuses it and sends it the leave again (driver.py,
`_refuse`) until one is confirmed or the lock is paired again on purpose.

The file is JSON, `{"version": 1, "ieee": [...]}`, written atomically (a temporary file,
fsync, rename) and 0600 next to zigpy's database. A damaged or unreadable file is a warning
and an empty list, never a crash; a failed write is a warning and the list stays in memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger(__name__)

VERSION: Final = 1
_IEEE: Final = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){7}")


class RemovedLocks:
    """A small persistent set of IEEE addresses (lower-case, colon-separated)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ieee: set[str] = self._load()

    def __contains__(self, ieee: object) -> bool:
        return isinstance(ieee, str) and ieee in self._ieee

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._ieee))

    def __len__(self) -> int:
        return len(self._ieee)

    def add(self, ieee: str) -> None:
        if ieee not in self._ieee:
            self._ieee.add(ieee)
            self._save()

    def discard(self, ieee: str) -> bool:
        """Drop `ieee`; True if it was listed."""
        if ieee not in self._ieee:
            return False
        self._ieee.discard(ieee)
        self._save()
        return True

    def _load(self) -> set[str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return set()
        except (OSError, UnicodeDecodeError) as exc:
            self._damaged(type(exc).__name__)
            return set()
        try:
            data = json.loads(text)
        except ValueError:
            self._damaged("not JSON")
            return set()
        entries = data.get("ieee") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not all(
            isinstance(e, str) and _IEEE.fullmatch(e) for e in entries
        ):
            self._damaged("not a list of IEEE addresses")
            return set()
        return set(entries)

    def _damaged(self, why: str) -> None:
        log.warning(
            "zigbee.removed_list_damaged",
            path=str(self.path),
            error=why,
            effect="starting with an empty list: a lock removed without a confirmed leave"
            " would be adopted again if it speaks",
        )

    def _save(self) -> None:
        data = {"version": VERSION, "ieee": sorted(self._ieee)}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
            _sync_dir(self.path.parent)
        except OSError as exc:
            log.warning(
                "zigbee.removed_list_write_failed",
                path=str(self.path),
                error=f"{type(exc).__name__}: {exc.strerror or ''}".rstrip(": "),
                effect="kept in memory only until the daemon restarts",
            )


def _sync_dir(path: Path) -> None:
    """The rename itself on disk (POSIX: the directory's entry)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
