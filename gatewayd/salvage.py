"""A damaged store: read what can still be read, keep the damaged file aside, start afresh.

A box keeps its store on an SD card or eMMC, which a power cut or wear can damage. A store
SQLite calls malformed (SQLITE_CORRUPT) or no database at all (SQLITE_NOTADB) either stopped
the daemon at start-up, systemd restarting it every few seconds for good, or left it running
with every commit refused, every action failing. Here the rows of each table are read up to
the damage, from the first row on and from the last row back; a new store holding what was
read is written beside it; only then is the damaged file (and its WAL) linked as
`gatewayd.db.corrupt-<UTC time>` for a post-mortem (the newest KEEP_COPIES are kept) and the new
one renamed over it (`Store.open`, `Store._rebuild`): a power cut at any point leaves one or the
other at the path, never no store. A disk too full for the new store leaves the damaged one
where it was, for the next try.

What is kept matters most in this order: the identity (a gateway that lost its credential must
be claimed again), the devices (their ids are what the cloud knows them by), the unacknowledged
outbox (events not delivered yet), the action log (a repeated id is never run twice). Frames of
a damaged outbox page the cloud has not acked are lost; a rebuild while the daemon runs puts
back those it still holds in memory (the latest 256) and counts the rest in `lost`. A lost acked
seq is caught up by `Store.rebase` at the next welcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from gatewayd.model import iso, utcnow

KEEP_COPIES: Final = 2  # damaged stores kept aside, the newest; older ones are deleted
_CORRUPT_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_SIDES: Final = ("", "-wal", "-shm")
_NOT_UTF8: Final = "Could not decode to UTF-8"
_READ_ERRORS: Final = (sqlite3.Error, UnicodeDecodeError, ValueError, OverflowError)
_frames: Final = msgspec.msgpack.Decoder(list[bytes])


class StoreDamaged(sqlite3.DatabaseError):
    """`PRAGMA quick_check` found the store damaged, though no statement failed yet."""


def is_corruption(exc: BaseException) -> bool:
    """Whether SQLite said the file is damaged, as opposed to full, read-only, busy or gone:
    those pass, and moving the file aside for them would lose a good store. Text that is not
    UTF-8 is damage too (SQLite never writes such text; Python fails on it, in a value or in
    the message SQLite quotes a damaged schema in)."""
    if isinstance(exc, StoreDamaged | UnicodeDecodeError):
        return True
    if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(_NOT_UTF8):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.DatabaseError)
        and isinstance(code, int)
        and (code & 0xFF in _CORRUPT_CODES)
    )


def reason(exc: BaseException) -> str:
    """What to say about damage `exc` showed: SQLite's own message, never a value from the file
    (Python quotes a value that is not UTF-8 in its message: it may be the credential)."""
    if isinstance(exc, UnicodeDecodeError) or str(exc).startswith(_NOT_UTF8):
        return "text that is not UTF-8"
    if isinstance(exc, StoreDamaged):
        return str(exc)  # quick_check names pages and tables, no values
    name = getattr(exc, "sqlite_errorname", None)
    return f"{name}: {exc}" if name else type(exc).__name__


def check(db: sqlite3.Connection) -> None:
    """Raise StoreDamaged unless `PRAGMA quick_check` finds every page sound (it reads them all:
    24 ms for a store of 50,000 actions, 16 MB, on the development box)."""
    problems = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise StoreDamaged("; ".join(problems))


@dataclass
class Salvage:
    """What could be read from a damaged store, each row checked; rows of the current schema."""

    identity: tuple[str, str, str | None, str | None] | None = None
    acked_seq: int | None = None
    devices: list[tuple[str, str, str, str]] = field(default_factory=list)
    actions: list[tuple[Any, ...]] = field(default_factory=list)
    outbox: list[tuple[int, int, bytes, str]] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)  # table -> why (some of) it was lost

    def outbox_frames(self) -> int:
        return sum(last - first + 1 for last, first, _, _ in self.outbox)

    def holds_seq(self, seq: int) -> bool:
        return any(first <= seq <= last for last, first, _, _ in self.outbox)


@dataclass(frozen=True)
class Recovery:
    """One recovery, for the log and /status. Nothing in it comes from a row."""

    at: datetime
    reason: str
    moved_to: str  # the damaged file's new name, in the state directory
    kept: dict[str, int]
    lost: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "reason": self.reason,
            "moved_to": self.moved_to,
            "kept": dict(self.kept),
            "lost": dict(self.lost),
        }


def recovery(salvage: Salvage, reason: str, moved_to: Path, *, from_memory: int = 0) -> Recovery:
    """`from_memory`: outbox frames the running daemon still held, put back in (included in
    `kept["outbox_frames"]`)."""
    return Recovery(
        at=utcnow(),
        reason=reason,
        moved_to=moved_to.name,
        kept={
            "identity": int(salvage.identity is not None),
            "devices": len(salvage.devices),
            "actions": len(salvage.actions),
            "outbox_frames": salvage.outbox_frames(),
            "outbox_frames_from_memory": from_memory,
        },
        lost=dict(salvage.lost),
    )


# --------------------------------------------------------------------------- reading


def read(path: Path) -> Salvage:
    """Everything readable in the store at `path`. Never raises: what cannot be read is named
    in `lost`. Opens the file read-only, so the damaged file stays as it was found."""
    found = Salvage()
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
    if not path.with_name(path.name + "-wal").exists():
        uri += "&immutable=1"  # nothing to read through: then SQLite creates no file beside it
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        found.lost["store"] = reason(exc)
        return found
    db.text_factory = bytes  # checked and decoded here: a damaged value must not end a read
    try:
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            db.execute("SELECT name FROM sqlite_schema").fetchall()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            found.lost["store"] = reason(exc)
            return found
        _read_identity(db, found)
        _read_meta(db, found)
        found.devices = _read(
            db, found, "devices", "device_id, driver, native_id, descriptor", _device
        )
        found.actions = _read(
            db,
            found,
            "actions",
            "id, entity_id, action, status, error, transitions, deadline, updated_at",
            lambda values: _action(found, values),
        )
        if version >= 3:
            found.outbox = _read(
                db, found, "outbox", "last_seq, first_seq, frames, created_at", _row
            )
        else:
            found.outbox = [
                (seq, seq, _pack([bytes(frame)]), created)
                for seq, frame, created in _read(
                    db, found, "outbox", "seq, frame, created_at", _v1_frame
                )
            ]
    finally:
        db.close()
    return found


def _read(
    db: sqlite3.Connection,
    found: Salvage,
    table: str,
    columns: str,
    accept: Callable[[tuple[Any, ...]], tuple[Any, ...] | None],
) -> list[Any]:
    """The rows of `table` up to its damage: read from the first row forward, and where that
    stops, from the last row back to the damage. Rows `accept` refuses (None) are counted lost."""
    rows: dict[int, tuple[Any, ...]] = {}
    refused = 0
    reached = 0  # the highest rowid the forward pass read

    def take(rowid: int, values: list[Any]) -> None:
        nonlocal refused
        kept = accept(tuple(values))
        if kept is None:
            refused += 1
        else:
            rows[rowid] = kept

    select = f"SELECT rowid, {columns} FROM {table} ORDER BY rowid"  # noqa: S608 - literals only
    try:
        for rowid, *values in db.execute(select):
            reached = rowid
            take(rowid, values)
    except _READ_ERRORS as exc:
        found.lost[table] = reason(exc)
        try:
            for rowid, *values in db.execute(select + " DESC"):
                if rowid <= reached:
                    break
                take(rowid, values)
        except _READ_ERRORS:
            pass  # the damage, reached from the other side
    if refused:
        found.lost.setdefault(table, f"{refused} unreadable rows")
    return [rows[rowid] for rowid in sorted(rows)]


def _read_identity(db: sqlite3.Connection, found: Salvage) -> None:
    try:
        row = db.execute(
            "SELECT registration_token, token_created_at, gateway_id, credential FROM identity"
        ).fetchone()
    except _READ_ERRORS as exc:
        found.lost["identity"] = reason(exc)
        return
    token, created, gateway_id, credential = (
        [_text(v) for v in row] if row else [None, None, None, None]
    )
    if not (token and created and _is_time(created)):
        found.lost["identity"] = "no readable registration token"
        return
    claimed = row[2] is not None or row[3] is not None
    if claimed and not (gateway_id and credential):
        found.lost["identity"] = "the claim could not be read"
        gateway_id = credential = None
    found.identity = (token, created, gateway_id, credential)


def _read_meta(db: sqlite3.Connection, found: Salvage) -> None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()
    except _READ_ERRORS as exc:
        found.lost["meta"] = reason(exc)
        return
    value = None if row is None else _text(row[0])
    if value is not None and value.isascii() and value.isdigit():
        found.acked_seq = int(value)


def _device(values: tuple[Any, ...]) -> tuple[Any, ...] | None:
    device_id, driver, native_id, descriptor = (_text(v) for v in values)
    if not (device_id and driver and native_id):
        return None
    if descriptor is None or not _is_object(descriptor):
        descriptor = "{}"  # the driver describes the device again when it reports it
    return (device_id, driver, native_id, descriptor)


def _action(found: Salvage, values: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """An action row. One whose error or transitions cannot be read is kept without them: its
    id is what the log is for (a repeated id is never run twice), and an unfinished action is
    still failed at start-up."""
    texts = [_text(v) for v in values]
    action_id, entity_id, action, status, error, transitions, deadline, updated = texts
    if None in (action_id, entity_id, action, status, deadline, updated):
        return None
    if values[4] is not None and (error is None or not _is_object(error)):
        error = None
        found.lost.setdefault("actions", "rows kept without their error or transitions")
    if transitions is None or not _is_pairs(transitions):
        transitions = "[]"
        found.lost.setdefault("actions", "rows kept without their error or transitions")
    return (action_id, entity_id, action, status, error, transitions, deadline, updated)


def _row(values: tuple[Any, ...]) -> tuple[Any, ...] | None:
    last, first, blob, created = values
    created = _text(created)
    if not (isinstance(last, int) and isinstance(first, int) and 0 < first <= last):
        return None
    if not isinstance(blob, bytes) or created is None:
        return None
    try:
        frames = _frames.decode(blob)
    except msgspec.DecodeError:
        return None
    return (last, first, blob, created) if len(frames) == last - first + 1 else None


def _v1_frame(values: tuple[Any, ...]) -> tuple[Any, ...] | None:
    seq, frame, created = values
    created = _text(created)
    ok = isinstance(seq, int) and seq > 0 and isinstance(frame, bytes) and created is not None
    return (seq, frame, created) if ok else None


def _text(value: object) -> str | None:
    """A TEXT value read as bytes (see `read`), decoded; None if it is not UTF-8 text."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _pack(frames: list[bytes]) -> bytes:
    return msgspec.msgpack.encode(frames)


