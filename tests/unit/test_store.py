"""The SQLite store: migrations, private files, identity, stable ids, the durable outbox."""

from __future__ import annotations

import re
import sqlite3
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import CapturingLogger

from gatewayd import salvage
from gatewayd import store as store_module
from gatewayd.disk import Reserve
from gatewayd.protocol import ProtocolError
from gatewayd.store import MIGRATIONS, SCHEMA_VERSION, ActionRow, Rebased, Store, migrate
from tests.support import on_a_small_disk


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_migration_v1_from_empty(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    assert migrate(db) == SCHEMA_VERSION == len(MIGRATIONS)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {"identity", "devices", "actions", "outbox", "meta"} <= _tables(db)
    columns = {r[1] for r in db.execute("PRAGMA table_info(actions)")}
    assert "inputs" not in columns  # the action log never holds inputs (they may hold a PIN)
    assert migrate(db) == SCHEMA_VERSION  # idempotent


def _indexes(db: sqlite3.Connection) -> set[str]:
    return {
        r[0]
        for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql NOT NULL")
    }


def test_migration_v2_keeps_the_log_and_indexes_only_unfinished_actions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    monkeypatch.setattr("gatewayd.store.MIGRATIONS", MIGRATIONS[:2])
    assert _indexes(db) == {"actions_status", "actions_updated"}
    for n, status in enumerate(("gateway_received", "processing", "completed", "failed")):
        db.execute(
            "INSERT INTO actions VALUES (?, 'dev', 'unlock', ?, NULL, '[]', 'dl', ?)",
            (f"ar-{n}", status, f"2026-01-01T00:00:0{n}.000Z"),
        )

    assert migrate(db) == 2
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert _indexes(db) == {"actions_unfinished"}
    assert db.execute("SELECT count(*) FROM actions").fetchone()[0] == 4
    (entries,) = db.execute(
        "SELECT count(*) FROM actions INDEXED BY actions_unfinished"
        " WHERE status IN ('gateway_received', 'processing')"
    ).fetchone()
    assert entries == 2

    plan = " ".join(
        str(r[3])
        for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM actions WHERE status IN (?, ?)"
            " AND status IN ('gateway_received', 'processing')",
            ("gateway_received", "processing"),
        )
    )
    assert "actions_unfinished" in plan


def test_migration_v4_drops_the_last_status_index_and_recovery_still_finds_actions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    monkeypatch.setattr("gatewayd.store.MIGRATIONS", MIGRATIONS[:3])
    assert migrate(db) == 3
    assert _indexes(db) == {"actions_unfinished"}
    for n, status in enumerate(("gateway_received", "processing", "completed", "failed")):
        db.execute(
            "INSERT INTO actions VALUES (?, 'dev', 'unlock', ?, NULL, '[]', 'dl', ?)",
            (f"ar-{n}", status, f"2026-01-01T00:00:0{n}.000Z"),
        )
    monkeypatch.undo()

    assert migrate(db) == 4
    assert _indexes(db) == set()
    store = Store(db, tmp_path / "s.db")
    unfinished = store.actions_with_status(["gateway_received", "processing"])
    assert sorted(row.id for row in unfinished) == ["ar-0", "ar-1"]
    assert [row.id for row in store.actions_with_status(["failed"])] == ["ar-3"]
    assert [row.id for row in store.recent_actions(2)] == ["ar-3", "ar-2"]


def test_migration_v3_keeps_unacked_frames_and_their_seqs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    db = sqlite3.connect(path, isolation_level=None)
    monkeypatch.setattr("gatewayd.store.MIGRATIONS", MIGRATIONS[:2])
    assert migrate(db) == 2
    db.executemany(
        "INSERT INTO outbox (seq, frame, created_at) VALUES (?, ?, 't')",
        [(seq, f'{{"n":{seq}}}'.encode()) for seq in (4, 5, 6)],
    )
    db.execute("INSERT INTO meta (key, value) VALUES ('acked_seq', '3')")
    monkeypatch.undo()

    assert migrate(db) == SCHEMA_VERSION
    columns = [r[1] for r in db.execute("PRAGMA table_info(outbox)")]
    assert columns == ["last_seq", "first_seq", "frames", "created_at"]
    db.close()
    store = Store.open(path)
    assert store.outbox_after(0) == [(n, f'{{"n":{n}}}'.encode()) for n in (4, 5, 6)]
    assert store.outbox_put(lambda s: b"x") == 7
    store.close()


