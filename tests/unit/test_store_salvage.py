"""A damaged store file (real SQLite files on disk, pages overwritten as a failing SD card
would leave them): the daemon starts on a new store holding what could be read, and keeps the
damaged file aside; at run time, a commit that finds the file damaged rebuilds it and lands."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from gatewayd import protocol, salvage
from gatewayd import store as store_module
from gatewayd.model import iso, utcnow
from gatewayd.store import ActionRow, Store
from tests.support import ROOT

DB = "gatewayd.db"


def pages(path: Path, table: str, kind: str | None = None) -> list[int]:
    """The page numbers of `table`'s b-tree (`kind`: 'leaf' or 'internal' only), in order."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        where = "" if kind is None else f" AND pagetype = '{kind}'"
        rows = db.execute(
            f"SELECT pageno FROM dbstat WHERE name = ?{where} ORDER BY path", (table,)
        ).fetchall()
    finally:
        db.close()
    return [int(r[0]) for r in rows]


def root_page(path: Path, table: str) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(
            db.execute("SELECT rootpage FROM sqlite_schema WHERE name = ?", (table,)).fetchone()[0]
        )
    finally:
        db.close()


def overwrite(path: Path, page: int) -> None:
    """Garbage over one page of the file, as a torn or worn-out write leaves it."""
    size = 4096
    with open(path, "r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\x5a" * size)


def checkpoint(store: Store) -> None:
    """Everything into the main file (the store's own checkpoint thread may hold it a moment)."""
    for _ in range(100):
        if store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0:
            return
        time.sleep(0.02)
    raise AssertionError("the WAL could not be checkpointed")


def frame(seq: int, n: int) -> bytes:
    return protocol.encode(protocol.DeviceRemovedMsg(seq=seq, device_id=f"dev-{n}"))


def seqs(store: Store, after: int = 0) -> list[int]:
    return [s for s, _ in store.outbox_after(after, limit=100_000)]


def filled(path: Path, *, actions: int = 0, frames: int = 6, acked: int = 2) -> dict[str, object]:
    """A claimed store with two devices, `actions` finished actions and `frames` frames of which
    `acked` were acknowledged; closed (everything in the main file). Returns what it holds."""
    store = Store.open(path)
    store.set_claimed("gw-1", "credential-of-gw-1")
    devices = [store.device_id("sim", f"lock-{n}") for n in range(2)]
    now = iso(utcnow())
    for n in range(actions):
        row = ActionRow(
            f"ar-{n:06d}", devices[0], "unlock", "completed", None, [("completed", now)], now
        )
        store.record_action(row, now)
    for n in range(frames):
        store.outbox_put(lambda seq, n=n: frame(seq, n))
    assert store.flush()
    store.outbox_ack(acked)
    assert store.flush()
    token = store.identity().registration_token
    store.close()
    return {"devices": devices, "token": token}


