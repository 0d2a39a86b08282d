"""Reading the bolt: the answer to a read of lock_state is the lock's word, like its report."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gatewayd.model import EventName, Unlock
from tests.contract.sink import RecordingSink
from tests.zigbee.conftest import config, running, settled_events

pytestmark = pytest.mark.stack

GENERIC = "00:0d:6f:00:0a:90:00:02"
DOOR_LOCK = 0x0101


def by_native(sink: RecordingSink, ieee: str) -> str:
    return next(d.id for d in sink.devices.values() if d.native_id == ieee)


async def test_an_unlock_whose_report_is_lost_is_confirmed_by_reading_the_bolt(
    tmp_path: Path,
) -> None:
    """The lock unlocks but neither its report nor its operation event reaches us (a lost
    binding, a lost frame): after report_wait_s the driver reads lock_state, and the answer,
    unlocked, completes the action with one `remote` report. zigpy 2.3 delivers a read's
    answer only as an AttributeReadEvent, which the driver did not hear: the unlock the lock
    had done was reported failed with a timeout."""
    sink = RecordingSink()
    async with running(tmp_path, sink, config(command_timeout_s=3.0)) as driver:
        dev = by_native(sink, GENERIC)
        vlock = driver.virtual.lock(GENERIC)  # type: ignore[union-attr]
        vlock.mem.bound.discard(DOOR_LOCK)  # no report, no operation event
        mark = len(sink.events)
        await driver.execute(dev, Unlock())
        assert vlock.mem.lock_state == 2
        assert sink.devices[dev].properties.locked is False
        events = await settled_events(sink, mark, 1)
        assert events == [(EventName.DOOR_UNLOCKED, "remote")]


async def test_a_bolt_moved_while_the_gateway_was_down_is_reported_at_restart(
    tmp_path: Path,
) -> None:
    """The bolt is turned by hand while the gateway is stopped: the read at restart finds it
    unlocked, and the cloud is told, once, method unknown. The read's answer was ignored
    before, so the gateway went on showing the door locked."""
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, GENERIC)
        assert sink.devices[dev].properties.locked is True
        net = driver.virtual
    assert net is not None
    net.lock(GENERIC).mem.lock_state = 2
    net.save()
    mark = len(sink.events)
    async with running(tmp_path, sink):
        await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
        await asyncio.sleep(0.5)  # past the merge window: a late duplicate would be here
        assert sink.devices[dev].properties.locked is False
        events = [(e.event_name, e.details.get("method")) for e in sink.events[mark:]]
        assert events == [(EventName.DOOR_UNLOCKED, "unknown")]
