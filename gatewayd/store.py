"""SQLite store (WAL): identity, devices, the action log and the durable upstream outbox.

Writes produced in one event-loop tick, and in the tick after it, share one transaction
(`flush`): a task woken by this tick's writes (a dispatcher worker with an instant driver) adds
its own to the same commit instead of paying for a second one. A frame is visible to
the tunnel only once committed, so nothing is sent that a crash could take back. A failed
commit (disk full, read-only) keeps the batch in memory, surfaces on `last_error`, and retries;
a disk full gives up the space reserve first (`gatewayd.disk.Reserve`) and retries at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

import anyio
import msgspec

from gatewayd import salvage
from gatewayd.disk import Reserve
from gatewayd.logging import get_logger
from gatewayd.model import iso, utcnow

log = get_logger(__name__)

# The outbox's clock reads this (tests move it); see Store.outbox_now.
_monotonic: Callable[[], float] = time.monotonic

SCHEMA_VERSION: Final = 4
RETRY_FLUSH_S: Final = 1.0
# How long a statement waits for another process's write lock. Short: the store runs on the
# event loop, so a long wait stalls the whole daemon; a refused commit is retried instead.
BUSY_TIMEOUT_S: Final = 0.05
RECENT_FRAMES: Final = 256  # committed frames kept in memory for the tunnel to send...
RECENT_BYTES: Final = 1 << 17  # ...within this many bytes
CHECKPOINT_EVERY: Final = 100  # commits between background WAL checkpoints
BACKSTOP_CHECKPOINT_PAGES: Final = 10_000  # SQLite's own checkpoint only if ours falls behind
# Bytes a WAL is cut back to when it starts over after a complete checkpoint. Without it the WAL
# file keeps the largest size it ever reached (up to the backstop's 40 MB) for good.
JOURNAL_SIZE_LIMIT: Final = 4 << 20
IDLE_CHECKPOINT_S: Final = 1.5  # no commit for this long: the WAL is checkpointed and emptied
OUTBOX_ROW_FRAMES: Final = 256  # frames stored together in one outbox row, at most
# The newest this many actions stay in the action log whatever their age (see `prune_actions`).
ACTION_LOG_FLOOR: Final = 10_000
PRUNE_BATCH: Final = 1_000  # rows deleted per statement: one short stall of the loop each
# SQLite's page cache, in KiB (its default is 2,000 KiB). The action log holds thousands of
# rows, and the ids its primary key is looked up by are random, so the cache keeps filling until
# it reaches its bound: at 2,000 KiB that took three minutes of a busy gateway, which looked
# like a leak. Pages it does not hold are read back from the OS page cache, a few microseconds each.
CACHE_KIB: Final = 512
# bits of has_action's filter of logged ids: 64 KiB, about 1.5 % false positives at 50,000
# (each costs the lookup every id cost before); a Z-Wave box's RSS has little room left
ID_FILTER_BITS: Final = 1 << 19
_ID_MASK: Final = ID_FILTER_BITS - 1

_ADJECTIVES: Final = tuple(
    str.split(
        "amber azure bold brave brisk calm clever cosmic crisp curly dapper eager early fancy "
        "fast fluffy gentle glad golden grand happy hazy humble icy jolly keen kind lively lucky "
        "lunar mellow merry mighty misty modest neat nimble noble odd plain polite proud quick "
        "quiet rapid rosy royal rustic shiny silent silver sleek smooth snowy solar spry steady "
        "sunny swift tidy vivid warm witty young zesty"
    )
)
_NOUNS: Final = tuple(
    str.split(
        "acorn anchor apple arrow badge beacon birch bison breeze brook canyon cedar cloud comet "
        "coral crane dune eagle ember falcon fern fjord forest garnet glacier harbor haiku hawk "
        "heron island jade lagoon lantern maple meadow mesa nebula oak orbit otter panda pebble "
        "pine planet prairie quartz raven reef ridge river saffron sequoia shore sparrow spruce "
        "summit thunder tulip valley willow zephyr"
    )
)


def new_registration_token() -> str:
    """A token in the seed's shape, e.g. `calm-haiku-42`; the cloud rate-limits claims."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(100)}"


@dataclass(frozen=True, slots=True)
class Identity:
    registration_token: str
    token_created_at: datetime
    gateway_id: str | None
    credential: str | None

    @property
    def claimed(self) -> bool:
        return self.gateway_id is not None and self.credential is not None

    def __repr__(self) -> str:
        return f"Identity(gateway_id={self.gateway_id!r}, claimed={self.claimed})"


class ActionRow(msgspec.Struct, frozen=True):
    id: str
    entity_id: str
    action: str
    status: str
    error: dict[str, Any] | None
    transitions: list[tuple[str, str]]  # (status, iso time)
    deadline: str


class Rebased(NamedTuple):
    """What Store.rebase moved: every unacknowledged frame above `after` got `shift` added
    to its seq (0: nothing moved)."""

    after: int
    shift: int


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    driver: str
    native_id: str
    descriptor: dict[str, Any]


# --------------------------------------------------------------------------- migrations


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run `;`-separated DDL inside the caller's transaction (executescript would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE identity (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            registration_token TEXT NOT NULL,
            token_created_at TEXT NOT NULL,
            gateway_id TEXT,
            credential TEXT
        );
        CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            driver TEXT NOT NULL,
            native_id TEXT NOT NULL,
            descriptor TEXT NOT NULL DEFAULT '{}',
            UNIQUE (driver, native_id)
        );
        CREATE TABLE actions (
            id TEXT PRIMARY KEY,
            entity_id TEXT NOT NULL,
            action TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            transitions TEXT NOT NULL,
            deadline TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX actions_status ON actions (status);
        CREATE INDEX actions_updated ON actions (updated_at);
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY,
            frame BLOB NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
    )


_UNFINISHED_SQL: Final = "status IN ('gateway_received', 'processing')"


def _v2(db: sqlite3.Connection) -> None:
    """Fewer index pages per action write: every status change rewrote an entry in both
    `actions` indexes. The status index now holds only unfinished actions (what recovery
    looks for at start-up), so an action that ends within one commit never enters it; the
    `updated_at` index served only `recent_actions`, which reads the table instead."""
    _script(
        db,
        f"""
        DROP INDEX actions_status;
        DROP INDEX actions_updated;
        CREATE INDEX actions_unfinished ON actions (status) WHERE {_UNFINISHED_SQL};
        """,
    )