@pytest.fixture
def store_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's log lines reach `capture_logs` (its own logger keeps the configuration of
    its first use)."""
    monkeypatch.setattr(store_module, "log", structlog.get_logger("gatewayd.store"))


@pytest.mark.usefixtures("store_log")
def test_a_file_that_is_no_database_is_kept_aside_and_a_new_store_starts(tmp_path: Path) -> None:
    path = tmp_path / DB
    path.write_bytes(b"this is not what SQLite wrote" * 100)
    os.chmod(path, 0o600)
    with capture_logs() as logs:
        store = Store.open(path)
    try:
        assert store.recovery is not None
        assert store.recovery.lost == {"store": "SQLITE_NOTADB: file is not a database"}
        assert store.recovery.kept["identity"] == 0
        ident = store.identity()
        assert not ident.claimed
        assert ident.registration_token  # a new one to claim it with
        moved = tmp_path / store.recovery.moved_to
        assert moved.read_bytes() == b"this is not what SQLite wrote" * 100
        assert stat.S_IMODE(moved.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        store.outbox_put(lambda seq: frame(seq, 0))
        assert store.flush()
    finally:
        store.close()
    events = {(e["event"], e["log_level"]) for e in logs}
    assert ("store.identity_lost", "critical") in events
    assert ("store.recovered", "critical") in events


def test_a_damaged_action_log_keeps_the_claim_the_devices_the_outbox_and_most_actions(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB
    held = filled(path, actions=3000, frames=6, acked=2)
    leaves = pages(path, "actions", "leaf")
    assert len(leaves) > 20
    middle = leaves[len(leaves) // 2]
    overwrite(path, middle)

    store = Store.open(path)
    try:
        rec = store.recovery
        assert rec is not None
        assert set(rec.lost) == {"actions"}
        ident = store.identity()
        assert (ident.gateway_id, ident.credential) == ("gw-1", "credential-of-gw-1")
        assert ident.registration_token == held["token"]
        assert [d.device_id for d in store.devices()] == held["devices"]
        assert store.device_id("sim", "lock-1") == held["devices"][1]  # ids survive
        assert store.acked_seq == 2
        assert seqs(store) == [3, 4, 5, 6]  # the unacknowledged frames, nothing else
        # read up to the damaged page from both ends: one page of rows lost, not the rest
        kept = rec.kept["actions"]
        assert 3000 - 2 * 3000 // len(leaves) < kept < 3000
        assert store.has_action("ar-000000")
        assert store.has_action("ar-002999")
        assert len(store.actions_with_status(["completed"])) == kept
        # the new store works, and numbers on after what it held
        assert store.outbox_put(lambda seq: frame(seq, 9)) == 7
        assert store.flush()
    finally:
        store.close()
    # the damaged file is there to look at, with the broken page still in it
    copies = sorted(tmp_path.glob(f"{DB}.corrupt-*"))
    assert [c.name for c in copies] == [rec.moved_to]


def test_a_damaged_identity_page_issues_a_new_token_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / DB
    held = filled(path)
    overwrite(path, root_page(path, "identity"))
    store = Store.open(path)
    try:
        assert store.recovery is not None
        assert "identity" in store.recovery.lost
        ident = store.identity()
        assert not ident.claimed
        assert ident.registration_token != held["token"]
        assert [d.device_id for d in store.devices()] == held["devices"]
        assert seqs(store) == [3, 4, 5, 6]
    finally:
        store.close()


def test_a_lost_outbox_is_caught_up_by_the_cloud_not_numbered_anew(tmp_path: Path) -> None:
    """The outbox and the acked seq gone: the next frames are numbered from 1 again, below
    what the cloud holds, and the first welcome's ack moves them past it (Store.rebase)."""
    path = tmp_path / DB
    filled(path)
    overwrite(path, root_page(path, "outbox"))
    overwrite(path, root_page(path, "meta"))
    store = Store.open(path)
    try:
        assert store.recovery is not None
        assert {"outbox", "meta"} <= set(store.recovery.lost)
        assert store.outbox_put(lambda seq: frame(seq, 0)) == 1
        assert store.flush()
        assert store.rebase(6, lambda _frame, seq: frame(seq, 0)).shift == 6
        assert seqs(store) == [7]
    finally:
        store.close()


def test_only_the_newest_damaged_copies_are_kept(tmp_path: Path) -> None:
    path = tmp_path / DB
    names = []
    for n in range(salvage.KEEP_COPIES + 2):
        path.unlink(missing_ok=True)
        path.write_bytes(f"damaged {n}".encode() * 50)
        store = Store.open(path)
        assert store.recovery is not None
        names.append(store.recovery.moved_to)
        store.close()
    left = sorted(p.name for p in tmp_path.glob(f"{DB}.corrupt-*"))
    assert left == names[-salvage.KEEP_COPIES :]


def test_only_damage_is_taken_for_damage(tmp_path: Path) -> None:
    """A full disk, a read-only file or a busy lock must never move a good store aside."""
    db = sqlite3.connect(tmp_path / "full.db")
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 3")
    db.execute("INSERT INTO t VALUES (zeroblob(3000))")
    with pytest.raises(sqlite3.Error) as full:
        db.execute("INSERT INTO t VALUES (zeroblob(3000))")
    db.close()
    assert full.value.sqlite_errorcode == sqlite3.SQLITE_FULL
    assert not salvage.is_corruption(full.value)

    ro = tmp_path / "ro.db"
    sqlite3.connect(ro).execute("CREATE TABLE t (x)").connection.commit()
    reader = sqlite3.connect(f"file:{ro}?mode=ro", uri=True)
    with pytest.raises(sqlite3.Error) as readonly:
        reader.execute("INSERT INTO t VALUES (1)")
    reader.close()
    assert not salvage.is_corruption(readonly.value)

    bad = tmp_path / "bad.db"
    bad.write_bytes(b"x" * 8192)
    with pytest.raises(sqlite3.Error) as notadb:
        sqlite3.connect(bad).execute("SELECT * FROM sqlite_schema").fetchall()
    assert salvage.is_corruption(notadb.value)


