"""A store that comes back behind the cloud: the last commits lost to a power cut (the store's
default `synchronous = normal` does not sync each commit) or a state directory restored from a
backup. The cloud already holds seqs the gateway no longer has; what the gateway reports next
must still reach it, not be taken for a resend of those seqs and dropped."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from gatewayd import protocol
from gatewayd.daemon import DB_NAME
from gatewayd.driver import Simulation
from gatewayd.model import iso, utcnow
from gatewayd.store import ActionRow, Store
from tests.e2e.conftest import CloudFactory, claim, tunnel_url, wait_action
from tests.e2e.test_cloud_loop import cloud_event_ids
from tests.e2e.test_tunnel import hostile_gateway
from tests.support import running_daemon, wait_until

pytestmark = pytest.mark.stack


def snapshot(db: Path, to: Path) -> None:
    """A consistent copy of a live SQLite database (the backup API)."""
    with sqlite3.connect(db) as src, sqlite3.connect(to) as dst:
        src.backup(dst)
    src.close()
    dst.close()


async def test_events_after_a_rolled_back_store_reach_the_cloud(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    cloud = await cloud_factory()
    state = tmp_path / "gw"
    url = tunnel_url(cloud.server.port)
    saved = tmp_path / "saved.db"
    async with running_daemon(state, cloud_url=url) as daemon:
        store = daemon.store
        assert store is not None
        await claim(cloud, daemon)
        await wait_until(lambda: len(cloud.state.db.devices()) == 2, 15)
        sim = daemon.registry.drivers["sim"]  # type: ignore[union-attr]
        door = sim.devices()[0].id
        await wait_until(lambda: store.outbox_backlog() == 0, 15)
        assert store.flush()  # the ack's row is queued with the next commit: in the copy too
        snapshot(state / DB_NAME, saved)
        lost_seq = store.acked_seq
        # reported and acknowledged, then lost with the store's last commits
        for i in range(6):
            what = Simulation.MANUAL_UNLOCK if i % 2 == 0 else Simulation.MANUAL_LOCK
            await sim.simulate(door, what, {})
        await wait_until(lambda: store.outbox_backlog() == 0 and store.acked_seq > lost_seq, 15)
        cloud_acked = store.acked_seq
    for suffix in ("", "-wal", "-shm"):
        (state / (DB_NAME + suffix)).unlink(missing_ok=True)
    shutil.copy(saved, state / DB_NAME)

    before = set(cloud_event_ids(cloud))
    async with running_daemon(state, cloud_url=url) as daemon:
        store = daemon.store
        tunnel = daemon.tunnel
        assert store is not None
        assert tunnel is not None
        assert store.acked_seq == lost_seq < cloud_acked  # the store is behind the cloud
        sim = daemon.registry.drivers["sim"]  # type: ignore[union-attr]
        door = sim.devices()[0].id
        produced: list[str] = []
        daemon.event_listeners.append(lambda ev: produced.append(ev.id))
        await wait_until(lambda: tunnel.up, 15)
        for i in range(4):
            what = Simulation.MANUAL_LOCK if i % 2 == 0 else Simulation.MANUAL_UNLOCK
            await sim.simulate(door, what, {})
        assert len(produced) == 4
        await wait_until(lambda: set(produced) <= set(cloud_event_ids(cloud)), 15)
        # numbered after what the cloud holds, and nothing is waiting
        assert store.acked_seq > cloud_acked
        assert store.outbox_backlog() == 0
    after = cloud_event_ids(cloud)
    assert len(after) == len(set(after))  # nothing twice
    assert set(after) - before == set(produced)


async def test_reports_made_at_start_up_reach_a_cloud_that_holds_the_lost_seqs(
    tmp_path: Path,
) -> None:
    """The store lost its last commit (seq 4, which the cloud holds), and at start-up, before
    the first welcome, the gateway commits more than it lost: the failure of the action the
    crash interrupted, and the locks' device frames. Their seqs no longer ran past the cloud's,
    so the loss went unnoticed: the welcome's ack dropped the failure unsent, and the cloud
    would have shown the action `processing` for good. They now follow what the cloud holds."""
    state = tmp_path / "gw"
    state.mkdir(mode=0o700)
    pre = Store.open(state / DB_NAME)
    for n in range(3):  # seqs 1..3, delivered and acked
        pre.outbox_put(
            lambda seq, n=n: protocol.encode(
                protocol.DeviceRemovedMsg(seq=seq, device_id=f"gone-{n}")
            )
        )
    assert pre.flush()
    pre.outbox_ack(3)
    now = iso(utcnow())
    transitions = [("gateway_received", now), ("processing", now)]
    row = ActionRow("ar-cut-off", "d1", "unlock", "processing", None, transitions, now)
    pre.record_action(row, now)
    pre.close()
    async with hostile_gateway(state, acked_seq=4) as (hostile, daemon, tunnel, store):
        await wait_until(lambda: bool(hostile.failed("ar-cut-off")), 15)
        assert hostile.failed("ar-cut-off")[0]["error"]["type"] == "gateway_restarted"
        await wait_until(lambda: store.outbox_backlog() == 0, 15)
        seqs = [b["seq"] for b in hostile.received if "seq" in b]
        assert seqs == list(range(5, 5 + len(seqs)))  # after the cloud's 4, in order
        assert hostile.failed("ar-cut-off")[0]["seq"] == 5
        assert len(seqs) >= 3  # the failure and the two sim locks' device frames
        assert tunnel.sessions == 1
        assert daemon.ready


async def test_frames_the_cloud_holds_are_not_sent_again_when_the_store_is_behind_it(
    tmp_path: Path,
) -> None:
    """A power cut took the store's last commits (frames 4 and 5, and the ack of 2 and 3): the
    store holds 2 and 3 unacknowledged, the cloud holds 1..5. The cloud's ack passes 2 and 3,
    which left this box under those seqs: renumbered after 5, they reached the cloud a second
    time under seqs it had not seen, a duplicate of each (an old device frame undoing a newer
    one). Only what never left the box follows the cloud's 5."""
    state = tmp_path / "gw"
    state.mkdir(mode=0o700)
    pre = Store.open(state / DB_NAME)
    for n in range(3):  # seqs 1..3, all sent before the cut; only the ack of 1 was kept
        pre.outbox_put(
            lambda seq, n=n: protocol.encode(
                protocol.DeviceRemovedMsg(seq=seq, device_id=f"gone-{n}")
            )
        )
    assert pre.flush()
    pre.outbox_ack(1)
    pre.close()
    async with hostile_gateway(state, acked_seq=5) as (hostile, daemon, tunnel, store):
        await wait_until(lambda: store.outbox_backlog() == 0 and len(hostile.received) >= 2, 15)
        removed = [b["device_id"] for b in hostile.received if b["type"] == "device_removed"]
        assert removed == []  # gone-1 and gone-2 are the cloud's seqs 2 and 3 already
        seqs = [b["seq"] for b in hostile.received if "seq" in b]
        assert seqs == list(range(6, 6 + len(seqs)))  # after the cloud's 5, in order
        assert len(seqs) >= 2  # the two sim locks' device frames
        assert store.acked_seq == seqs[-1]
        assert tunnel.sessions == 1
        assert daemon.ready


