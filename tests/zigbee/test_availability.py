"""Availability: a lock that stops answering is found offline, wherever its clusters are."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.zigbee.virtual.radio import VirtualNetwork
from gatewayd.driver import Simulation
from gatewayd.model import EventName
from tests.contract.sink import RecordingSink
from tests.zigbee.conftest import config, running

pytestmark = pytest.mark.stack

GENERIC = "00:0d:6f:00:0a:90:00:02"


async def test_a_lock_on_an_endpoint_other_than_1_is_pinged(tmp_path: Path) -> None:
    """A lock whose clusters are on endpoint 11 (Nimly's locks) goes out of reach: the
    availability ping finds it offline, and finds it back once it answers again. Before, the
    ping asked endpoint 1 only: such a lock was never pinged, so it stayed online for good
    once silent, and offline for good once a command had found it unreachable."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    net.lock(GENERIC).endpoint = 11
    sink = RecordingSink()
    async with running(tmp_path, sink, virtual=net) as driver:
        dev = next(d.id for d in sink.devices.values() if d.native_id == GENERIC)
        mark = len(sink.events)
        await driver.simulate(dev, Simulation.OFFLINE, {})
        await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED, after=mark, timeout=5)
        assert sink.devices[dev].properties.online is False
        net.lock(GENERIC).online = True  # back in reach, silently: only a ping finds it
        await sink.wait_event(dev, EventName.DEVICE_CONNECTED, after=mark, timeout=5)
        assert sink.devices[dev].properties.online is True


async def test_a_sleepy_lock_out_of_reach_is_found_offline(tmp_path: Path) -> None:
    """A lock out of reach whose radio reports the failed delivery only after its parent gave
    up waiting for the lock's poll (7.68 s on the air, 5.5 s here): the availability ping waits
    for that answer and finds the lock offline. Before, the ping gave up after 5 s whatever
    command_timeout_s said, before any such failure could come, and zigpy's two retries would
    have tripled the wait past command_timeout_s anyway: a sleepy lock that stopped answering
    stayed online for good."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    net.delivery_failure_s = 5.5
    sink = RecordingSink()
    async with running(tmp_path, sink, config(command_timeout_s=10.0), virtual=net) as driver:
        dev = next(d.id for d in sink.devices.values() if d.native_id == GENERIC)
        mark = len(sink.events)
        await driver.simulate(dev, Simulation.OFFLINE, {})
        await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED, after=mark, timeout=10)
        assert sink.devices[dev].properties.online is False