@pytest.mark.usefixtures("store_log")
def test_a_store_damaged_while_the_daemon_runs_is_rebuilt_and_the_commit_lands(
    tmp_path: Path,
) -> None:
    """The outbox's page goes bad under a running store: the next commit finds it, the store
    is rebuilt, and the unacknowledged frames the damaged page held come back from memory."""
    path = tmp_path / DB
    with capture_logs() as logs:
        store = Store.open(path)
        _damaged_under(store, path, logs)
    reopened = Store.open(path)  # the rebuilt file is sound and holds the same
    try:
        assert reopened.recovery is None
        assert seqs(reopened, 1) == [2, 3, 4, 5, 6]
        assert reopened.acked_seq == 1
    finally:
        reopened.close()


def _damaged_under(store: Store, path: Path, logs: list[dict[str, object]]) -> None:
    try:
        store.set_claimed("gw-1", "credential-of-gw-1")
        device = store.device_id("sim", "lock-0")
        for n in range(5):
            store.outbox_put(lambda seq, n=n: frame(seq, n))
        assert store.flush()
        store.outbox_ack(1)
        assert store.flush()
        checkpoint(store)
        overwrite(path, root_page(path, "outbox"))
        overwrite(path, root_page(path, "meta"))  # the acked seq: this run knows it
        store._db.execute("PRAGMA shrink_memory")  # SQLite reads the page from the file again

        before = len(logs)
        store.outbox_put(lambda seq: frame(seq, 5))  # outside an event loop: committed at once
        assert store.flush()
        rec = store.recovery
        assert rec is not None
        assert {"outbox", "meta"} <= set(rec.lost)
        assert rec.kept["outbox_frames_from_memory"] == 4  # seqs 2..5, held in memory
        assert "outbox_frames" not in rec.lost  # nothing unacked is missing
        assert store.last_error is None
        assert seqs(store, 1) == [2, 3, 4, 5, 6]
        assert store.identity().credential == "credential-of-gw-1"
        assert store.device_id("sim", "lock-0") == device
        said = [e["event"] for e in logs[before:] if e["event"] != "store.migrated"]
        assert said == ["store.damaged", "store.recovered"]
    finally:
        store.close()


def test_a_read_that_finds_the_file_damaged_rebuilds_it_with_what_this_run_knows(
    tmp_path: Path,
) -> None:
    """The identity's and the devices' pages go bad under a running store: the next read of
    the identity finds it, and the rebuilt store keeps the claim and the device ids this run
    had read and handed out, so the gateway neither needs claiming again nor renames its locks."""
    path = tmp_path / DB
    store = Store.open(path)
    try:
        store.set_claimed("gw-1", "credential-of-gw-1")
        before = store.identity()
        devices = [store.device_id("sim", f"lock-{n}") for n in range(2)]
        assert store.flush()
        checkpoint(store)
        overwrite(path, root_page(path, "identity"))
        overwrite(path, root_page(path, "devices"))
        store._db.execute("PRAGMA shrink_memory")

        assert store.identity() == before
        rec = store.recovery
        assert rec is not None
        assert {"identity", "devices"} <= set(rec.lost)
        assert rec.kept["identity"] == 1
        assert [store.device_id("sim", f"lock-{n}") for n in range(2)] == devices
    finally:
        store.close()
    reopened = Store.open(path)
    try:
        assert reopened.recovery is None
        assert reopened.identity() == before
        assert [d.device_id for d in reopened.devices()] == devices
    finally:
        reopened.close()


def test_a_damaged_credential_never_reaches_the_report(tmp_path: Path) -> None:
    """One byte of the credential damaged: Python quotes the whole value in its decode error,
    which went into `lost`, and from there to /status and the log."""
    credential = "gwc_9f3b2c7d1e8a4b6c0d5e7f1a2b3c4d5e"
    path = tmp_path / DB
    store = Store.open(path)
    store.set_claimed("gw-1", credential)
    store.close()
    raw = bytearray(path.read_bytes())
    at = raw.find(credential.encode())
    raw[at + 20] = 0xFF
    path.write_bytes(bytes(raw))
    overwrite(path, root_page(path, "outbox"))
    with capture_logs() as logs:
        store = Store.open(path)
    try:
        assert store.recovery is not None
        assert store.recovery.lost["identity"] == "the claim could not be read"
        assert not store.identity().claimed
        shown = json.dumps(store.recovery.to_dict()) + json.dumps(logs, default=str)
        assert credential[:12] not in shown
        assert credential[-12:] not in shown
    finally:
        store.close()


