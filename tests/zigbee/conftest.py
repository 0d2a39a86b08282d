"""Fixtures: the Zigbee driver on the virtual radio, hosted in an anyio task group."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from drivers.zigbee import ZigbeeDriver
from drivers.zigbee.virtual.radio import VirtualNetwork
from gatewayd.driver import DriverContext, DriverState, Simulation, ZigbeeConfig
from gatewayd.model import Device, EventName
from tests.contract.sink import RecordingSink

BASE = ZigbeeConfig(
    enabled=True,
    radio_type="virtual",
    virtual_locks=2,
    command_timeout_s=2.0,
    report_wait_s=0.5,
    event_merge_s=0.2,
    availability_s=0.5,
    reconnect_max_s=0.5,
)


class AnnouncingSink(RecordingSink):
    """Also keeps every device_added: what each adoption announced."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[Device] = []

    def device_added(self, device: Device) -> None:
        self.added.append(device)
        super().device_added(device)


@asynccontextmanager
async def running(
    tmp_path: Path,
    sink: RecordingSink,
    config: ZigbeeConfig = BASE,
    wait_locks: int = 2,
    virtual: VirtualNetwork | None = None,
) -> AsyncIterator[ZigbeeDriver]:
    """Start a driver in tmp_path (on `virtual`, if given); wait for its locks; stop it after."""
    async with anyio.create_task_group() as tg:
        driver = ZigbeeDriver(
            config, DriverContext(state_dir=tmp_path, spawn=lambda n, f: tg.start_soon(f, name=n))
        )
        driver.virtual = virtual
        await driver.start(sink)
        try:
            if wait_locks:
                await sink.wait_for(
                    lambda: (
                        len(sink.devices) >= wait_locks
                        and driver.health().state is DriverState.READY
                    ),
                    timeout=20,
                )
            yield driver
        finally:
            await driver.stop()
            tg.cancel_scope.cancel()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


def config(**changes: object) -> ZigbeeConfig:
    return msgspec.structs.replace(BASE, **changes)


async def settled_events(
    sink: RecordingSink, mark: int, count: int = 0
) -> list[tuple[EventName, Any]]:
    """The events since `mark` as (name, method), once `count` of them are in (a slow machine
    may take them in late) and past the merge window (0.5 s): a late duplicate would be among
    them."""
    await sink.wait_for(lambda: len(sink.events) - mark >= count, timeout=20)
    await asyncio.sleep(0.5)
    return [(e.event_name, e.details.get("method")) for e in sink.events[mark:]]


async def jam(driver: ZigbeeDriver, sink: RecordingSink, device_id: str) -> None:
    """The lock's bolt jams, and the driver has heard it."""
    await driver.simulate(device_id, Simulation.JAM, {})
    await sink.wait_for(lambda: sink.devices[device_id].properties.jammed is True)
