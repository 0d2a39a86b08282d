"""A gateway whose store file was damaged while it was down (a page of its action log garbage,
as a worn SD card leaves it) comes back on its own: still claimed, its locks under the same
ids, the events it had not delivered delivered once, and the damage on /status."""

from __future__ import annotations

import stat
from pathlib import Path

import anyio
import pytest

from gatewayd.daemon import DB_NAME
from gatewayd.driver import Simulation
from gatewayd.model import Device
from tests.e2e.conftest import CloudFactory, Rest, claim, transitions, tunnel_url, wait_action
from tests.e2e.test_cloud_loop import cloud_event_ids
from tests.support import free_port, on_a_small_disk, running_daemon, wait_until
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


def _locked(device: Device | None) -> bool | None:
    assert device is not None
    return device.properties.locked


async def test_a_full_disk_holds_the_events_runs_no_action_and_is_not_taken_for_damage(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """The store refuses commits for a full disk (SQLITE_FULL). The events of the locks wait in
    memory, none lost; an action is not run, since its receipt cannot be recorded (the cloud
    gives it up as gateway_failure, and it is never run later); /status says why; nothing is
    set aside as damaged; and once there is room the gateway carries on by itself."""
    cloud = await cloud_factory()
    rest = Rest(cloud)
    state = tmp_path / "gw"
    async with running_daemon(state, cloud_url=tunnel_url(cloud.server.port)) as daemon:
        await claim(cloud, daemon)
        await wait_until(lambda: len(cloud.state.db.devices()) == 2, 15)
        store, registry = daemon.store, daemon.registry
        assert store is not None
        assert registry is not None
        door = registry.devices()[0].id
        sim = registry.drivers["sim"]
        produced: list[str] = []
        daemon.event_listeners.append(lambda ev: produced.append(ev.id))
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # no page more: the disk is full
        for n in range(60):  # one tick's burst, more than the free pages hold; ends unlocked
            what = Simulation.MANUAL_LOCK if n % 2 == 0 else Simulation.MANUAL_UNLOCK
            await sim.simulate(door, what, {})
        await anyio.sleep(0.1)
        assert "database or disk is full" in (store.last_error or "")
        for n in range(4):  # and more while it refuses
            what = Simulation.MANUAL_LOCK if n % 2 == 0 else Simulation.MANUAL_UNLOCK
            await sim.simulate(door, what, {})
            await anyio.sleep(0.05)

        status, ar = await rest.post(f"/v1/devices/{door}/actions/lock", {})
        assert status == 200, ar
        assert (await wait_action(cloud, ar["id"], 20))["status"] == "gateway_failure"
        assert _locked(registry.device(door)) is False  # the lock was not moved
        shown = daemon.snapshot()
        assert "database or disk is full" in shown["store"]["last_error"]
        assert "store error" in shown["gateway"]["status_line"]
        assert shown["store"]["recovered"] is None

        store._db.execute("PRAGMA max_page_count = 1073741823")  # room again
        await wait_until(lambda: store.last_error is None and store.outbox_backlog() == 0, 15)
        events = cloud_event_ids(cloud)
        assert set(produced) <= set(events)
        assert len(events) == len(set(events))
        assert _locked(registry.device(door)) is False  # nor later
        assert transitions(cloud, ar["id"])[-1] == "gateway_failure"
        assert (await rest.act(door, "lock"))["status"] == "completed"
        assert store.recovery is None
    assert not list(state.glob(f"{DB_NAME}.corrupt-*"))


_DAEMON_ON_A_SMALL_DISK = """
import json, sys
from pathlib import Path
import anyio
from gatewayd.daemon import DB_NAME
from gatewayd.driver import Simulation
from gatewayd.store import Store
from tests.support import fill_disk as fill, free_port, running_daemon

state = Path(sys.argv[1]) / "gw"

async def main():
    produced = []
    url = f"ws://127.0.0.1:{free_port()}/v1/gateway/tunnel"  # no cloud: the events wait
    async with running_daemon(state, cloud_url=url, extra="[store]\\ndisk_low_mb = 1\\n") as d:
        made = d.snapshot()["store"]["disk_reserve"]
        d.event_listeners.append(lambda ev: produced.append(ev.id))
        door = d.registry.devices()[0].id
        fill(Path(sys.argv[1]) / "filler")
        for n in range(20):
            what = Simulation.MANUAL_LOCK if n % 2 == 0 else Simulation.MANUAL_UNLOCK
            await d.registry.drivers["sim"].simulate(door, what, {})
        await anyio.sleep(0.1)
        shown = d.snapshot()
    store = Store.open(state / DB_NAME)  # the next start
    frames = [frame.decode() for _, frame in store.outbox_after(0, 10_000)]
    kept = [event_id for event_id in produced if any(event_id in f for f in frames)]
    print(json.dumps({
        "made": made, "produced": len(produced), "kept": len(kept),
        "reserve": shown["store"]["disk_reserve"], "line": shown["gateway"]["status_line"],
    }))

anyio.run(main)
"""


def test_door_events_while_the_disk_is_full_are_on_disk_after_the_daemon_stops(
    tmp_path: Path,
) -> None:
    """A daemon on a real full disk (a 12 MiB tmpfs filled up): the door events it heard were
    held in memory and lost at the stop; the store now commits them in its space reserve, and
    /status says the reserve is used."""
    found, out = on_a_small_disk(tmp_path, "12m", _DAEMON_ON_A_SMALL_DISK, timeout=120)
    assert found["made"] is True  # a new state dir with room gets its reserve
    assert found["produced"] == 20
    assert found["kept"] == 20, out
    assert found["reserve"] is False
    assert "no space reserve" in found["line"]
    assert "store.reserve_released" in out