def test_a_damaged_schema_text_is_damage_not_a_crash(tmp_path: Path) -> None:
    """A byte of the schema on page 1 that is not UTF-8: SQLite quotes it in its error, and
    Python's UnicodeDecodeError ended every start."""
    path = tmp_path / DB
    Store.open(path).close()
    raw = bytearray(path.read_bytes())
    at = raw.find(b"CREATE TABLE identity (", 0, 4096)
    raw[at + len(b"CREATE TABLE identity ")] = 0xF3
    path.write_bytes(bytes(raw))
    store = Store.open(path)
    try:
        assert store.recovery is not None
        assert store.recovery.reason == "text that is not UTF-8"
        assert store.identity().registration_token
    finally:
        store.close()


def _damaged_and_opened_on_a_full_disk(path: Path, script: str) -> dict[str, object]:
    """Fill a store at `path`, damage its meta root page, and open it in a child that `script`
    runs on a disk that fills up: the open fails, and leaves the damaged file as it was. What
    the store held, to check it is all there once there is room again."""
    held = filled(path, actions=3000)
    overwrite(path, root_page(path, "meta"))
    damaged = path.read_bytes()
    run = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert run.returncode != 0
    assert path.read_bytes() == damaged
    return held


def _holds_what_it_held(store: Store, held: dict[str, object]) -> None:
    assert store.identity().gateway_id == "gw-1"
    assert [d.device_id for d in store.devices()] == held["devices"]
    assert store.has_action("ar-000000")


_FULL_DISK_OPEN = """
import pathlib, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
from gatewayd.store import Store
Store.open(pathlib.Path(sys.argv[1]))
"""


def test_a_disk_too_full_for_the_new_store_leaves_the_damaged_one_in_place(
    tmp_path: Path,
) -> None:
    """The damaged file was set aside before its replacement was written: on a full disk the
    start failed and the next found a sound, empty store at the path, everything read lost."""
    path = tmp_path / DB
    held = _damaged_and_opened_on_a_full_disk(path, _FULL_DISK_OPEN)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB]
    store = Store.open(path)  # room again
    try:
        assert store.recovery is not None
        _holds_what_it_held(store, held)
    finally:
        store.close()


_FULL_DISK_IDENTITY = """
import pathlib, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
from gatewayd.store import Store
Store.open(pathlib.Path(sys.argv[1])).identity()
"""


def test_a_damaged_credential_the_disk_has_no_room_to_rebuild_from_is_never_quoted(
    tmp_path: Path,
) -> None:
    """The identity read (the daemon's first, the tunnel's before each dial, /status) found the
    credential damaged on a disk too full for the new store: the read failed with Python's
    decode error, which quotes the credential, into the traceback of a failed start, the
    tunnel's `last_error` on /status and its log line."""
    path = tmp_path / DB
    filled(path, actions=3000)  # bigger than the file size the disk has room for
    raw = bytearray(path.read_bytes())
    at = raw.find(b"credential-of-gw-1")
    assert at > 0
    raw[at + len("credential-of-gw-")] = 0xFF
    path.write_bytes(bytes(raw))
    run = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_IDENTITY, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert "credential-of-gw" not in run.stdout + run.stderr
    assert run.returncode != 0  # no identity to go on with
    assert "store.not_rebuilt" in run.stdout + run.stderr
    assert "text that is not UTF-8" in run.stderr  # what is wrong, in the words of `salvage`


def test_the_copy_just_made_is_kept_whatever_the_clock_said_before(tmp_path: Path) -> None:
    """Copies are named by the wall clock: two made while it ran years ahead (a box without a
    clock battery, before NTP) sorted after the new one, which was deleted at once."""
    path = tmp_path / DB
    for day in ("20310101", "20310102"):
        (tmp_path / f"{DB}.corrupt-{day}T000000000000Z").write_bytes(b"old")
    path.write_bytes(b"damaged " * 100)
    store = Store.open(path)
    try:
        assert store.recovery is not None
        left = sorted(p.name for p in tmp_path.glob(f"{DB}.corrupt-*"))
        assert store.recovery.moved_to in left
        assert len(left) == salvage.KEEP_COPIES
    finally:
        store.close()


