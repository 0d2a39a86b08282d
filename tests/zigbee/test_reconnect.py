"""A radio reconnect: zigpy hands over new device objects; what the driver knew of each lock
(online, jammed) is kept, because nothing happened at the door."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.zigbee import ZigbeeDriver
from gatewayd.driver import DriverState, Simulation
from gatewayd.model import EventName
from tests.contract.sink import RecordingSink
from tests.zigbee.conftest import AnnouncingSink, jam, running

pytestmark = pytest.mark.stack

GENERIC = "00:0d:6f:00:0a:90:00:02"


def by_native(sink: RecordingSink, ieee: str) -> str:
    return next(d.id for d in sink.devices.values() if d.native_id == ieee)


async def reconnect(driver: ZigbeeDriver, up: DriverState) -> None:
    """Unplug the radio, wait for DOWN, plug it back, wait for `up`."""
    assert driver.virtual is not None
    driver.virtual.unplug()
    async with asyncio.timeout(5):
        while driver.health().state is not DriverState.DOWN:
            await asyncio.sleep(0.01)
    driver.virtual.plug()
    async with asyncio.timeout(10):
        while driver.health().state is not up:
            await asyncio.sleep(0.05)


async def test_an_offline_lock_stays_offline_across_a_radio_reconnect(tmp_path: Path) -> None:
    """A lock that went offline before the radio was lost is announced offline after the
    reconnect, and the cloud hears nothing more until it answers again. Before, the lock came
    back online without a `device connected`, and the next availability ping sent a second
    `device disconnected`."""
    sink = AnnouncingSink()
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, GENERIC)
        mark = len(sink.events)
        await driver.simulate(dev, Simulation.OFFLINE, {})
        await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED, after=mark)
        added = len(sink.added)
        await reconnect(driver, DriverState.DEGRADED)  # up, with a lock offline
        await asyncio.sleep(2.0)  # several availability periods
        assert [d.properties.online for d in sink.added[added:] if d.id == dev] == [False]
        assert sink.devices[dev].properties.online is False
        names = [e.event_name for e in sink.events[mark:] if e.device_id == dev]
        assert names == [EventName.DEVICE_DISCONNECTED]


async def test_a_jammed_lock_is_still_jammed_after_a_radio_reconnect(tmp_path: Path) -> None:
    """The jam the lock reported is still shown after the reconnect, with the bolt state known
    before it. Before, the re-adopted lock was shown not jammed and its bolt unknown."""
    sink = AnnouncingSink()
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, GENERIC)
        assert sink.devices[dev].properties.locked is True
        await jam(driver, sink, dev)
        mark, added = len(sink.events), len(sink.added)
        await reconnect(driver, DriverState.READY)
        await asyncio.sleep(1.0)  # the read after the reconnect has been answered by now
        assert driver.virtual.lock(GENERIC).mem.lock_state == 0  # type: ignore[union-attr]
        announced = [d.properties for d in sink.added[added:] if d.id == dev]
        assert [(p.jammed, p.locked) for p in announced] == [(True, True)]
        assert sink.devices[dev].properties.jammed is True
        assert [e for e in sink.events[mark:] if e.device_id == dev] == []


async def test_a_door_opened_while_the_radio_was_unplugged_is_reported_after_the_reconnect(
    tmp_path: Path,
) -> None:
    """The door is opened while the radio is unplugged (its report reaches no one). After the
    reconnect the door shows open and one `door opened` goes out, as for the bolt. Before, the
    read after a reconnect asked for the bolt and battery only: the door stayed closed, and
    no event came until the door moved again."""
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, GENERIC)
        assert sink.devices[dev].properties.door_open is False
        mark = len(sink.events)
        assert driver.virtual is not None
        driver.virtual.unplug()
        async with asyncio.timeout(5):
            while driver.health().state is not DriverState.DOWN:
                await asyncio.sleep(0.01)
        await driver.simulate(dev, Simulation.DOOR_OPEN, {})
        driver.virtual.plug()
        await sink.wait_for(lambda: sink.devices[dev].properties.door_open is True)
        await asyncio.sleep(1.0)  # a repeat would be in by now
        names = [e.event_name for e in sink.events[mark:] if e.device_id == dev]
        assert names == [EventName.DOOR_OPENED]


async def test_a_bolt_turned_while_the_lock_was_out_of_reach_is_reported_when_it_is_back(
    tmp_path: Path,
) -> None:
    """The lock is out of reach (offline) when someone unlocks it by hand: its report is lost
    on the air. When it is heard again, the driver reads its bolt, shows it unlocked and sends
    one `door unlocked`. Before, only `device connected` went out: the lock was shown locked
    until its bolt next moved."""
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, GENERIC)
        assert sink.devices[dev].properties.locked is True
        mark = len(sink.events)
        await driver.simulate(dev, Simulation.OFFLINE, {})
        await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED, after=mark)
        await driver.simulate(dev, Simulation.MANUAL_UNLOCK, {})
        await asyncio.sleep(0.3)  # its report has gone out, to no one
        await driver.simulate(dev, Simulation.ONLINE, {})
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is False)
        await asyncio.sleep(1.0)  # a repeat would be in by now
        names = [e.event_name for e in sink.events[mark:] if e.device_id == dev]
        assert names == [
            EventName.DEVICE_DISCONNECTED,
            EventName.DEVICE_CONNECTED,
            EventName.DOOR_UNLOCKED,
        ]
