"""A gateway whose store file was damaged while it was down (a page of its action log garbage,
as a worn SD card leaves it) comes back on its own: still claimed, its locks under the same
ids, the events it had not delivered delivered once, and the damage on /status."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gatewayd.daemon import DB_NAME
from gatewayd.driver import Simulation
from tests.e2e.conftest import CloudFactory, Rest, claim, tunnel_url
from tests.e2e.test_cloud_loop import cloud_event_ids
from tests.support import free_port, running_daemon, wait_until
from tests.unit.test_store_salvage import overwrite, root_page

pytestmark = pytest.mark.stack


async def test_a_gateway_with_a_damaged_store_comes_back_claimed_and_loses_no_event(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    cloud = await cloud_factory()
    rest = Rest(cloud)
    state = tmp_path / "gw"
    url = tunnel_url(cloud.server.port)
    async with running_daemon(state, cloud_url=url) as daemon:
        _, gateway_id = await claim(cloud, daemon)
        await wait_until(lambda: len(cloud.state.db.devices()) == 2, 15)
        door = daemon.registry.devices()[0].id  # type: ignore[union-attr]
        assert (await rest.act(door, "unlock"))["status"] == "completed"

    # events while the cloud cannot be reached: they wait in the outbox
    produced: list[str] = []
    async with running_daemon(state, cloud_url=tunnel_url(free_port())) as daemon:
        daemon.event_listeners.append(lambda ev: produced.append(ev.id))
        sim = daemon.registry.drivers["sim"]  # type: ignore[union-attr]
        for i in range(4):
            what = Simulation.MANUAL_LOCK if i % 2 == 0 else Simulation.MANUAL_UNLOCK
            await sim.simulate(door, what, {})
        assert daemon.store is not None
        assert daemon.store.flush()
        assert daemon.store.outbox_backlog() >= 4
    assert len(produced) == 4

    db = state / DB_NAME
    overwrite(db, root_page(db, "actions"))

    async with running_daemon(state, cloud_url=url) as daemon:
        store, tunnel = daemon.store, daemon.tunnel
        assert store is not None
        assert tunnel is not None
        recovered = daemon.snapshot()["store"]["recovered"]
        assert recovered is not None
        assert set(recovered["lost"]) == {"actions"}
        assert recovered["kept"]["identity"] == 1
        assert "store rebuilt" in daemon.status_line()
        moved = state / recovered["moved_to"]
        assert stat.S_IMODE(moved.stat().st_mode) == 0o600
        # still claimed: the cloud lets it in with its credential, and it delivers its events
        await wait_until(lambda: tunnel.up, 15)
        assert store.identity().gateway_id == gateway_id
        await wait_until(lambda: set(produced) <= set(cloud_event_ids(cloud)), 15)
        await wait_until(lambda: store.outbox_backlog() == 0, 15)
        assert len(cloud.state.db.devices()) == 2  # the same locks, not two new ones
        assert (await rest.act(door, "lock"))["status"] == "completed"
    events = cloud_event_ids(cloud)
    assert len(events) == len(set(events))  # nothing twice