def test_extended_corruption_codes_are_damage() -> None:
    """SQLite reports damage to an index as SQLITE_CORRUPT_INDEX (779), one of the extended
    codes of SQLITE_CORRUPT; an I/O error's extended codes are not damage."""
    for code, damage in ((779, True), (267, True), (26, True), (10, False), (522, False)):
        exc = sqlite3.DatabaseError("database disk image is malformed")
        exc.sqlite_errorcode = code
        assert salvage.is_corruption(exc) is damage, code


def test_unacked_frames_the_damage_took_and_memory_lacks_are_counted(tmp_path: Path) -> None:
    path = tmp_path / DB
    store = Store.open(path)
    try:
        for n in range(400):
            store.outbox_put(lambda seq, n=n: frame(seq, n))  # one commit each
        store.outbox_ack(4)
        assert store.flush()
        checkpoint(store)
        overwrite(path, root_page(path, "outbox"))
        store._db.execute("PRAGMA shrink_memory")
        store.outbox_put(lambda seq: frame(seq, 400))
        rec = store.recovery
        assert rec is not None
        assert rec.kept["outbox_frames_from_memory"] == 256  # seqs 145..400
        assert rec.lost["outbox_frames"] == "140 frames the cloud had not acked"  # 5..144
        assert seqs(store, 4) == list(range(145, 402))
    finally:
        store.close()


def test_the_hourly_prune_that_meets_damage_rebuilds_the_store(tmp_path: Path) -> None:
    """Damage among the oldest actions, which no commit touches: the prune that reads them
    only warned, every hour, for good."""
    path = tmp_path / DB
    filled(path, actions=3000)
    store = Store.open(path)
    try:
        checkpoint(store)
        overwrite(path, pages(path, "actions", "leaf")[0])
        store._db.execute("PRAGMA shrink_memory")
        pruned = store.prune_actions("9999-01-01T00:00:00Z", keep=100, limit=500)
        assert store.recovery is not None
        assert "actions" in store.recovery.lost
        assert pruned == 500
        assert store.identity().gateway_id == "gw-1"
    finally:
        store.close()


_FULL_DISK_AFTER_WAL = """
import pathlib, resource, signal, sys
from gatewayd import salvage, store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
restore, link_aside = store._restore, salvage.link_aside
def full_after_restore(db, found, acked):
    restore(db, found, acked)  # into the new store's WAL: then the disk is full
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
def room_again(path):
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return link_aside(path)
store._restore, salvage.link_aside = full_after_restore, room_again
print("gateway", store.Store.open(pathlib.Path(sys.argv[1])).identity().gateway_id)
"""


def test_a_new_store_whose_wal_cannot_be_folded_in_is_not_moved_into_place(
    tmp_path: Path,
) -> None:
    """The disk had room for what was read in the new store's WAL but not for its main file to
    grow: closing it could not fold the WAL in and left it beside `.rebuilding`, and the main
    file alone, without identity, devices, action log or outbox, replaced the damaged store.
    The gateway started on a new registration token, and its log forgot every action id."""
    path = tmp_path / DB
    # as on a disk too full for the WAL: the next start tries again
    held = _damaged_and_opened_on_a_full_disk(path, _FULL_DISK_AFTER_WAL)
    store = Store.open(path)
    try:
        _holds_what_it_held(store, held)
    finally:
        store.close()
    assert not list(tmp_path.glob("*.rebuilding*"))


def _garble(path: Path, find: bytes, replace: bytes) -> None:
    """Bytes of one value changed in the (closed, checkpointed) file: its pages stay sound, so
    `PRAGMA quick_check` passes, as a torn write inside a row leaves it."""
    raw = path.read_bytes()
    assert raw.count(find) == 1
    path.write_bytes(raw.replace(find, replace))