def _v3(db: sqlite3.Connection) -> None:
    """The outbox keeps the frames of one commit together, up to OUTBOX_ROW_FRAMES to a row
    (`frames`: a msgpack array of the frames first_seq..last_seq), instead of a row each:
    one row insert per commit instead of five per action. Acks delete the rows whose frames
    are all acknowledged; frames already acked in a kept row are skipped when read."""
    _script(
        db,
        """
        CREATE TABLE outbox_v3 (
            last_seq INTEGER PRIMARY KEY,
            first_seq INTEGER NOT NULL,
            frames BLOB NOT NULL,
            created_at TEXT NOT NULL
        )
        """,
    )
    rows = db.execute("SELECT seq, frame, created_at FROM outbox ORDER BY seq").fetchall()
    db.executemany(
        "INSERT INTO outbox_v3 (last_seq, first_seq, frames, created_at) VALUES (?, ?, ?, ?)",
        [(seq, seq, _pack_frames([bytes(frame)]), created) for seq, frame, created in rows],
    )
    _script(db, "DROP TABLE outbox; ALTER TABLE outbox_v3 RENAME TO outbox")


def _pack_frames(frames: list[bytes]) -> bytes:
    return _msgpack_encoder.encode(frames)


def _unpack_frames(blob: bytes) -> list[bytes]:
    return _frames_decoder.decode(blob)


_T = TypeVar("_T")
_msgpack_encoder: Final = msgspec.msgpack.Encoder()
_frames_decoder: Final = msgspec.msgpack.Decoder(list[bytes])


def _v4(db: sqlite3.Connection) -> None:
    """No index on `actions` but its primary key. Even the partial index of unfinished actions
    cost a page write in each commit an action enters or leaves it (2 of about 9.5 WAL pages
    per action run one at a time); its only reader is the start-up recovery, which now reads
    the table once (about 40 ms per 100,000 actions on the dev box)."""
    _script(db, "DROP INDEX actions_unfinished")


# One function per schema version; MIGRATIONS[n] moves the schema from version n to n + 1.
MIGRATIONS: Final[Sequence[Callable[[sqlite3.Connection], None]]] = (_v1, _v2, _v3, _v4)


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: BEGIN IMMEDIATE, COMMIT at the end, ROLLBACK on any exception
    (which goes on up)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class StoreTooNew(sqlite3.DatabaseError):
    """The store was written by a newer gatewayd: a release rolled back after an upgrade.

    Not damage (`salvage.is_corruption` is false for it: it carries no SQLite error code), so
    the file is never moved aside or rebuilt for it, and it is refused before anything is
    written to it. The way out is the newer gatewayd again, or a fresh state directory."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"store schema {found} is newer than this gatewayd knows (up to {known})")
        self.found = found
        self.known = known


def _refuse_newer(db: sqlite3.Connection) -> int:
    """The store's schema version; StoreTooNew if this gatewayd has no migrations up to it."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreTooNew(version, len(MIGRATIONS))
    return version


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION, one transaction per step. Returns the new version.
    Raises StoreTooNew for a schema newer than this gatewayd's."""
    version = _refuse_newer(db)
    for step in range(version, len(MIGRATIONS)):
        with _immediate(db):
            MIGRATIONS[step](db)
            db.execute(f"PRAGMA user_version = {step + 1}")
        log.info("store.migrated", version=step + 1)
    return len(MIGRATIONS)


# --------------------------------------------------------------------------- read-only


def read_identity(path: Path) -> Identity | None:
    """The identity in the store at `path`, read without writing anything (for `gatewayd
    token`): no migration, and no -wal or -shm file made. Run as root while the daemon is
    stopped, those would be root's, and the daemon's user could no longer open its store.
    None if the store holds no identity yet."""
    row = _read_only(
        path,
        "SELECT registration_token, token_created_at, gateway_id, credential FROM identity",
    )
    return None if row is None else Identity(row[0], _parse_ts(row[1]), row[2], row[3])


def read_schema_version(path: Path) -> int:
    """The schema version (`PRAGMA user_version`) of the existing store at `path`, read as
    `read_identity` reads (for `gatewayd check-config`): nothing created, migrated or written."""
    row = _read_only(path, "PRAGMA user_version")
    return 0 if row is None else int(row[0])


def _read_only(path: Path, sql: str) -> tuple[Any, ...] | None:
    """The first row `sql` gives in the store at `path`, opened so that nothing is written."""
    wal, shm = (path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
    for _ in range(3):
        # A store in use (or not closed cleanly) is read through its WAL and its index, as
        # they are. One closed cleanly holds everything in its main file: read it as immutable,
        # which creates nothing (a read-only open would create both files, and leave them).
        live = wal.exists() and shm.exists()
        db = sqlite3.connect(uri if live else uri + "&immutable=1", uri=True)
        try:
            row: tuple[Any, ...] | None = db.execute(sql).fetchone()
        except sqlite3.DatabaseError as exc:
            if not salvage.is_corruption(exc):
                raise
            # Python quotes a value it cannot decode (the credential) in its message
            raise salvage.StoreDamaged(salvage.reason(exc)) from None
        finally:
            db.close()
        if live or not wal.exists():
            return row
        # the daemon started while the main file was read: read again, through its WAL
    raise sqlite3.OperationalError("the store kept changing while it was read")


# --------------------------------------------------------------------------- store


def _create_private(path: Path) -> None:
    """Create `path` (and its sibling WAL files when SQLite makes them) readable by us only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A connection to the store at `path`, checked and migrated. Raises sqlite3.DatabaseError
    for a damaged file."""
    _create_private(path)
    db = _plain_connection(path)
    try:
        _refuse_newer(db)  # first: a newer gatewayd's store is left exactly as it is
        db.execute("PRAGMA journal_mode = WAL")
        mode = "FULL" if synchronous == "full" else "NORMAL"
        db.execute(f"PRAGMA synchronous = {mode}")
        db.execute("PRAGMA foreign_keys = ON")
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        salvage.check(db)
        migrate(db)
    except BaseException:
        db.close()
        raise
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, 0o600)
    return db


