"""Devices the store remembers but no driver reports any more after a restart (a lock excluded
while the gateway was down) are removed upstream once their driver is up, never because its
radio is down or it failed to start, nor when they belong to a network it did not inventory."""

from __future__ import annotations

import json
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from msgspec.structs import replace
from structlog.testing import capture_logs

from drivers.sim import SimDriver
from gatewayd.actions import StatusUpdate
from gatewayd.config import SimConfig
from gatewayd.daemon import DB_NAME, Daemon
from gatewayd.driver import Driver, DriverContext, DriverHealth, DriverSink, DriverState, Inventory
from gatewayd.model import ActionRequest, ActionStatus, Device, DeviceError, DeviceNotFound, utcnow
from gatewayd.registry import Registry
from gatewayd.store import Store
from gatewayd.upstream import Upstream
from tests.daemon_runs import run_once, stored
from tests.support import config_text, running_daemon, wait_until


class RadioDown(SimDriver):
    """The radio is unreachable: the driver starts (as a driver must) and reports nothing."""

    async def start(self, sink: DriverSink) -> None:
        self._state = DriverState.DOWN


class StartFails(SimDriver):
    """Reports what it found, then fails to finish starting."""

    async def start(self, sink: DriverSink) -> None:
        await super().start(sink)
        raise RuntimeError("the radio stopped answering")


class OtherNetwork(SimDriver):
    """Its inventory is complete, but of another network than the locks the store holds."""

    def inventory(self) -> Inventory | None:
        return Inventory(prefix="elsewhere-", network="elsewhere")


class InventoryFails(SimDriver):
    def inventory(self) -> Inventory | None:
        raise RuntimeError("the radio's node list is unreadable")


async def run_sim(state: Path, locks: int, driver: type[Driver] = SimDriver) -> Daemon:
    return await run_once(config_text(state, locks=locks), driver_classes={"sim": driver})


