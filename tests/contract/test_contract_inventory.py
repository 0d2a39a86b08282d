"""Contract: a driver that can tell its whole inventory is in says so for the network its
locks are on, so that a lock excluded while the gateway was off is removed, and only then."""

from __future__ import annotations

import anyio

from gatewayd.driver import Driver, Inventory
from tests.contract.conftest import Harness
from tests.contract.sink import RecordingSink


async def test_the_inventory_covers_every_lock_the_driver_reported(
    harness: Harness, driver: Driver, sink: RecordingSink
) -> None:
    harness.require("inventory")
    inventory: Inventory | None = None
    with anyio.fail_after(30):
        while (inventory := driver.inventory()) is None:
            await anyio.sleep(0.05)
    assert len(sink.devices) >= 2
    outside = [d.native_id for d in sink.devices.values() if not inventory.covers(d.native_id)]
    assert outside == []  # a lock outside its own network's scope would never be removed
