"""Devices the store remembers but no driver reports any more after a restart (a lock excluded
while the gateway was down) are removed upstream once their driver is up, never because its
radio is down or it failed to start, nor when they belong to a network it did not inventory."""

from __future__ import annotations

import json
from pathlib import Path

from structlog.testing import capture_logs

from drivers.sim import SimDriver
from gatewayd.daemon import DB_NAME, Daemon
from gatewayd.driver import Driver, DriverSink, DriverState, Inventory
from gatewayd.model import Device
from gatewayd.registry import Registry
from gatewayd.store import Store
from gatewayd.upstream import Upstream
from tests.daemon_runs import run_once, stored
from tests.support import config_text


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