async def test_a_lock_gone_while_the_gateway_was_down_is_removed_once_its_driver_is_up(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    await run_sim(state, locks=3)
    first, _ = stored(state)
    assert sorted(first) == ["sim-0001", "sim-0002", "sim-0003"]

    await run_sim(state, locks=3, driver=RadioDown)  # a radio outage deletes nothing
    assert stored(state) == (first, [])
    await run_sim(state, locks=1, driver=StartFails)  # nor does a driver that failed to start
    assert stored(state) == (first, [])

    daemon = await run_sim(state, locks=2)  # lock 3 was excluded while the gateway was off

    devices, removed = stored(state)
    assert devices == {n: first[n] for n in ("sim-0001", "sim-0002")}  # ids kept
    assert removed == [first["sim-0003"]]
    assert daemon.registry is not None
    assert sorted(d.id for d in daemon.registry.devices()) == sorted(devices.values())


async def test_a_driver_removing_a_device_only_the_store_knows_removes_it_upstream(
    tmp_path: Path,
) -> None:
    """Registry.remove ignored ids it did not hold in memory: the row and the cloud's copy of
    a device seen in an earlier run stayed for good."""
    store = Store.open(tmp_path / DB_NAME)
    try:
        earlier = store.device_id("zwave", "e1f2a3b4-7")  # given its id in an earlier run
        registry = Registry(store, Upstream(store))
        registry.remove(earlier)
        registry.remove(earlier)  # twice: still one removal
        assert store.flush()
        assert store.devices() == []
        frames = [json.loads(frame) for _, frame in store.outbox_after(0)]
        assert [(f["type"], f["device_id"]) for f in frames] == [("device_removed", earlier)]
    finally:
        store.close()


async def test_devices_of_a_network_the_driver_did_not_inventory_are_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    await run_sim(state, locks=3)
    first, _ = stored(state)

    await run_sim(state, locks=2, driver=InventoryFails)  # not knowing removes nothing
    assert stored(state) == (first, [])
    with capture_logs() as logs:
        await run_sim(state, locks=2, driver=OtherNetwork)
    assert stored(state) == (first, [])  # sim-0003 kept, and the cloud told nothing
    kept = [e for e in logs if e["event"] == "daemon.other_network_devices_kept"]
    assert [(e["driver"], e["network"], e["kept"], e["native_ids"]) for e in kept] == [
        ("sim", "elsewhere", 1, ["sim-0003"])
    ]
    assert kept[0]["log_level"] == "warning"


def test_only_unreported_devices_of_the_inventoried_network_are_removed(tmp_path: Path) -> None:
    store = Store.open(tmp_path / DB_NAME)
    try:
        ids = {n: store.device_id("zwave", n) for n in ("0000aaaa-2", "0000aaaa-3", "0000bbbb-2")}
        registry = Registry(store, Upstream(store))
        registry.put("zwave", Device(ids["0000aaaa-2"], "0000aaaa-2", "zwave", "Front", "M", "L"))

        gone, kept = registry.remove_unreported(
            "zwave", Inventory(prefix="0000aaaa-", network="0000aaaa")
        )

        assert (gone, kept) == ([ids["0000aaaa-3"]], ["0000bbbb-2"])
        assert store.flush()
        assert {row.native_id for row in store.devices()} == {"0000aaaa-2", "0000bbbb-2"}
        frames = [json.loads(frame) for _, frame in store.outbox_after(0)]
        removed = [f["device_id"] for f in frames if f["type"] == "device_removed"]
        assert removed == [ids["0000aaaa-3"]]
    finally:
        store.close()


def serving(state: Path, locks: int, driver: type[Driver]) -> AbstractAsyncContextManager[Daemon]:
    """A daemon started on `state` and kept running until the block ends."""
    return running_daemon(state, locks=locks, driver_classes={"sim": driver})


async def unpair(daemon: Daemon, device_id: str) -> StatusUpdate:
    """unpair_devices naming `device_id`, through the daemon's dispatcher; its last status."""
    updates: list[StatusUpdate] = []
    daemon.status_listeners.append(updates.append)
    now = utcnow()
    request = ActionRequest(
        str(uuid.uuid4()),
        "Gateway",
        "gw",
        "unpair_devices",
        {"duration": 10, "device_id": device_id},
        now,
        now + timedelta(seconds=10),
    )
    assert daemon.submit(request)
    await wait_until(lambda: any(u.status.terminal for u in updates))
    daemon.status_listeners.remove(updates.append)
    return updates[-1]


async def test_a_stored_device_no_driver_reports_can_be_unpaired(tmp_path: Path) -> None:
    """A device kept because it is of another network has no driver to unpair it through: the
    operator's unpair naming it removes it from the store and the cloud. An id the store does
    not know still fails; a reported device still goes through its driver."""
    state = tmp_path / "state"
    await run_sim(state, locks=3)
    first, _ = stored(state)

    with capture_logs() as logs:
        async with serving(state, locks=2, driver=OtherNetwork) as daemon:  # sim-0003: kept
            kept = await unpair(daemon, first["sim-0003"])
            unknown = await unpair(daemon, str(uuid.uuid4()))
            reported = await unpair(daemon, first["sim-0001"])

    assert (kept.status, kept.error) == (ActionStatus.COMPLETED, None)
    assert unknown.status is ActionStatus.FAILED
    assert unknown.error is not None
    assert unknown.error["type"] == "device_not_found"
    assert (reported.status, reported.error) == (ActionStatus.COMPLETED, None)
    assert stored(state) == (
        {"sim-0002": first["sim-0002"]},
        [first["sim-0003"], first["sim-0001"]],
    )
    forgotten = [e for e in logs if e["event"] == "registry.unreported_device_unpaired"]
    assert [(e["device_id"], e["driver"], e["native_id"]) for e in forgotten] == [
        (first["sim-0003"], "sim", "sim-0003")
    ]
    through_driver = [e for e in logs if e["event"] == "sim.lock_removed"]
    assert [e["device_id"] for e in through_driver] == [first["sim-0001"]]


class InState(SimDriver):
    state = DriverState.STARTING

    def health(self) -> DriverHealth:
        return DriverHealth(self.state, "sim")


@pytest.mark.parametrize(
    ("state", "says"),
    [(DriverState.STARTING, "still starting"), (DriverState.DOWN, "radio is down")],
)
async def test_a_device_whose_driver_is_starting_or_down_is_not_unpaired_by_the_store(
    tmp_path: Path, state: DriverState, says: str
) -> None:
    """Its driver may be about to report it, or the lock may still be on its network:
    forgetting it then would give the lock a new id, and no radio was asked to exclude it."""
    store = Store.open(tmp_path / DB_NAME)
    try:
        earlier = store.device_id("sim", "sim-0001")
        registry = Registry(store, Upstream(store))
        driver = InState(SimConfig(), DriverContext(tmp_path, lambda *_: None))
        driver.state = state
        registry.attach(driver)
        with pytest.raises(DeviceError, match=says):
            await registry.unpair(10, earlier)
        with pytest.raises(DeviceNotFound):
            await registry.unpair(10, str(uuid.uuid4()))
        assert store.knows_device(earlier)
        assert store.flush()
        assert [json.loads(f)["type"] for _, f in store.outbox_after(0)] == []
    finally:
        store.close()


class ComesUp(SimDriver):
    """Its inventory is not known when it has started (a radio still coming up), only later,
    and then of whichever network the test names."""

    network: str | None = None

    def inventory(self) -> Inventory | None:
        if self.network is None:
            return None
        return Inventory(prefix=f"{self.network}-", network=self.network)


async def test_an_inventory_known_only_after_start_still_removes_the_gone_devices_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gatewayd.daemon.INVENTORY_CHECK_S", 0.02, raising=False)
    state = tmp_path / "state"
    await run_sim(state, locks=3)
    first, _ = stored(state)

    with capture_logs() as logs:
        async with serving(state, locks=2, driver=ComesUp) as daemon:
            assert daemon.store is not None
            assert daemon.registry is not None
            store, driver = daemon.store, daemon.registry.drivers["sim"]
            assert isinstance(driver, ComesUp)
            await anyio.sleep(0.1)
            assert store.knows_device(first["sim-0003"])  # not known yet: nothing removed

            driver.network = "elsewhere"  # another network's inventory: ours are kept
            await wait_until(lambda: any("kept" in e for e in logs))
            driver.network = "sim"  # this network's, once the radio is up: lock 3 is gone
            await wait_until(lambda: not store.knows_device(first["sim-0003"]))
            driver.network = "elsewhere"
            await anyio.sleep(0.1)
            driver.network = "sim"
            await anyio.sleep(0.1)

    assert stored(state) == (
        {n: first[n] for n in ("sim-0001", "sim-0002")},
        [first["sim-0003"]],
    )
    events = [e["event"] for e in logs if e["event"].startswith("daemon.")]
    assert events.count("daemon.other_network_devices_kept") == 1  # once per network and run
    gone = [e for e in logs if e["event"] == "daemon.devices_gone"]
    assert [(e["driver"], e["device_ids"]) for e in gone] == [("sim", [first["sim-0003"]])]


class StartsPastTheTimeout(SimDriver):
    """Reports its locks, then keeps start() waiting past the daemon's bound (a Z-Wave network
    still interviewing at boot: the driver waits up to connect + interview timeouts, 130 s by
    default, and the daemon gives up at 90 s)."""

    async def start(self, sink: DriverSink) -> None:
        await super().start(sink)
        await anyio.sleep_forever()


async def test_a_driver_whose_start_outlasts_the_daemons_bound_still_removes_gone_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon scheduled the inventory check only for a driver whose start returned in
    time: one that took longer kept a lock excluded while the box was off, as a ghost, all
    run."""
    monkeypatch.setattr("gatewayd.daemon.DRIVER_START_TIMEOUT_S", 0.2)
    monkeypatch.setattr("gatewayd.daemon.INVENTORY_CHECK_S", 0.02)
    state = tmp_path / "state"
    await run_sim(state, locks=3)
    first, _ = stored(state)
    async with serving(state, locks=2, driver=StartsPastTheTimeout) as daemon:
        assert daemon.store is not None
        store = daemon.store
        await wait_until(lambda: not store.knows_device(first["sim-0003"]))
    assert stored(state) == (
        {n: first[n] for n in ("sim-0001", "sim-0002")},
        [first["sim-0003"]],
    )


class LeavesNetwork(SimDriver):
    """Stops listing a lock it reported, as the Z-Wave driver does when zwave-server moves to
    another controller: the lock stays in the store and the cloud, offline, and commands for it
    answer device_not_found."""

    def leave(self, device_id: str) -> None:
        lock = self._locks.pop(device_id)
        assert self._sink is not None
        device = self._device(lock)
        self._sink.device_updated(
            replace(device, properties=replace(device.properties, online=False))
        )


async def test_a_device_its_driver_no_longer_lists_is_unpaired_by_the_store_once_it_is_up(
    tmp_path: Path,
) -> None:
    """Its driver answered device_not_found for it until the daemon restarted, so the operator
    could not remove it; while the driver is down it is kept (the lock may be back with it)."""
    async with serving(tmp_path / "state", locks=2, driver=LeavesNetwork) as daemon:
        assert daemon.registry is not None
        assert daemon.store is not None
        registry, store = daemon.registry, daemon.store
        driver = registry.drivers["sim"]
        assert isinstance(driver, LeavesNetwork)
        left, stays = (store.device_id("sim", n) for n in ("sim-0001", "sim-0002"))
        driver.leave(left)
        assert registry.device(left) is not None  # kept, offline, as after the switch

        driver._state = DriverState.DOWN
        down = await unpair(daemon, left)
        driver._state = DriverState.READY
        up = await unpair(daemon, left)
        again = await unpair(daemon, left)

        assert (down.status, down.error and down.error["type"]) == (
            ActionStatus.FAILED,
            "device_error",
        )
        assert (up.status, up.error) == (ActionStatus.COMPLETED, None)
        assert (again.status, again.error and again.error["type"]) == (
            ActionStatus.FAILED,
            "device_not_found",
        )
        assert registry.device(left) is None
        assert not store.knows_device(left)
        assert store.knows_device(stays)
        assert [d.id for d in driver.devices()] == [stays]


async def test_a_device_unpaired_by_the_store_is_not_found_before_its_removal_is_committed(
    tmp_path: Path,
) -> None:
    """The store's device list still holds a row whose removal is not committed yet: a second
    unpair right after the first completed too, and logged a second removal."""
    store = Store.open(tmp_path / DB_NAME)
    try:
        earlier = store.device_id("sim", "sim-0001")
        registry = Registry(store, Upstream(store))
        driver = InState(SimConfig(), DriverContext(tmp_path, lambda *_: None))
        driver.state = DriverState.READY
        registry.attach(driver)
        with capture_logs() as logs:
            await registry.unpair(10, earlier)
            with pytest.raises(DeviceNotFound):
                await registry.unpair(10, earlier)
        assert [e["event"] for e in logs].count("registry.unreported_device_unpaired") == 1
        assert store.flush()
        assert not store.knows_device(earlier)
    finally:
        store.close()


async def unlock(daemon: Daemon, device_id: str) -> StatusUpdate:
    """An unlock of `device_id` through the daemon's dispatcher; its last status."""
    updates: list[StatusUpdate] = []
    daemon.status_listeners.append(updates.append)
    now = utcnow()
    request = ActionRequest(
        str(uuid.uuid4()), "Device", device_id, "unlock", {}, now, now + timedelta(seconds=10)
    )
    assert daemon.submit(request)
    await wait_until(lambda: any(u.status.terminal for u in updates))
    daemon.status_listeners.remove(updates.append)
    return updates[-1]


class Starting(SimDriver):
    """Still starting: it has reported nothing yet (at boot the tunnel is up before it)."""

    async def start(self, sink: DriverSink) -> None:
        self._state = DriverState.STARTING


@pytest.mark.parametrize(
    ("driver", "says"),
    [
        (RadioDown, "the sim radio is down"),
        (Starting, "the sim driver is still starting"),
        (OtherNetwork, "the sim radio does not list this lock"),
    ],
)
async def test_an_action_on_a_paired_lock_its_driver_cannot_reach_now_is_offline_not_not_found(
    tmp_path: Path, driver: type[Driver], says: str
) -> None:
    """`device_not_found` tells a cloud the lock is gone; this one is paired and only out of
    reach for now (its radio down, its driver still starting, its network not the radio's)."""
    state = tmp_path / "state"
    await run_sim(state, locks=3)
    first, _ = stored(state)
    async with serving(state, locks=2, driver=driver) as daemon:
        paired = await unlock(daemon, first["sim-0003"])
        unknown = await unlock(daemon, str(uuid.uuid4()))
    assert paired.status is ActionStatus.FAILED
    assert paired.error is not None
    assert paired.error["type"] == "device_offline"
    assert says in paired.error["message"]
    assert unknown.error is not None
    assert unknown.error["type"] == "device_not_found"
    assert stored(state)[0]["sim-0003"] == first["sim-0003"]  # still paired


async def test_an_action_on_a_lock_of_a_driver_no_longer_enabled_is_offline(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / DB_NAME)
    try:
        earlier = store.device_id("zigbee", "00:11:22:33:44:55:66:77")
        assert store.flush()
        registry = Registry(store, Upstream(store))
        registry.attach(SimDriver(SimConfig(), DriverContext(tmp_path, lambda *_: None)))
        error = registry.unreported(earlier)
        assert isinstance(error, DeviceError)
        assert error.type == "device_offline"
        assert "the zigbee driver is not enabled" in str(error)
        assert registry.unreported(str(uuid.uuid4())) is None
    finally:
        store.close()