async def test_outbox_rows_hold_several_frames_read_back_after_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gatewayd.store.OUTBOX_ROW_FRAMES", 4)
    monkeypatch.setattr("gatewayd.store.RECENT_FRAMES", 3)  # most reads go to SQLite
    path = tmp_path / "s.db"
    store = Store.open(path)
    for _ in range(10):
        store.outbox_put(lambda s: f"f{s}".encode())
    store.flush()
    store.outbox_put(lambda s: f"f{s}".encode())
    store.flush()
    assert store._db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 4  # 4 + 4 + 2 + 1
    assert [s for s, _ in store.outbox_after(2, limit=5)] == [3, 4, 5, 6, 7]
    store.outbox_ack(6)  # the row of frames 5..8 stays: 7 and 8 are not acked
    store.flush()
    assert store._db.execute("SELECT min(first_seq) FROM outbox").fetchone()[0] == 5
    store.close()

    store = Store.open(path)
    assert store.outbox_after(0) == [(n, f"f{n}".encode()) for n in range(7, 12)]
    assert store.outbox_after(9, limit=1) == [(10, b"f10")]
    assert store.outbox_backlog() == 5
    assert store.outbox_put(lambda s: b"x") == 12
    store.close()


def test_device_descriptors_saved_before_a_commit_coalesce(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    first = store.device_id("sim", "n1")
    second = store.device_id("sim", "n2")
    store.flush()
    store.save_device(first, {"locked": True})
    store.save_device(first, b'{"locked":false}')
    store.save_device(second, {"locked": True})
    store.forget_device(second)
    store.flush()
    rows = {row.device_id: row.descriptor for row in store.devices()}
    assert rows == {first: {"locked": False}}
    store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(store_module.StoreTooNew, match="newer"):
        migrate(db)


def _newer_store(path: Path) -> bytes:
    """A store a newer gatewayd wrote (closed cleanly): this one's, with the next version."""
    Store.open(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    return path.read_bytes()


def test_a_store_from_a_newer_gatewayd_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """Rolling a release back after an upgrade: the store is refused with a typed error that is
    never taken for damage, so it is neither moved aside nor rebuilt nor written to."""
    path = tmp_path / "state" / "gatewayd.db"
    before = _newer_store(path)
    too_new = getattr(store_module, "StoreTooNew", ())
    with pytest.raises(sqlite3.DatabaseError) as refused:
        Store.open(path)
    assert isinstance(refused.value, too_new)
    assert (refused.value.found, refused.value.known) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert not salvage.is_corruption(refused.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["gatewayd.db"]  # no copy aside
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()
    assert store_module.read_schema_version(path) == SCHEMA_VERSION + 1


def test_failed_migration_leaves_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("gatewayd.store.MIGRATIONS", (broken,))
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        migrate(db)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    assert "half_done" not in _tables(db)


def test_files_are_private_and_identity_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "state" / "gatewayd.db"
    store = Store.open(path)
    ident = store.identity()
    assert re.fullmatch(r"[a-z]+-[a-z]+-\d{1,2}", ident.registration_token)
    assert not ident.claimed
    store.outbox_put(lambda seq: b"{}")
    store.flush()
    store.close()
    for f in path.parent.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = Store.open(path)
    assert again.identity().registration_token == ident.registration_token
    again.close()


def test_claim_and_revoke(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    old = store.identity().registration_token
    store.set_claimed("gw-1", "s3cret-credential")
    ident = store.identity()
    assert ident.claimed
    assert ident.gateway_id == "gw-1"
    assert "s3cret" not in repr(ident)
    fresh = store.reset_claim()
    assert not fresh.claimed
    assert fresh.credential is None
    assert fresh.registration_token != old  # a revoked gateway is claimed with a new token


def test_identity_writes_are_synced_even_when_commits_are_not(tmp_path: Path) -> None:
    """`synchronous = normal` leaves commits to the OS; a claim or a revocation lost to a power
    cut would strand the gateway with a used-up token, so those two are written synced."""
    store = Store.open(tmp_path / "s.db")
    db = store._db
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    seen: list[str] = []
    db.set_trace_callback(seen.append)
    store.set_claimed("gw-1", "credential-for-the-test")
    store.reset_claim()
    db.set_trace_callback(None)
    writes = [i for i, sql in enumerate(seen) if sql.startswith("UPDATE identity")]
    assert len(writes) == 2
    for i in writes:
        assert seen[i - 1] == "PRAGMA synchronous = FULL"
        assert seen[i + 1] == "PRAGMA synchronous = 1"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # batched commits: as configured
    store.close()


def test_device_ids_are_stable_per_driver_and_native_id(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    a = store.device_id("zwave", "e1f2a3b4-5")
    assert store.device_id("zwave", "e1f2a3b4-5") == a
    assert store.device_id("zigbee", "e1f2a3b4-5") != a
    store.close()
    assert Store.open(tmp_path / "s.db").device_id("zwave", "e1f2a3b4-5") == a


def test_outbox_seq_is_monotonic_across_ack_and_restart(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    seqs = [store.outbox_put(lambda s: f'{{"seq": {s}}}'.encode()) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    store.flush()
    assert [s for s, _ in store.outbox_after(2)] == [3, 4, 5]
    assert store.outbox_after(0)[0][1] == b'{"seq": 1}'
    store.outbox_ack(5)
    store.flush()
    assert store.outbox_backlog() == 0
    store.close()
    store = Store.open(tmp_path / "s.db")
    assert store.acked_seq == 5
    assert store.outbox_put(lambda s: b"x") == 6  # never reuses a delivered seq


def _seq_frame(seq: int) -> bytes:
    return f'{{"seq": {seq}}}'.encode()


def test_rebase_renumbers_what_the_cloud_has_not_acked_to_follow_what_it_holds(
    tmp_path: Path,
) -> None:
    """The store lost its last commits (or was restored): the cloud acked seq 40 and the store
    only ever committed 1..5, of which the cloud acked 2. Frames 3..5 and a queued 6 follow 40."""
    store = Store.open(tmp_path / "s.db")
    for _ in range(5):
        store.outbox_put(_seq_frame)
    store.flush()
    store.outbox_ack(2)
    store.outbox_put(_seq_frame)  # queued, not committed yet
    assert store.rebase(5, lambda frame, seq: _seq_frame(seq)).shift == 0  # not behind: nothing
    assert store.rebase(40, lambda frame, seq: _seq_frame(seq)) == Rebased(after=2, shift=38)
    assert store.acked_seq == 40
    assert store.committed_seq == 44
    assert store.outbox_after(0) == [(s, _seq_frame(s)) for s in (41, 42, 43, 44)]
    assert store.outbox_put(_seq_frame) == 45
    store.close()
    store = Store.open(tmp_path / "s.db")  # durable, read back from disk
    assert store.acked_seq == 40
    assert store.outbox_after(0) == [(s, _seq_frame(s)) for s in (41, 42, 43, 44, 45)]
    assert store.outbox_put(_seq_frame) == 46
    store.close()


def test_a_frame_that_cannot_be_made_takes_no_seq(tmp_path: Path) -> None:
    """A frame whose encoding raised used to keep its seq: the tunnel, which reads committed
    frames by seq, then found nothing after the gap and never waited either (a busy loop)."""
    store = Store.open(tmp_path / "s.db")
    assert store.outbox_put(_seq_frame) == 1

    def too_large(seq: int) -> bytes:
        raise ProtocolError("too_large", "frame too large")

    with pytest.raises(ProtocolError):
        store.outbox_put(too_large)
    assert store.outbox_put(_seq_frame) == 2
    assert store.flush()
    assert store.outbox_after(0) == [(1, _seq_frame(1)), (2, _seq_frame(2))]
    store.close()


def test_rebase_counts_only_what_the_cloud_can_hold(tmp_path: Path) -> None:
    """Restored with seqs 1..3 (acked), the store commits 4..6 at start-up, before any welcome:
    a cloud that acks 4 holds a lost frame under seq 4, though 4 is not past the store's top."""
    path = tmp_path / "s.db"
    store = Store.open(path)
    for _ in range(3):
        store.outbox_put(_seq_frame)
    store.flush()
    store.outbox_ack(3)
    store.close()
    store = Store.open(path)
    assert store.opened_seq == 3
    for _ in range(3):
        store.outbox_put(_seq_frame)
    store.flush()
    assert store.rebase(4, lambda frame, seq: _seq_frame(seq)).shift == 0  # the old test: missed
    moved = store.rebase(4, lambda frame, seq: _seq_frame(seq), cloud_may_hold=store.opened_seq)
    assert moved == Rebased(after=3, shift=1)
    assert store.outbox_after(0) == [(s, _seq_frame(s)) for s in (5, 6, 7)]
    assert store.rebase(4, pytest.fail, cloud_may_hold=7).shift == 0  # a later welcome: all is well
    store.close()


def test_rebase_acknowledges_what_left_the_box_and_moves_only_the_rest(tmp_path: Path) -> None:
    """Seqs 1..3 committed and sent before this run, the ack of 2 and 3 lost with the store's
    last commits; 4 committed at start-up. A cloud that acks 6 holds 2 and 3: renumbered after
    6, they reached it twice. Only 4, which never left the box, follows 6."""
    path = tmp_path / "s.db"
    store = Store.open(path)
    for _ in range(3):
        store.outbox_put(_seq_frame)
    store.flush()
    store.outbox_ack(1)
    store.close()
    store = Store.open(path)
    store.outbox_put(lambda seq: b"start-up")
    store.flush()

    def renumber(frame: bytes, seq: int) -> bytes:
        if frame != b"start-up":
            pytest.fail(f"{frame!r}, which the cloud holds, renumbered as {seq}")
        return b"start-up, as %d" % seq

    # only what is above 3 moved: the hand-offs waiting for 2 or 3 are the cloud's (acked)
    assert store.rebase(6, renumber, cloud_may_hold=store.opened_seq) == Rebased(after=3, shift=3)
    assert store.acked_seq == 6
    assert store.outbox_after(0) == [(7, b"start-up, as 7")]
    assert store.outbox_put(_seq_frame) == 8
    store.close()


def test_rebase_with_nothing_unacked_moves_the_next_seq_past_the_cloud(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    store.outbox_put(_seq_frame)
    store.flush()
    store.outbox_ack(1)
    store.flush()
    assert store.rebase(9, lambda frame, seq: pytest.fail("nothing to renumber")).shift == 8
    assert store.outbox_after(0) == []
    assert store.outbox_put(_seq_frame) == 10
    store.close()


async def test_frames_of_one_tick_share_one_commit_and_only_committed_are_visible(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "s.db")
    before = store.commits
    for _ in range(100):
        store.outbox_put(lambda s: b"{}")
    assert store.outbox_after(0) == []  # not committed yet: the tunnel must not see them
    await store.wait_outbox(0)
    assert store.commits == before + 1
    assert len(store.outbox_after(0)) == 100


async def test_refused_commit_keeps_the_batch_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store.open(path)
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # like a disk that refuses writes
    store._db.execute("PRAGMA busy_timeout = 0")
    seq = store.outbox_put(lambda s: b'{"n": 1}')
    store.record_action(
        ActionRow("a1", "d1", "unlock", "completed", None, [("completed", "t")], "t"), "t"
    )
    assert store.flush() is False
    assert store.last_error is not None
    assert "locked" in store.last_error
    assert store.outbox_after(0) == []
    blocker.execute("ROLLBACK")
    blocker.close()
    assert store.flush() is True
    assert store.last_error is None
    assert store.outbox_after(0) == [(seq, b'{"n": 1}')]
    assert store.action("a1") is not None


def _disk_full(store: Store) -> None:
    """SQLite may add no page to the store's file: every commit that needs one fails with
    SQLITE_FULL, "database or disk is full", as on a full SD card."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def _room_again(store: Store) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


async def test_a_lock_first_seen_while_the_disk_is_full_gets_its_id_and_keeps_it(
    tmp_path: Path,
) -> None:
    """A lock that joins (or is first listed by its radio) while the disk is full: its driver
    gets an id, the same one each time, and the id is stored by itself once there is room.
    An exception raised into the driver instead left the lock unadopted until a restart."""
    path = tmp_path / "s.db"
    store = Store.open(path)
    try:
        _disk_full(store)
        ids = {n: store.device_id("zigbee", f"00:0d:6f:00:00:00:{n:02x}") for n in range(150)}
        assert store.last_error is not None
        assert "full" in store.last_error
        assert all(
            store.device_id("zigbee", f"00:0d:6f:00:00:00:{n:02x}") == i for n, i in ids.items()
        )
        assert all(store.knows_device(i) for i in ids.values())
        assert len(set(ids.values())) == len(ids)
        committed = store.commits
        _room_again(store)
        with anyio.fail_after(10):
            await store.wait_commit(committed + 1)  # the store's own retry, no flush asked
        assert store.last_error is None
    finally:
        store.close()
    reopened = Store.open(path)
    try:
        held = {row.native_id: row.device_id for row in reopened.devices()}
        assert held == {f"00:0d:6f:00:00:00:{n:02x}": i for n, i in ids.items()}
    finally:
        reopened.close()


async def test_wait_outbox_wakes_on_commit(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    woke: list[int] = []

    async def waiter() -> None:
        await store.wait_outbox(0)
        woke.append(store.committed_seq)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.05)
        assert woke == []
        store.outbox_put(lambda s: b"{}")
    assert woke == [1]


def _finished(action_id: str, deadline: str, status: str = "completed") -> ActionRow:
    return ActionRow(action_id, "d1", "unlock", status, None, [(status, deadline)], deadline)


def test_pruning_takes_old_finished_actions_and_keeps_the_rest(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    old, recent, cutoff = "2025-01-01T00:00:00.000Z", "2026-11-30T00:00:00.000Z", "2026-11-01"
    for i in range(30):
        store.record_action(_finished(f"old-{i:02d}", old, "failed" if i % 3 else "completed"), old)
    unfinished = ActionRow("stuck", "d1", "lock", "processing", None, [("processing", old)], old)
    store.record_action(unfinished, old)
    for i in range(5):
        store.record_action(_finished(f"new-{i}", recent), recent)
    for i in range(5):  # old deadlines, but among the newest rows
        store.record_action(_finished(f"late-{i}", old), old)
    store.flush()

    # the 10 newest rows are kept whatever their deadline; batches of 7
    assert store.prune_actions(cutoff, keep=10, limit=7) == 7
    assert [store.has_action(f"old-{i:02d}") for i in range(8)] == [False] * 7 + [True]
    while store.prune_actions(cutoff, keep=10, limit=7):
        pass
    assert not any(store.has_action(f"old-{i:02d}") for i in range(30))
    assert store.has_action("stuck")  # unfinished: start-up recovery still needs it
    assert all(store.has_action(f"new-{i}") for i in range(5))
    assert all(store.has_action(f"late-{i}") for i in range(5))
    # with a floor of one row, only the deadline protects
    assert store.prune_actions(cutoff, keep=1) == 4
    assert [store.has_action(f"late-{i}") for i in range(5)] == [False] * 4 + [True]
    assert store.action("stuck") is not None
    store.close()


def _three_old_actions(tmp_path: Path) -> Store:
    store = Store.open(tmp_path / "s.db")
    old = "2020-01-01T00:00:00.000Z"
    for i in range(3):
        store.record_action(_finished(f"a{i}", old), old)
    store.flush()
    return store


def test_pruning_nothing_when_the_log_is_below_the_floor(tmp_path: Path) -> None:
    store = _three_old_actions(tmp_path)
    assert store.prune_actions("2030-01-01", keep=4) == 0
    assert store.prune_actions("2030-01-01", keep=3) == 0  # the third newest is the oldest
    assert store.prune_actions("2030-01-01", keep=2) == 1
    with pytest.raises(ValueError, match="at least 1"):
        store.prune_actions("2030-01-01", keep=0)
    store.close()


def test_a_store_that_refuses_the_prune_says_so_and_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _three_old_actions(tmp_path)
    logs = CapturingLogger()  # the module's own logger: whatever structlog's configuration
    monkeypatch.setattr(store_module, "log", logs)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the prune is refused
    try:
        assert store.prune_actions("2030-01-01", keep=1) == 0
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert [(c.method_name, c.args) for c in logs.calls] == [("warning", ("store.prune_failed",))]
    assert "locked" in logs.calls[0].kwargs["error"]
    assert store.prune_actions("2030-01-01", keep=1) == 2
    store.close()


async def test_a_device_forgotten_and_seen_again_in_one_tick_keeps_the_id_it_got(
    tmp_path: Path,
) -> None:
    """The forget was queued for the commit while `device_id` read the table at once: the
    device seen again got its old id, the queued DELETE then took its row, and after a
    restart it had yet another id."""
    store = Store.open(tmp_path / "s.db")
    old = store.device_id("sim", "sim-0001")
    assert store.flush()
    # one tick: the lock leaves and joins again (no await in between)
    store.forget_device(old)
    again = store.device_id("sim", "sim-0001")
    store.save_device(again, {"name": "front door"})
    assert store.flush()
    store.close()

    store = Store.open(tmp_path / "s.db")
    try:
        assert store.device_id("sim", "sim-0001") == again  # the id it was given stays its id
        assert [(row.device_id, row.descriptor) for row in store.devices()] == [
            (again, {"name": "front door"})
        ]
    finally:
        store.close()


def test_the_age_of_the_oldest_unacknowledged_frame(tmp_path: Path) -> None:
    """What a fleet alerts on: reports that do not reach the cloud age; acked ones do not."""
    path = tmp_path / "s.db"
    store = Store.open(path)
    assert store.outbox_oldest_age_s() == 0.0
    for _ in range(3):
        store.outbox_put(lambda s: f"f{s}".encode())
    store.flush()
    assert 0.0 <= store.outbox_oldest_age_s() < 60
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    store._db.execute("UPDATE outbox SET created_at = ?", (an_hour_ago,))
    store.outbox_put(lambda s: f"f{s}".encode())
    store.flush()
    assert 3590 < store.outbox_oldest_age_s() < 3660
    store.outbox_ack(2)  # the row of frames 1..3 stays: 3 is not acked, and is as old
    store.flush()
    assert 3590 < store.outbox_oldest_age_s() < 3660
    store.close()
    store = Store.open(path)  # from the store, not from memory
    assert 3590 < store.outbox_oldest_age_s() < 3660
    store.outbox_ack(3)
    store.flush()
    assert 0.0 <= store.outbox_oldest_age_s() < 60  # only frame 4 is left: just made
    store.outbox_ack(4)
    store.flush()
    assert store.outbox_oldest_age_s() == 0.0
    store.close()


@pytest.mark.parametrize("step_h", [1, -1], ids=["stepped_forward", "stepped_back"])
def test_a_wall_clock_step_moves_no_frames_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step_h: int
) -> None:
    """A box that booted with its clock an hour off queues reports, then NTP steps the clock.
    Aged on the wall clock, a flowing backlog read an hour old (the fleet's `> 600 s` alert
    fired) or, stepped back, a stuck one read 0 (the alert never fired). Age is time passed."""
    wall = [datetime.now(UTC)]
    clock = [1000.0]
    monkeypatch.setattr(store_module, "utcnow", lambda: wall[0])
    monkeypatch.setattr(store_module, "_monotonic", lambda: clock[0])
    store = Store.open(tmp_path / "s.db")
    try:
        store.outbox_put(_seq_frame)
        assert store.flush() is True
        clock[0] += 30
        wall[0] += timedelta(seconds=30, hours=step_h)  # 30 s pass, and the clock is stepped
        assert store.outbox_oldest_age_s() == pytest.approx(30, abs=0.01)
        store.outbox_put(_seq_frame)  # queued after the step: still in order, still its age
        assert store.flush() is True
        store.outbox_ack(1)
        clock[0] += 10
        assert store.outbox_oldest_age_s() == pytest.approx(10, abs=0.01)
    finally:
        store.close()


def test_a_store_opened_at_the_end_of_the_calendar_still_takes_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox's clock is carried past its opening: a box whose clock read the last second
    of year 9999 must not have every later frame fail with OverflowError."""
    clock = [1000.0]
    last_second = datetime.max.replace(tzinfo=UTC) - timedelta(seconds=1)
    monkeypatch.setattr(store_module, "utcnow", lambda: last_second)
    monkeypatch.setattr(store_module, "_monotonic", lambda: clock[0])
    store = Store.open(tmp_path / "s.db")
    try:
        clock[0] += 60
        store.outbox_put(_seq_frame)
        assert store.flush() is True
        assert store.outbox_after(0) == [(1, _seq_frame(1))]
        assert 0.0 <= store.outbox_oldest_age_s() < 1  # the clock stays at the calendar's end
    finally:
        store.close()


def test_frames_a_refusing_store_holds_in_memory_age_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full or locked disk refuses commits: the frames waiting in memory for theirs showed an
    age of 0, so the fleet's alert on a stuck backlog (age > 600 s) never fired on a full disk."""
    clock = [1000.0]
    monkeypatch.setattr(store_module, "_monotonic", lambda: clock[0])
    path = tmp_path / "s.db"
    store = Store.open(path)
    store.outbox_put(_seq_frame)
    store.outbox_ack(1)
    assert store.flush() is True
    assert store.outbox_oldest_age_s() == 0.0
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # like a disk that refuses writes
    store._db.execute("PRAGMA busy_timeout = 0")
    store.outbox_put(_seq_frame)
    assert store.flush() is False
    clock[0] += 700
    store.outbox_put(_seq_frame)  # a younger one: the oldest waiting one counts
    assert store.flush() is False
    assert store.outbox_oldest_age_s() == pytest.approx(700, abs=0.01)

    blocker.execute("ROLLBACK")
    blocker.close()
    clock[0] += 5
    assert store.flush() is True
    assert store.outbox_after(1) == [(2, _seq_frame(2)), (3, _seq_frame(3))]
    # committed now, still not acked: the row's age, which counts from the oldest frame's queueing
    assert store.outbox_oldest_age_s() == pytest.approx(705, abs=0.01)
    an_hour_ago = store.outbox_now() - timedelta(hours=1)
    store._db.execute("UPDATE outbox SET created_at = ?", (an_hour_ago.isoformat(),))
    assert store.outbox_oldest_age_s() == pytest.approx(3600, abs=0.01)
    store.outbox_ack(3)
    store.flush()
    assert store.outbox_oldest_age_s() == 0.0
    store.close()


def test_the_wal_is_cut_back_once_the_load_goes_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load the WAL grew to SQLite's 40 MB backstop and kept that size for good: on a
    nearly full disk, the space a cleanup freed. Once no commit comes for a moment the store's
    checkpointer copies it into the database and empties it, off the event loop."""
    monkeypatch.setattr(store_module, "IDLE_CHECKPOINT_S", 0.2, raising=False)
    limit = getattr(store_module, "JOURNAL_SIZE_LIMIT", 4 << 20)
    path = tmp_path / "s.db"
    wal = path.with_name(path.name + "-wal")
    store = Store.open(path)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM outbox").fetchone()  # an old snapshot: no restart
    blob = bytes(range(256)) * 256  # 64 KiB
    for _ in range(3 * limit // len(blob)):
        store.outbox_put(lambda seq: blob)
        assert store.flush() is True
    grown = wal.stat().st_size
    assert grown > 2 * limit
    reader.execute("COMMIT")
    reader.close()
    deadline = time.monotonic() + 10
    while wal.stat().st_size > limit and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wal.stat().st_size <= limit, f"the WAL stayed at {wal.stat().st_size} bytes"
    assert len(store.outbox_after(0, limit=10_000)) == 3 * limit // len(blob)  # nothing lost
    store.close()


def test_has_action_finds_every_logged_id_through_its_filter(tmp_path: Path) -> None:
    """has_action skips the lookup for ids its filter never saw: ids logged in an earlier run
    and in this one must still be found, before and after their commit, whatever the filter."""
    path = tmp_path / "s.db"
    store = Store.open(path)
    earlier = [f"ar-earlier-{n}" for n in range(300)]
    for action_id in earlier:
        store.record_action(
            ActionRow(action_id, "dev", "unlock", "completed", None, [], "2030-01-01T00:00:00Z"),
            "2030-01-01T00:00:00Z",
        )
    assert all(store.has_action(a) for a in earlier)  # queued, not yet committed
    store.flush()
    store.close()

    store = Store.open(path)
    assert all(store.has_action(a) for a in earlier)  # from the log, at open
    new = f"ar-new-{'x' * 3}"
    assert not store.has_action(new)
    store.record_action(
        ActionRow(new, "dev", "lock", "processing", None, [], "2030-01-01T00:00:00Z"),
        "2030-01-01T00:00:00Z",
    )
    store.flush()
    assert store.has_action(new)
    assert not any(store.has_action(f"ar-never-{n}") for n in range(2000))
    store._id_filter[:] = b"\xff" * len(store._id_filter)  # saturated: every id is looked up
    assert store.has_action(new)
    assert not any(store.has_action(f"ar-never-{n}") for n in range(200))
    store.close()


def test_closing_a_store_that_cannot_commit_says_what_it_could_not_keep(tmp_path: Path) -> None:
    """The disk full (or the file locked) since before the stop: the frames still queued are
    lost when the process ends. The refusal was logged once, when it began; the loss itself
    went unsaid. It is one error line now, with the count."""
    from structlog.testing import capture_logs

    path = tmp_path / "s.db"
    store = Store.open(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with capture_logs() as logs:
            store.outbox_put(_seq_frame)
            assert not store.flush()  # refused: logged as store.commit_failed
            store.outbox_put(_seq_frame)
            store.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    lost = [e for e in logs if e["event"] == "store.closed_unsaved"]
    assert len(lost) == 1
    assert lost[0]["log_level"] == "error"
    assert lost[0]["frames"] == 2
    assert Store.open(path).outbox_backlog() == 0  # they are gone indeed


def test_rebase_keeps_each_frame_under_its_own_seq_across_a_gap(tmp_path: Path) -> None:
    """A store rebuilt after damage holds its unacked frames with a gap (seq 3 went with the
    damaged page, `_rebuild`); behind the cloud, it is rebased. The frames after the gap were
    packed into one row as if their seqs had none: read back from disk, 44 and 45 came as 43
    and 44, and none as 45, which the store said was committed: the send loop found nothing
    after 44 and did not wait either (a busy loop that froze the daemon, at every start)."""
    path = tmp_path / "s.db"
    store = Store.open(path)
    for _ in range(5):
        store.outbox_put(_seq_frame)
    store.flush()
    store.close()
    with sqlite3.connect(path) as db:  # what a rebuild that lost frame 3 writes
        db.execute("DELETE FROM outbox")
        db.executemany(
            "INSERT INTO outbox (last_seq, first_seq, frames, created_at) VALUES (?, ?, ?, ?)",
            [
                (2, 1, store_module._pack_frames([_seq_frame(1), _seq_frame(2)]), "2026-01-01"),
                (5, 4, store_module._pack_frames([_seq_frame(4), _seq_frame(5)]), "2026-01-01"),
            ],
        )
    db.close()
    store = Store.open(path)
    assert store.rebase(40, lambda frame, seq: _seq_frame(seq)) == Rebased(after=0, shift=40)
    moved = [(s, _seq_frame(s)) for s in (41, 42, 44, 45)]
    assert store.outbox_after(0) == moved
    store.close()
    store = Store.open(path)  # read back from disk
    assert store.outbox_after(0) == moved
    assert store.committed_seq == 45
    store.close()


# Scripts run on a small real disk (`on_a_small_disk`), each after these lines.
_SMALL_DISK_HELPERS = '''
import asyncio, json, os, sys
from pathlib import Path
from gatewayd.disk import DiskWatch, Reserve
from gatewayd.store import Store
from tests.support import fill_disk as fill
d = Path(sys.argv[1])

def frame(seq):
    return b'{"seq": %d, "pad": "%s"}' % (seq, b"x" * 1000)

def burst(store, n):
    """n door events in one tick of the daemon's loop: one batch, its commit still to come."""
    async def put():
        for _ in range(n):
            store.outbox_put(frame)
    asyncio.new_event_loop().run_until_complete(put())
'''


def _on_a_small_disk(tmp_path: Path, *scripts: str) -> Any:
    return on_a_small_disk(tmp_path, "4m", *(_SMALL_DISK_HELPERS + script for script in scripts))


def test_events_held_while_the_disk_is_full_are_on_disk_after_the_stop(tmp_path: Path) -> None:
    """The disk full while the daemon stops (a restart, an upgrade): the batch the store held in
    memory was lost at `close` (`store.closed_unsaved`). The store gives up its space reserve
    for that commit now, and the events are on disk for the next start."""
    stop = """
reserve = Reserve(d / "store.reserve", 1 << 20)
assert reserve.make()
store = Store.open(d / "s.db", reserve=reserve)
store.outbox_put(frame)
assert store.flush()
fill(d / "filler")
burst(store, 300)
store.close()  # the stop
print(json.dumps({"reserve": reserve.in_place}))
"""
    start = """
store = Store.open(d / "s.db")
print(json.dumps({"backlog": store.outbox_backlog(), "reserve": (d / "store.reserve").exists()}))
"""
    found, out = _on_a_small_disk(tmp_path, stop, start)
    assert found == {"backlog": 301, "reserve": False}, out
    assert "store.reserve_released" in out
    assert "store.closed_unsaved" not in out


def test_a_full_disk_takes_the_reserve_at_once_and_it_comes_back_with_room(
    tmp_path: Path,
) -> None:
    """A commit refused for a full disk is retried at once in the reserve's room, not a second
    later or never; the reserve is made again only once there is room for it above the
    `disk_low` threshold, with its blocks allocated and private."""
    script = """
reserve = Reserve(d / "store.reserve", 1 << 20)
watch = DiskWatch(d, 512 << 10, reserve=reserve)
watch.check()  # an empty state dir: the reserve is made
made = reserve.in_place
store = Store.open(d / "s.db", reserve=reserve)
fill(d / "filler")
burst(store, 300)
committed = store.flush()
error = store.last_error
released = not reserve.in_place
watch.check()  # no room: not made again
still_released = not reserve.in_place
(d / "filler").unlink()
watch.check()
st = os.stat(d / "store.reserve")
print(json.dumps({
    "made": made, "committed": committed, "error": error, "released": released,
    "still_released": still_released, "back": reserve.in_place, "mode": st.st_mode & 0o777,
    "allocated": st.st_blocks * 512, "backlog": store.outbox_backlog(),
}))
store.close()
"""
    found, out = _on_a_small_disk(tmp_path, script)
    assert found == {
        "made": True,
        "committed": True,
        "error": None,
        "released": True,
        "still_released": True,
        "back": True,
        "mode": 0o600,
        "allocated": 1 << 20,
        "backlog": 300,
    }
    released = [line for line in out.splitlines() if "store.reserve_released" in line]
    assert len(released) == 1
    assert "free_bytes" in released[0]


def test_a_reserve_half_made_before_a_crash_is_given_up_on_a_full_disk(tmp_path: Path) -> None:
    """The power is cut while the reserve is made: its blocks are allocated under the
    temporary name, never renamed. The disk fills before there is room to make it again: the
    store gives up those blocks for its commit. Before, they stayed taken for nothing and the
    commit was refused."""
    script = """
reserve = Reserve(d / "store.reserve", 1 << 20)
assert reserve.make()
os.replace(d / "store.reserve", d / "store.reserve.tmp")  # as the crash left it
store = Store.open(d / "s.db", reserve=reserve)
fill(d / "filler")
burst(store, 300)
committed = store.flush()
store.close()
print(json.dumps({"committed": committed, "left": sorted(p.name for p in d.glob("store.*"))}))
"""
    found, out = _on_a_small_disk(tmp_path, script)
    assert found == {"committed": True, "left": []}, out


def test_a_locked_or_read_only_store_keeps_the_reserve(tmp_path: Path) -> None:
    """Only a full disk is helped by the reserve's room: a locked or read-only store keeps it
    for when the disk fills."""
    reserve = Reserve(tmp_path / "store.reserve", 64 << 10)
    assert reserve.make()
    path = tmp_path / "s.db"
    store = Store.open(path, reserve=reserve)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        store.outbox_put(_seq_frame)
        assert not store.flush()
        assert "locked" in (store.last_error or "")
        assert reserve.in_place
        holder.execute("ROLLBACK")
        store._db.execute("PRAGMA query_only = 1")  # SQLITE_READONLY, as a read-only mount
        assert not store.flush()
        assert "readonly" in (store.last_error or "")
        assert reserve.in_place
        store._db.execute("PRAGMA query_only = 0")
        assert store.flush()
    finally:
        holder.close()
        store.close()