def _replace_damaged(path: Path, found: salvage.Salvage, acked_seq: int) -> Path:
    """Write a new store holding `found` beside the damaged one at `path`, keep the damaged one
    aside (`salvage.link_aside`) and rename the new one over it. Returns where the damaged one
    was kept. Raises OSError or sqlite3.Error (a full disk) with the damaged file still at
    `path`: it alone holds what was read, so it is never set aside before its replacement is
    written, and the path never lacks a store, which the next start would take for a new box
    (a new identity to claim, the outbox gone)."""
    fresh = path.with_name(path.name + ".rebuilding")
    salvage.remove(fresh)
    try:
        db = _connect(fresh, "full")  # synced: it holds the identity (see `Store._synced`)
        try:
            _restore(db, found, acked_seq)
            _fold_wal(db)
        finally:
            db.close()
        moved = salvage.link_aside(path)
    except BaseException:
        salvage.remove(fresh)
        raise
    try:
        # the damaged store's WAL goes first: SQLite would read its pages into the new file. A
        # power cut between leaves the damaged file alone, which the next start reads again
        # (the copy aside keeps the WAL); one usually has none left by then: closing folds it in
        for side in ("-wal", "-shm"):
            path.with_name(path.name + side).unlink(missing_ok=True)
        os.replace(fresh, path)
    except BaseException:
        for side in ("-wal", "-shm"):  # not renamed: the damaged store's WAL goes back beside it
            kept = moved.with_name(moved.name + side)
            if kept.exists() and not (back := path.with_name(path.name + side)).exists():
                os.link(kept, back)
        salvage.remove(moved)
        salvage.remove(fresh)
        raise
    with contextlib.suppress(OSError):  # done either way; this makes it survive a power cut
        salvage.sync_dir(path.parent)
    return moved


def _fold_wal(db: sqlite3.Connection) -> None:
    """Copy the whole WAL into the main file, or raise sqlite3.OperationalError: only the main
    file is moved into place. The last close folds the WAL in too, but says nothing when it
    cannot (a disk with room for the WAL and none for the main file to grow), and the main file
    without it is an empty store, or a damaged one."""
    busy, frames, copied = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy or frames != copied:
        raise sqlite3.OperationalError("the new store's WAL could not be checkpointed")


def _decoded[T](decode: Callable[..., T], *values: Any) -> T:
    """`decode(*values)`, for values read from the store; StoreDamaged if they cannot be decoded.
    SQLite's checks cover its pages, not what a value holds: a damaged value that is still text
    (or a blob) failed every read of it, the start-up's recovery of unfinished actions, every
    send of the outbox. As damage, it is rebuilt (`Store._reading`; `salvage.read` checks each
    value); the message quotes nothing of the value."""
    try:
        return decode(*values)
    except (ValueError, TypeError) as exc:
        why = f"a value that cannot be decoded ({type(exc).__name__})"
        raise salvage.StoreDamaged(why) from None


def _plain_connection(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
    )


def _restore(db: sqlite3.Connection, found: salvage.Salvage, acked_seq: int) -> None:
    """Write what was read of a damaged store into a new one, in one transaction."""
    with _immediate(db):
        if found.identity is not None:
            db.execute(
                "INSERT INTO identity (id, registration_token, token_created_at, gateway_id,"
                " credential) VALUES (1, ?, ?, ?, ?)",
                found.identity,
            )
        db.executemany(
            "INSERT OR IGNORE INTO devices (device_id, driver, native_id, descriptor)"
            " VALUES (?, ?, ?, ?)",
            found.devices,
        )
        db.executemany(
            "INSERT OR IGNORE INTO actions (id, entity_id, action, status, error, transitions,"
            " deadline, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            found.actions,
        )
        db.executemany(
            "INSERT OR IGNORE INTO outbox (last_seq, first_seq, frames, created_at)"
            " VALUES (?, ?, ?, ?)",
            found.outbox,
        )
        acked = max(found.acked_seq or 0, acked_seq)
        if acked:
            db.execute("INSERT INTO meta (key, value) VALUES ('acked_seq', ?)", (str(acked),))