async def test_an_unlock_the_restored_store_never_held_ends_failed_not_processing(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """The box went down mid-unlock, and came back at once with a store from before it (a
    backup restored; a power cut can take the same commits): the gateway no longer knows the
    request, so nothing will report it, and as it was connected again the cloud waited for it.
    The unlock stayed `processing` for good; it now ends `failed` `gateway_lost`."""
    cloud = await cloud_factory(action_timeout_s=10.0, report_grace_s=1.0, overdue_check_s=0.1)
    state = tmp_path / "gw"
    url = tunnel_url(cloud.server.port)
    saved = tmp_path / "saved.db"
    async with running_daemon(state, cloud_url=url, latency_ms=5000) as daemon:
        store = daemon.store
        assert store is not None
        await claim(cloud, daemon)
        await wait_until(lambda: len(cloud.state.db.devices()) == 2, 15)
        await wait_until(lambda: store.outbox_backlog() == 0, 15)
        assert store.flush()
        snapshot(state / DB_NAME, saved)
        door = daemon.registry.drivers["sim"].devices()[0].id  # type: ignore[union-attr]
        status, unlock = await cloud.post(f"/v1/devices/{door}/actions/unlock", {})
        assert status == 200, unlock

        def shown() -> str:
            row = cloud.state.db.action(unlock["id"])
            assert row is not None
            return str(row["status"])

        await wait_until(lambda: shown() == "processing", 10)
    for suffix in ("", "-wal", "-shm"):
        (state / (DB_NAME + suffix)).unlink(missing_ok=True)
    shutil.copy(saved, state / DB_NAME)

    async with running_daemon(state, cloud_url=url) as daemon:
        tunnel = daemon.tunnel
        assert tunnel is not None
        await wait_until(lambda: tunnel.state == "connected", 15)
        assert shown() == "processing"  # back before the deadline
        ended = await wait_action(cloud, unlock["id"], timeout=15)
        assert (ended["status"], ended["error"]["type"]) == ("failed", "gateway_lost")
        assert tunnel.sessions == 1  # connected throughout
        assert tunnel.state == "connected"