def _is_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _is_pairs(text: str) -> bool:
    try:
        pairs = json.loads(text)
    except ValueError:
        return False
    return isinstance(pairs, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs
    )


# --------------------------------------------------------------------------- moving aside


def link_aside(path: Path) -> Path:
    """Hard-link the damaged store (with its WAL and shared-memory files) as
    `<name>.corrupt-<UTC time>` beside it, and delete the older such copies but the newest
    KEEP_COPIES - 1. The damaged store stays at `path` too, until the new one replaces it in one
    rename (`gatewayd.store._replace_damaged`). Raises OSError if it cannot be linked: then
    nothing has changed."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        for side in _SIDES:
            source = path.with_name(path.name + side)
            if source.exists():
                os.link(source, target.with_name(target.name + side))
        sync_dir(path.parent)
    except OSError:
        remove(target)
        raise
    with contextlib.suppress(OSError):  # a copy that cannot go takes disk, not correctness
        _prune_copies(path, keep=KEEP_COPIES - 1, besides=target.name)
    return target


def sync_dir(directory: Path) -> None:
    """Make the names just linked, renamed or removed in `directory` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Delete a store file and its WAL and shared-memory files, those that exist."""
    for side in _SIDES:
        path.with_name(path.name + side).unlink(missing_ok=True)


def _prune_copies(path: Path, *, keep: int, besides: str) -> None:
    """Delete all copies but the newest `keep` (by the time in their names) and `besides`,
    the one just made, whatever time a wrong clock gave it."""
    prefix = f"{path.name}.corrupt-"
    stems = sorted(
        {p.name.removesuffix("-wal").removesuffix("-shm") for p in _copies(path.parent, prefix)}
        - {besides}
    )
    for stem in stems[: len(stems) - keep]:
        for side in _SIDES:
            with contextlib.suppress(OSError):
                path.with_name(stem + side).unlink(missing_ok=True)


def _copies(directory: Path, prefix: str) -> Iterable[Path]:
    return (p for p in directory.iterdir() if p.name.startswith(prefix))
