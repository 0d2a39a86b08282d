"""Fixtures: the Zigbee driver on the virtual radio, hosted in an anyio task group."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from drivers.zigbee import ZigbeeDriver
from drivers.zigbee.virtual.lock import VirtualLock
from drivers.zigbee.virtual.radio import VirtualNetwork
from drivers.zigbee.zigpy_api import foundation, zdo_t
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


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    """For what the sink does not hear about (the virtual lock's bindings, a lock's own
    state): polled."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


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


Frame = Any  # a zigpy ZigbeePacket from the coordinator to a virtual lock
Matches = Callable[[Frame], bool]


class Dropped:
    """The frames to one virtual lock that a `drop` matches: `lost` (never heard: the lock
    asleep, out of range, the frame lost on the air) while it is on and, with `times`, for
    the first `times` of them; `heard` (passed to the lock) after that."""

    def __init__(self, vlock: VirtualLock, matches: tuple[Matches, ...], times: int | None):
        self.lost: list[Frame] = []
        self.heard: list[Frame] = []
        self.on = True
        self._matches, self._times, self._receive = matches, times, vlock.receive
        vlock.receive = self._hears  # type: ignore[method-assign]

    def stop(self) -> None:
        """The lock hears every frame from now on (it woke, it is back in range)."""
        self.on = False

    def _hears(self, packet: Frame) -> None:
        if any(match(packet) for match in self._matches):
            if self.on and (self._times is None or len(self.lost) < self._times):
                self.lost.append(packet)
                return
            self.heard.append(packet)
        self._receive(packet)


def drop(vlock: VirtualLock, *matches: Matches, times: int | None = None) -> Dropped:
    """From now on `vlock` never hears a frame any of `matches` picks, until `stop()` or (with
    `times`) after the first `times` of them; `times=0` loses none and only keeps them. Drops
    on one lock stack: a frame any of them loses is lost."""
    return Dropped(vlock, matches, times)


def zdo(cmd: zdo_t.ZDOCmd) -> Matches:
    """A ZDO request `cmd`."""
    return lambda packet: packet.dst_ep == 0 and packet.cluster_id == cmd


def binds(cluster: int | None = None) -> Matches:
    """A ZDO Bind_req (of `cluster` only, if given)."""
    bind = zdo(zdo_t.ZDOCmd.Bind_req)

    def matches(packet: Frame) -> bool:
        # Bind_req: TSN, source IEEE, source endpoint, then the cluster id
        data = packet.data.serialize()
        return bind(packet) and (cluster is None or data[10:12] == cluster.to_bytes(2, "little"))

    return matches


def zcl(cluster: int, command: foundation.GeneralCommand) -> Matches:
    """A ZCL general (profile-wide) `command` to `cluster`."""

    def matches(packet: Frame) -> bool:
        if packet.dst_ep == 0 or packet.cluster_id != cluster:
            return False
        hdr = foundation.ZCLHeader.deserialize(packet.data.serialize())[0]
        return bool(hdr.frame_control.is_general) and hdr.command_id == command

    return matches


def reads(cluster: int, attr: int | None = None) -> Matches:
    """A Read_Attributes of `cluster` (that asks for `attr`, if given)."""
    read = zcl(cluster, foundation.GeneralCommand.Read_Attributes)

    def matches(packet: Frame) -> bool:
        if not read(packet):
            return False
        payload = foundation.ZCLHeader.deserialize(packet.data.serialize())[1]
        asked = {int.from_bytes(payload[i : i + 2], "little") for i in range(0, len(payload), 2)}
        return attr is None or attr in asked

    return matches