class _Checkpointer:
    """Runs WAL checkpoints on its own connection and thread, off the event loop.

    A checkpoint only copies committed pages from the WAL into the database file (and syncs
    them): what is durable, and when, is the same as with SQLite's automatic checkpoint; the
    event loop's commits just no longer wait for it. Every CHECKPOINT_EVERY commits it runs a
    PASSIVE checkpoint, which never blocks a writer (a busy or failed attempt is retried at the
    next poke); a complete one lets the next commit start the WAL over, cut back to
    JOURNAL_SIZE_LIMIT. Under steady load commits land during each checkpoint, so few complete
    and the WAL can still reach the backstop between restarts. When no commit came for
    IDLE_CHECKPOINT_S, or a commit was refused (a full disk: the space the WAL holds is what it
    lacks), it empties the WAL: a PASSIVE checkpoint, then, if that one copied everything and
    still no commit came, a TRUNCATE, which holds the write lock only to cut the file to 0 bytes.
    """

    def __init__(self, path: Path, idle_s: float | None = None) -> None:
        self._path = path
        self._idle_s = IDLE_CHECKPOINT_S if idle_s is None else idle_s
        self._wake = threading.Event()
        self._stopping = False
        self._commits = 0  # commits noted; written by the event loop only
        self._last_commit = time.monotonic()
        self._empty_now = False  # a refused commit asks for the WAL to be emptied
        self._thread = threading.Thread(target=self._run, name="store.checkpoint", daemon=True)
        self._thread.start()

    def committed(self, *, poke: bool) -> None:
        """One commit happened (called from the event loop; two attribute writes)."""
        self._commits += 1
        self._last_commit = time.monotonic()
        if poke:
            self._wake.set()

    def refused(self) -> None:
        """A commit was refused: empty the WAL, so the space it frees is not filled again."""
        self._empty_now = True
        self._wake.set()

    def poke(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, timeout=0)
            db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        except sqlite3.Error:
            return  # the automatic checkpoint of the main connection takes over
        try:
            self._loop(db)
        finally:
            db.close()

    def _loop(self, db: sqlite3.Connection) -> None:
        clean = self._commits  # commits when the WAL was last emptied
        next_try = 0.0  # no idle attempt before this (after a busy one)
        while True:
            timeout = None
            if self._commits != clean:
                due = max(self._last_commit + self._idle_s, next_try)
                timeout = max(0.0, due - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopping:
                return
            seen = self._commits
            now = time.monotonic()
            idle = seen != clean and now - self._last_commit >= self._idle_s and now >= next_try
            if self._empty_now or idle:
                self._empty_now = False
                if self._empty(db, seen):
                    clean = seen
                else:
                    next_try = time.monotonic() + self._idle_s
            elif seen != clean:
                self._checkpoint(db, "PASSIVE")

    def _checkpoint(self, db: sqlite3.Connection, mode: str) -> bool:
        """One checkpoint; whether it copied the whole WAL."""
        try:
            busy, frames, copied = db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            return False  # busy, full: the next poke retries
        return bool(busy == 0 and frames == copied)

    def _empty(self, db: sqlite3.Connection, seen: int) -> bool:
        """PASSIVE (copies without blocking a writer), then TRUNCATE if nothing is left to copy
        and no commit came meanwhile. Whether the WAL was emptied (or nothing needed it)."""
        if not self._checkpoint(db, "PASSIVE") or self._commits != seen:
            return False
        return self._checkpoint(db, "TRUNCATE")


class Store:
    """The daemon's only persistence. Single-threaded: use it from the event loop."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._pending_frames: list[tuple[int, bytes]] = []
        # When the oldest of `_pending_frames` was queued (None: none are): a store refusing
        # commits (disk full, locked) holds them here, and they age like committed ones.
        self._pending_since: datetime | None = None
        # The outbox's clock: the wall clock read once, carried on the monotonic clock (see
        # `outbox_now`), so a wall-clock step moves no frame's age.
        self._clock_anchor = (utcnow(), _monotonic())
        # The latest committed frames (contiguous seqs): the tunnel reads fresh frames from
        # here instead of selecting back what was just inserted.
        self._recent_frames: deque[tuple[int, bytes]] = deque()
        self._recent_bytes = 0
        self._pending_sql: list[tuple[str, tuple[Any, ...]]] = []
        self._pending_actions: dict[str, tuple[ActionRow, list[Any], str]] = {}
        self._pending_devices: dict[str, str] = {}  # device_id -> descriptor JSON, latest
        self._forgotten: set[str] = set()  # device ids whose DELETE waits for the next commit
        # ids handed out whose INSERT waits for the next commit, by (driver, native_id)
        self._new_devices: dict[tuple[str, str], str] = {}
        self._flush_scheduled = False
        self._committed_event = anyio.Event()
        self.last_error: str | None = None
        self.commits = 0
        self._checkpointer: _Checkpointer | None = None
        self._commit_event = anyio.Event()
        self._acked_event = anyio.Event()
        row = db.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()
        self._acked_seq = _decoded(int, row[0]) if row else 0
        top = db.execute("SELECT max(last_seq) FROM outbox").fetchone()[0]
        self._committed_seq = max(int(top or 0), self._acked_seq)
        self._next_seq = self._committed_seq + 1
        # the highest seq that can have left this box before this run (see `rebase`)
        self.opened_seq = self._committed_seq
        self._synchronous = "normal"
        # For a rebuild only (`_rebuild`): the identity last read, and the device ids handed
        # out this run, in case the damage took them.
        self._last_identity: tuple[str, str, str | None, str | None] | None = None
        self._handed_out: dict[str, tuple[str, str]] = {}
        self.recovery: salvage.Recovery | None = None  # set when the store was rebuilt
        self.reserve: Reserve | None = None  # deleted to commit on a full disk
        self._id_filter = bytearray(ID_FILTER_BITS // 8)
        for (action_id,) in db.execute("SELECT id FROM actions"):
            self._note_id(action_id)

    @classmethod
    def open(cls, path: Path, synchronous: str = "normal", reserve: Reserve | None = None) -> Store:
        """Open (or create) the store at `path`. One SQLite finds damaged is kept aside and
        replaced by a new one holding what could be read of it (`gatewayd.salvage`); `recovery`
        then says what happened. A commit the disk is too full for releases `reserve`."""
        try:
            return cls._open(path, synchronous, reserve)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            if not salvage.is_corruption(exc):
                raise
            reason = salvage.reason(exc)
        log.critical("store.damaged", path=str(path), error=reason)
        found = salvage.read(path)
        moved = _replace_damaged(path, found, 0)  # raises with the damaged file left in place
        store = cls._open(path, synchronous, reserve)
        store.recovery = salvage.recovery(found, reason, moved)
        store._report_recovery()
        return store

    @classmethod
    def _open(cls, path: Path, synchronous: str, reserve: Reserve | None) -> Store:
        db = _connect(path, synchronous)
        try:
            store = cls(db, path)
            store._synchronous = synchronous
            store.reserve = reserve
            store._ensure_identity()
        except BaseException:
            db.close()
            raise
        # WAL checkpoints on a thread of their own; SQLite's automatic one (which runs inside
        # COMMIT, stalling the loop for milliseconds) stays as a rarely reached backstop.
        db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")
        store._checkpointer = _Checkpointer(path)
        return store

    def _report_recovery(self) -> None:
        recovery = self.recovery
        assert recovery is not None
        log.critical("store.recovered", **recovery.to_dict())
        if not recovery.kept["identity"]:
            log.critical(
                "store.identity_lost",
                hint="claim the gateway again with its new registration token (gatewayd token)",
            )

    def close(self) -> None:
        if not self.flush():
            # the refusal was logged when it began; what it costs now is said once, here
            log.error(
                "store.closed_unsaved",
                frames=len(self._pending_frames),
                actions=len(self._pending_actions),
                error=self.last_error,
            )
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._db.close()

    # ------------------------------------------------------------------ batching

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(loop.call_soon, self._flush_from_loop)

    def _flush_from_loop(self) -> None:
        self._flush_scheduled = False
        if not self.flush():
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(RETRY_FLUSH_S, self._flush_from_loop)

    def flush(self) -> bool:
        """Commit everything queued in one transaction. False (batch kept) if SQLite refused."""
        if (
            not self._pending_frames
            and not self._pending_sql
            and not self._pending_actions
            and not self._pending_devices
        ):
            return True
        frames, stmts, actions = self._pending_frames, self._pending_sql, self._pending_actions
        devices = self._pending_devices
        try:
            try:
                self._commit(frames, stmts, actions, devices)
            except sqlite3.Error as exc:
                self._rollback()
                # The disk full: the reserve's blocks take this batch (and what follows it)
                # now, not after someone frees space, which a stop or restart may not wait for.
                released = _disk_full(exc) and self.reserve is not None and self.reserve.release()
                # A file that went bad under the running daemon is rebuilt from what can be
                # read of it (and the frames still in memory), and the batch goes into that.
                if not released and not (
                    salvage.is_corruption(exc) and self._rebuild(salvage.reason(exc))
                ):
                    raise
                self._commit(frames, stmts, actions, devices)
        except sqlite3.Error as exc:
            self._rollback()
            if self.last_error is None:
                log.error("store.commit_failed", error=str(exc), queued=len(frames) + len(stmts))
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self._checkpointer is not None:
                self._checkpointer.refused()
            return False
        if self.last_error is not None:
            log.info("store.commit_recovered")
        self.last_error = None
        self.commits += 1
        if self._checkpointer is not None:
            self._checkpointer.committed(poke=self.commits % CHECKPOINT_EVERY == 0)
        self._commit_event.set()
        self._commit_event = anyio.Event()
        self._pending_frames, self._pending_sql, self._pending_actions = [], [], {}
        self._pending_since = None
        self._pending_devices = {}
        self._forgotten.clear()
        self._new_devices.clear()
        if frames:
            self._committed_seq = frames[-1][0]
            self._remember_frames(frames)
            self._committed_event.set()
            self._committed_event = anyio.Event()
        return True

    def _commit(
        self,
        frames: list[tuple[int, bytes]],
        stmts: list[tuple[str, tuple[Any, ...]]],
        actions: dict[str, tuple[ActionRow, list[Any], str]],
        devices: dict[str, str],
    ) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        if frames:
            # one stamp per batch: when its oldest frame was queued, so a batch a refusing
            # store held for minutes keeps its age once committed (see `outbox_oldest_age_s`)
            created = iso(self._pending_since or self.outbox_now())
            db.executemany(
                "INSERT INTO outbox (last_seq, first_seq, frames, created_at) VALUES (?, ?, ?, ?)",
                _outbox_rows(frames, created),
            )
        if actions:
            for action_id in actions:
                self._note_id(action_id)
            db.executemany(
                _UPSERT_ACTION, [_action_params(*pending) for pending in actions.values()]
            )
        for sql, group in itertools.groupby(stmts, key=lambda stmt: stmt[0]):
            # consecutive runs of one statement in one call, in order
            db.executemany(sql, [params for _, params in group])
        if devices:
            # after the statements: a device forgotten since its last save has no entry
            db.executemany(
                "UPDATE devices SET descriptor = ? WHERE device_id = ?",
                [(text, device_id) for device_id, text in devices.items()],
            )
        db.execute("COMMIT")

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def _rebuild(self, reason: str) -> bool:
        """The store file went bad while the daemon ran: move it aside and carry on with a new
        one holding what could be read of it, and the committed frames this run still has in
        memory that the cloud has not acknowledged. False (nothing moved, the old file still in
        use) if that is not possible."""
        log.critical("store.damaged", path=str(self.path), error=reason)
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._db.close()
        found = salvage.read(self.path)
        if self._last_identity is not None and found.identity != self._last_identity:
            # all writes to it go through this store: what it last read is the identity
            if found.identity is None or "identity" in found.lost:
                found.lost["identity"] = (
                    found.lost.get("identity", "unreadable") + "; kept the one this run last read"
                )
            found.identity = self._last_identity
        held = {device_id for device_id, _, _, _ in found.devices}
        found.devices += [
            (device_id, driver, native_id, self._pending_devices.get(device_id, "{}"))
            for device_id, (driver, native_id) in self._handed_out.items()
            if device_id not in held
        ]
        unsaved = [
            (seq, frame)
            for seq, frame in self._recent_frames
            if seq > self._acked_seq and not found.holds_seq(seq)
        ]
        created = iso(self.outbox_now())
        for run in _runs(unsaved):
            found.outbox.extend(_outbox_rows(run, created))
        found.outbox.sort()
        after = self._acked_seq + 1
        kept = sum(max(0, last - max(first, after) + 1) for last, first, _, _ in found.outbox)
        if kept < self._committed_seq - self._acked_seq:
            # gone with the damage: the cloud's ack passes over them when frames after them come
            found.lost["outbox_frames"] = (
                f"{self._committed_seq - self._acked_seq - kept} frames the cloud had not acked"
            )
        try:
            moved = _replace_damaged(self.path, found, self._acked_seq)
        except (OSError, sqlite3.Error) as exc:
            # the damaged file is still in use; commits keep failing, and are retried
            log.critical("store.not_rebuilt", path=str(self.path), error=str(exc))
            self._db = _plain_connection(self.path)
            return False
        try:
            self._db = _connect(self.path, self._synchronous)
            self._ensure_identity()  # none read, none in memory: a new token, claimed anew
        except (OSError, sqlite3.Error) as exc:
            log.critical("store.not_reopened", path=str(self.path), error=str(exc))
            self._db = _plain_connection(self.path)
            return False
        self.recovery = salvage.recovery(found, reason, moved, from_memory=len(unsaved))
        self._report_recovery()
        self._db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")
        self._checkpointer = _Checkpointer(self.path)
        return True

    def _remember_frames(self, frames: list[tuple[int, bytes]]) -> None:
        recent = self._recent_frames
        recent.extend(frames)
        size = 0
        for _, frame in frames:
            size += len(frame)
        self._recent_bytes += size
        while recent and (len(recent) > RECENT_FRAMES or self._recent_bytes > RECENT_BYTES):
            self._recent_bytes -= len(recent.popleft()[1])

    def _queue(self, sql: str, params: tuple[Any, ...]) -> None:
        self._pending_sql.append((sql, params))
        self._schedule_flush()

    # ------------------------------------------------------------------ identity

    def _ensure_identity(self) -> None:
        if self._db.execute("SELECT 1 FROM identity").fetchone() is None:
            self._synced(
                "INSERT INTO identity (id, registration_token, token_created_at) VALUES (1, ?, ?)",
                (new_registration_token(), iso(utcnow())),
            )
            log.info("store.identity_created")

    def identity(self) -> Identity:
        def read() -> tuple[tuple[str, str, str | None, str | None], datetime]:
            row = self._db.execute(
                "SELECT registration_token, token_created_at, gateway_id, credential FROM identity"
            ).fetchone()
            return row, _decoded(_parse_ts, row[1])

        (token, created, gateway_id, credential), created_at = self._reading(read)
        self._last_identity = (token, created, gateway_id, credential)
        return Identity(token, created_at, gateway_id, credential)

    def _reading(self, read: Callable[[], _T]) -> _T:
        """`read()`; once more after a rebuild if it found the file damaged (see `_rebuild`)."""
        try:
            return read()
        except sqlite3.DatabaseError as exc:
            if not salvage.is_corruption(exc):
                raise
            if not self._rebuild(salvage.reason(exc)):
                # Python quotes a value it cannot decode (the credential) in its message
                raise salvage.StoreDamaged(salvage.reason(exc)) from None
        return read()

    def set_claimed(self, gateway_id: str, credential: str) -> None:
        self._synced(
            "UPDATE identity SET gateway_id = ?, credential = ? WHERE id = 1",
            (gateway_id, credential),
        )
        self.identity()  # what a rebuild keeps (see `_rebuild`)

    def _synced(self, sql: str, params: tuple[Any, ...]) -> None:
        """Run one statement as a transaction that is on disk when this returns, whatever
        `synchronous` says. The identity changes rarely, and a claim lost to a power cut would
        leave the gateway unclaimed with a registration token the cloud has already used up.
        (Syncing the WAL also makes every commit before this one durable.)"""
        mode = int(self._db.execute("PRAGMA synchronous").fetchone()[0])
        self._db.execute("PRAGMA synchronous = FULL")
        try:
            self._db.execute(sql, params)
        finally:
            self._db.execute(f"PRAGMA synchronous = {mode}")

    def reset_claim(self) -> Identity:
        """Forget the credential (revoked) and issue a fresh, different registration token."""
        old = self.identity().registration_token
        token = new_registration_token()
        while token == old:
            token = new_registration_token()
        self._synced(
            "UPDATE identity SET gateway_id = NULL, credential = NULL,"
            " registration_token = ?, token_created_at = ? WHERE id = 1",
            (token, iso(utcnow())),
        )
        return self.identity()

    # ------------------------------------------------------------------ devices

    def device_id(self, driver: str, native_id: str) -> str:
        """The stable UUID for (driver, native_id), created and committed on first sight. A
        store refusing commits (a full disk) still hands it out, and the same one again, and
        commits it with the batch it keeps retrying: a lock that joins then is adopted, not
        lost to an exception raised into its driver."""
        key = (driver, native_id)
        pending = self._new_devices.get(key)
        if pending is not None and pending not in self._forgotten:
            return pending
        row = self._reading(
            lambda: self._db.execute(
                "SELECT device_id FROM devices WHERE driver = ? AND native_id = ?",
                key,
            ).fetchone()
        )
        if row and row[0] not in self._forgotten:
            self._handed_out[str(row[0])] = key
            return str(row[0])
        # Forgotten in this batch and seen again before its commit: a new device, as after the
        # commit. The forget's DELETE is queued before this INSERT, so it takes the old row only.
        device_id = str(uuid.uuid4())
        self._new_devices[key] = device_id
        self._handed_out[device_id] = key
        # DO NOTHING: a rebuild (`_rebuild`) may have written the row already, from _handed_out
        self._queue(
            "INSERT INTO devices (device_id, driver, native_id) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (device_id, driver, native_id),
        )
        self.flush()  # now, as `devices()` lists it; refused, it stays queued with the batch
        return device_id

    def save_device(self, device_id: str, descriptor: dict[str, Any] | bytes) -> None:
        """Keep the device's descriptor (bytes: already encoded as JSON).

        Several saves of one device before a commit write only the last descriptor.
        """
        text = descriptor.decode() if isinstance(descriptor, bytes) else _json_text(descriptor)
        self._pending_devices[device_id] = text
        self._schedule_flush()

    def forget_device(self, device_id: str) -> None:
        self._pending_devices.pop(device_id, None)
        self._handed_out.pop(device_id, None)
        self._forgotten.add(device_id)
        self._queue("DELETE FROM devices WHERE device_id = ?", (device_id,))

    def knows_device(self, device_id: str) -> bool:
        """Whether the store holds this device id (and is not about to forget it)."""
        if device_id in self._forgotten:
            return False
        if device_id in self._new_devices.values():
            return True
        row = self._reading(
            lambda: self._db.execute(
                "SELECT 1 FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        )
        return row is not None

    def devices(self) -> list[DeviceRow]:
        def read() -> list[DeviceRow]:
            rows = self._db.execute(
                "SELECT device_id, driver, native_id, descriptor FROM devices ORDER BY rowid"
            ).fetchall()
            return [DeviceRow(d, drv, n, _decoded(json.loads, desc)) for d, drv, n, desc in rows]

        return self._reading(read)

    # ------------------------------------------------------------------ actions

    def record_action(self, row: ActionRow, updated_at: str) -> None:
        """Upsert one action's log entry (never its inputs: they may hold a PIN).

        Several updates of one action within a tick coalesce into one row write, encoded
        when the batch is committed (only the last update of the tick is ever encoded).
        """
        # a copy of the transitions: the caller keeps appending to its list
        self._pending_actions[row.id] = (row, list(row.transitions), updated_at)
        self._schedule_flush()

    def has_action(self, action_id: str) -> bool:
        """Whether the action log holds this id (committed or queued), without decoding it.

        A primary-key lookup (a few microseconds) rather than a set of every id in memory,
        which would grow the daemon for as long as it runs; a fixed-size filter of the ids
        written answers most new ids without it."""
        if action_id in self._pending_actions:
            return True
        if not self._maybe_noted(action_id):
            return False  # never written: no lookup needed
        row = self._reading(
            lambda: self._db.execute("SELECT 1 FROM actions WHERE id = ?", (action_id,)).fetchone()
        )
        return row is not None

    def _note_id(self, action_id: str) -> None:
        """Add an id to the filter: a Bloom filter (three bits per id), so it never forgets one
        and its memory is fixed; ids pruned from the log stay in it and are looked up."""
        bits = self._id_filter
        for i in _id_bits(action_id):
            bits[i >> 3] |= 1 << (i & 7)

    def _maybe_noted(self, action_id: str) -> bool:
        bits = self._id_filter
        a, b, c = _id_bits(action_id)
        return bool(
            bits[a >> 3] & (1 << (a & 7))
            and bits[b >> 3] & (1 << (b & 7))
            and bits[c >> 3] & (1 << (c & 7))
        )

    def action(self, action_id: str) -> ActionRow | None:
        rows = self._select_actions("WHERE id = ?", (action_id,))
        return rows[0] if rows else None

    def actions_with_status(self, statuses: Sequence[str]) -> list[ActionRow]:
        """Reads the whole log (no status index: see `_v4`); used once, at start-up."""
        marks = ",".join("?" * len(statuses))
        return self._select_actions(f"WHERE status IN ({marks})", tuple(statuses))

    def prune_actions(
        self, deadline_before: str, *, keep: int = ACTION_LOG_FLOOR, limit: int = PRUNE_BATCH
    ) -> int:
        """Delete up to `limit` finished actions whose deadline (ISO) is before `deadline_before`,
        the oldest first, never one of the `keep` newest rows. Returns how many went.

        Why it is safe: a request whose id is no longer known is accepted as new, and one whose
        deadline has passed is failed without reaching the lock. Both conditions guard against
        the other's failure: a wall clock set far ahead prunes nothing among the newest rows, and
        a burst of actions prunes nothing whose deadline is recent. Unfinished actions stay for
        the start-up recovery.
        """
        if keep < 1 or limit < 1:
            raise ValueError("keep and limit must be at least 1")
        try:
            cur = self._reading(lambda: self._prune(deadline_before, keep, limit))
        except sqlite3.Error as exc:
            log.warning("store.prune_failed", error=str(exc))
            return 0
        return max(cur.rowcount, 0)

    def _prune(self, deadline_before: str, keep: int, limit: int) -> sqlite3.Cursor:
        return self._db.execute(
            "DELETE FROM actions WHERE rowid IN ("
            " SELECT rowid FROM actions"
            " WHERE status IN ('completed', 'failed') AND deadline < ?"
            " AND rowid < (SELECT rowid FROM actions ORDER BY rowid DESC LIMIT 1 OFFSET ?)"
            " ORDER BY rowid LIMIT ?)",
            (deadline_before, keep - 1, limit),
        )

    def recent_actions(self, limit: int = 20) -> list[ActionRow]:
        return self._select_actions("ORDER BY updated_at DESC, rowid DESC LIMIT ?", (limit,))

    def _select_actions(self, where: str, params: tuple[Any, ...]) -> list[ActionRow]:
        def read() -> list[ActionRow]:
            cur = self._db.execute(
                "SELECT id, entity_id, action, status, error, transitions, deadline FROM actions "  # noqa: S608 - `where` is a literal of this module, values are bound
                + where,
                params,
            ).fetchall()
            return _decoded(_action_rows, cur)

        return self._reading(read)

    # ------------------------------------------------------------------ outbox

    def outbox_put(self, make: Callable[[int], bytes]) -> int:
        """Queue frame make(seq) under the next seq; durable at the end of this loop tick."""
        seq = self._next_seq
        frame = make(seq)  # first: a frame that cannot be made must not leave a gap in the seqs
        self._next_seq = seq + 1
        if not self._pending_frames:
            self._pending_since = self.outbox_now()
        self._pending_frames.append((seq, frame))
        self._schedule_flush()
        return seq

    def outbox_after(self, seq: int, limit: int = 1000) -> list[tuple[int, bytes]]:
        """Committed frames above `seq`, ascending."""
        recent = self._recent_frames
        after = max(seq, self._acked_seq)  # acked frames are deleted, or skipped in a kept row
        if recent and recent[0][0] <= after + 1:
            start = after + 1 - recent[0][0]
            if start >= len(recent) or recent[start][0] == after + 1:  # seqs have no gaps
                return list(itertools.islice(recent, start, start + limit))
        return self._reading(lambda: self._outbox_rows_after(after, limit))

    def _outbox_rows_after(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        with contextlib.closing(
            self._db.execute(
                "SELECT first_seq, frames FROM outbox WHERE last_seq > ? ORDER BY last_seq",
                (after,),
            )
        ) as rows:
            for first, blob in rows:
                for number, frame in enumerate(_decoded(_unpack_frames, blob), start=int(first)):
                    if number > after:
                        out.append((number, frame))
                        if len(out) >= limit:
                            return out
        return out

    def next_commit(self) -> int:
        """The number of the commit that will carry what is queued now."""
        return self.commits + 1

    async def wait_commit(self, number: int) -> None:
        """Return once commit `number` (see `next_commit`) has happened."""
        while self.commits < number:
            await self._commit_event.wait()

    async def wait_outbox(self, after_seq: int) -> None:
        """Return once `outbox_after(after_seq)` has a frame to give (it skips acked ones)."""
        while self._committed_seq <= max(after_seq, self._acked_seq):
            await self._committed_event.wait()

    def outbox_ack(self, seq: int) -> None:
        """Cumulative ack from the cloud: frames up to `seq` are delivered."""
        seq = min(seq, self._committed_seq)
        if seq <= self._acked_seq:
            return
        self._acked_seq = seq
        self._acked_event.set()
        self._acked_event = anyio.Event()
        self._queue("DELETE FROM outbox WHERE last_seq <= ?", (seq,))
        self._queue(
            "INSERT INTO meta (key, value) VALUES ('acked_seq', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(seq),),
        )

    def rebase(
        self,
        cloud_acked: int,
        renumber: Callable[[bytes, int], bytes],
        *,
        cloud_may_hold: int | None = None,
    ) -> Rebased:
        """Follow a cloud that holds seqs past everything this store has given it.

        That happens when the store lost its last commits (a power cut before the OS wrote
        them: `synchronous = normal` does not sync each commit) or was restored from a backup.
        The frames it holds unacknowledged then carry seqs the cloud already has, and the cloud
        would drop them as resends. They are renumbered, in order, to follow `cloud_acked`
        (`renumber(frame, seq)` rewrites one), and `cloud_acked` becomes the acked seq, all in
        one transaction. Returns the seq the frames that moved were above and the shift added
        to each (shift 0: nothing to do).
        Raises sqlite3.Error if the store cannot commit; nothing is changed then.

        `cloud_may_hold`: the highest seq the cloud can hold if nothing was lost (default: all
        that is committed). The tunnel passes what was committed before this run (`opened_seq`)
        or sent during it: frames committed at start-up, before any welcome, never left the
        box, and a cloud that acks as far as them holds the lost frames under their seqs. The
        unacknowledged frames up to a given `cloud_may_hold` are the cloud's already (its ack
        passes them; only the ack of them was lost): they are acknowledged, not renumbered, and
        only the frames after them move (sent again under new seqs, they reached it twice).
        """
        if cloud_acked <= (self._committed_seq if cloud_may_hold is None else cloud_may_hold):
            return Rebased(self._acked_seq, 0)
        if not self.flush():
            raise sqlite3.OperationalError(f"outbox rebase: {self.last_error}")
        after = self._acked_seq
        if cloud_may_hold is not None:
            after = max(after, min(cloud_may_hold, self._committed_seq))
        shift = cloud_acked - after
        backlog = self._next_seq - 1 - after
        held = self.outbox_after(after, limit=backlog) if backlog > 0 else []
        frames = [(seq + shift, renumber(frame, seq + shift)) for seq, frame in held]
        created = iso(self.outbox_now())
        with _immediate(self._db):
            self._db.execute("DELETE FROM outbox")  # acked frames go too: the cloud holds them
            self._db.executemany(
                "INSERT INTO outbox (last_seq, first_seq, frames, created_at) VALUES (?, ?, ?, ?)",
                # a row per run: a store rebuilt after damage may hold gaps (see `_rebuild`)
                [row for run in _runs(frames) for row in _outbox_rows(run, created)],
            )
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('acked_seq', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(cloud_acked),),
            )
        log.warning(
            "store.outbox_rebased",
            was_acked=self._acked_seq,
            cloud_acked=cloud_acked,
            renumbered=len(frames),
        )
        self._acked_seq = cloud_acked
        self._acked_event.set()  # a hand-off among the frames the cloud holds may go ahead
        self._acked_event = anyio.Event()
        self._committed_seq += shift
        self._next_seq += shift
        self._recent_frames.clear()
        self._recent_bytes = 0
        self._remember_frames(frames)
        return Rebased(after, shift)

    async def wait_acked(self, seq: int) -> None:
        """Return once the cloud has acknowledged frame `seq` (and all before it)."""
        while self._acked_seq < seq:
            await self._acked_event.wait()

    @property
    def acked_seq(self) -> int:
        return self._acked_seq

    @property
    def committed_seq(self) -> int:
        return self._committed_seq

    def outbox_now(self) -> datetime:
        """What outbox rows are stamped with and aged by: the wall clock as this store opened,
        moved on by the monotonic clock. An NTP step (a box that booted hours behind) would
        otherwise age every frame queued before it by the step, and fire the fleet's alert on a
        backlog that flows, or, stepped back, read a stuck backlog as young. Rows from an
        earlier run are aged against their own run's clock, so only a step between the two runs
        shows."""
        wall, mono = self._clock_anchor
        try:
            return wall + timedelta(seconds=_monotonic() - mono)
        except OverflowError:  # opened with the clock at the end of year 9999: stay there
            return datetime.max.replace(tzinfo=UTC)

    def outbox_backlog(self) -> int:
        """Frames produced and not yet acknowledged by the cloud (committed or queued)."""
        return self._next_seq - 1 - self._acked_seq

    def outbox_oldest_age_s(self) -> float:
        """Seconds since the oldest frame the cloud has not acknowledged was queued: the older
        of the oldest unacknowledged committed row and the oldest frame still waiting for its
        commit (a store refusing commits, full or locked, holds them in memory); 0 when there
        is none. What a fleet alerts on: a backlog that is large but flowing is young, a stuck
        one ages, also when it is stuck on the disk. Read on `outbox_now`, so a wall-clock step
        moves it neither way."""
        made = self._pending_since if self._pending_frames else None
        try:
            row = self._db.execute(
                "SELECT created_at FROM outbox WHERE last_seq > ? ORDER BY last_seq LIMIT 1",
                (self._acked_seq,),
            ).fetchone()
            if row is not None:
                committed = datetime.fromisoformat(row[0])
                made = committed if made is None else min(made, committed)
        except (sqlite3.Error, ValueError, TypeError):
            pass  # a store that cannot be read shows in last_error; what waits still ages
        return 0.0 if made is None else max(0.0, (self.outbox_now() - made).total_seconds())


def _disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL (ENOSPC on a write): not read-only, locked or damaged."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL


def _id_bits(action_id: str) -> tuple[int, int, int]:
    """The filter's three bit positions for an id, from its (per-process) hash."""
    h = hash(action_id)
    return h & _ID_MASK, (h >> 20) & _ID_MASK, (h >> 40) & _ID_MASK