@pytest.mark.parametrize("damage", [b'[[{processing"', b'[["\xffrocessing"'], ids=["json", "utf8"])
def test_an_action_row_whose_text_is_damaged_keeps_its_id_and_is_failed_at_start_up(
    tmp_path: Path, damage: bytes
) -> None:
    """The transitions of an unfinished action, damaged to text that is no JSON: the recovery of
    unfinished actions (the daemon's start-up) raised JSONDecodeError, at every start. Damaged to
    text that is not UTF-8 (damage SQLite's message shows): the rebuild dropped the whole row, so
    the action was never failed, and its id, once forgotten, could be run again."""
    path = tmp_path / DB
    store = Store.open(path)
    now = iso(utcnow())
    store.record_action(
        ActionRow("ar-done", "dev", "unlock", "completed", None, [("completed", now)], now), now
    )
    store.record_action(
        ActionRow("ar-open", "dev", "unlock", "processing", None, [("processing", now)], now), now
    )
    assert store.flush()
    store.close()
    _garble(path, b'[["processing"', damage)
    store = Store.open(path)
    try:
        assert store.recovery is None  # SQLite finds nothing wrong with the file
        unfinished = store.actions_with_status(["gateway_received", "processing"])
        assert [(row.id, row.status) for row in unfinished] == [("ar-open", "processing")]
        assert store.recovery is not None
        assert "actions" in store.recovery.lost
        assert store.has_action("ar-done")
    finally:
        store.close()


def test_an_outbox_row_whose_frames_are_damaged_is_damage_not_the_end_of_the_daemon(
    tmp_path: Path,
) -> None:
    """A damaged array of frames in a sound page: every read of the outbox raised msgspec's
    DecodeError, which no one catches: out of the tunnel's send loop it ended the daemon, at
    every start once the tunnel connected, and nothing after the row ever reached the cloud."""
    path = tmp_path / DB
    store = Store.open(path)
    for n in range(4):
        store.outbox_put(lambda seq, n=n: frame(seq, n))  # outside an event loop: a row each
    store.close()
    first = b"\xc4%c" % len(frame(1, 0)) + frame(1, 0)
    _garble(path, b"\x91" + first, b"\x92" + first)  # an array of 2 frames, which holds 1
    store = Store.open(path)
    try:
        assert seqs(store) == [2, 3, 4]
        assert store.recovery is not None
        assert "outbox" in store.recovery.lost
    finally:
        store.close()


_DIES_AT_STEP = """
import os, pathlib, sys
from gatewayd.store import Store
left = int(sys.argv[2])
def step(real):
    def run(*args, **kwargs):
        global left
        left -= 1
        if left == 0:
            os._exit(99)  # the power cut: nothing after this step happens
        return real(*args, **kwargs)
    return run
for name in ("link", "rename", "replace", "unlink"):
    setattr(os, name, step(getattr(os, name)))
Store.open(pathlib.Path(sys.argv[1])).close()
"""


def test_a_power_cut_at_any_step_of_the_rebuild_leaves_a_store_that_keeps_the_claim(
    tmp_path: Path,
) -> None:
    """The damaged store was renamed aside before the new one was renamed into its place: a
    power cut between left no file at the path, and the next start made a blank store, a new
    identity to claim, the outbox gone. The rebuild dies at each of its file steps in turn."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    held = filled(damaged / DB, actions=3000)
    overwrite(damaged / DB, root_page(damaged / DB, "meta"))
    for at in range(1, 30):
        state = tmp_path / f"cut-{at}"
        state.mkdir()
        (state / DB).write_bytes((damaged / DB).read_bytes())
        run = subprocess.run(
            [sys.executable, "-c", _DIES_AT_STEP, str(state / DB), str(at)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            timeout=60,
        )
        store = Store.open(state / DB)
        try:
            assert store.identity().gateway_id == "gw-1", f"cut at step {at}"
            assert store.identity().registration_token == held["token"]
            _holds_what_it_held(store, held)
        finally:
            store.close()
        if run.returncode == 0:  # the rebuild took fewer steps: each was cut once
            break
        assert run.returncode == 99, run.stderr
    else:
        raise AssertionError("the rebuild was never let finish")
    assert at > 3


def test_a_rename_that_fails_leaves_the_damaged_store_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new store could not be renamed over the damaged one: the copy kept aside and the new
    store go, the damaged store stays, and the next start tries again on it."""
    path = tmp_path / DB
    filled(path)
    overwrite(path, root_page(path, "devices"))
    damaged = path.read_bytes()

    def refused(*_: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OSError, match="Read-only"):
        Store.open(path)
    monkeypatch.undo()
    assert path.read_bytes() == damaged
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith("-shm")] == [DB]
    store = Store.open(path)
    try:
        assert store.recovery is not None
        assert store.identity().gateway_id == "gw-1"
    finally:
        store.close()