_UPSERT_ACTION: Final = (
    "INSERT INTO actions (id, entity_id, action, status, error, transitions, deadline,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
    " status = excluded.status, error = excluded.error,"
    " transitions = excluded.transitions, updated_at = excluded.updated_at"
)


def _outbox_rows(frames: Sequence[tuple[int, bytes]], created: str) -> list[tuple[Any, ...]]:
    """Outbox rows for frames of contiguous seqs, up to OUTBOX_ROW_FRAMES to a row."""
    return [
        (chunk[-1][0], chunk[0][0], _pack_frames([f for _, f in chunk]), created)
        for chunk in itertools.batched(frames, OUTBOX_ROW_FRAMES)
    ]


def _runs(frames: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
    """`frames` (ascending seqs) split where a seq is missing."""
    runs: list[list[tuple[int, bytes]]] = []
    for seq, frame in frames:
        if runs and runs[-1][-1][0] == seq - 1:
            runs[-1].append((seq, frame))
        else:
            runs.append([(seq, frame)])
    return runs


def _action_params(row: ActionRow, transitions: list[Any], updated_at: str) -> tuple[Any, ...]:
    return (
        row.id,
        row.entity_id,
        row.action,
        row.status,
        _json_text(row.error) if row.error else None,
        _json_text(transitions),
        row.deadline,
        updated_at,
    )


_json_encoder: Final = msgspec.json.Encoder(enc_hook=str)


def _json_text(value: Any) -> str:
    """Compact JSON text for a TEXT column (anything unknown as its str, like default=str)."""
    return _json_encoder.encode(value).decode()


def _parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _action_rows(rows: list[tuple[Any, ...]]) -> list[ActionRow]:
    return [
        ActionRow(i, e, a, s, json.loads(err) if err else None, _pairs(tr), dl)
        for i, e, a, s, err, tr, dl in rows
    ]


def _pairs(raw: str) -> list[tuple[str, str]]:
    return [(str(s), str(t)) for s, t in json.loads(raw)]
