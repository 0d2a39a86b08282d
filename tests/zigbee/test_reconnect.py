"""A radio reconnect: zigpy hands over new device objects; what the driver knew of each lock
(online, jammed) is kept, because nothing happened at the door."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from drivers.zigbee import ZigbeeDriver
from drivers.zigbee import lock as zigbee_lock
from drivers.zigbee.virtual.radio import VirtualNetwork
from drivers.zigbee.zigpy_api import DoorLock
from gatewayd.driver import DriverState, Simulation
from gatewayd.model import CodeNotConfirmed, DeviceError, EventName, PinCode, SetCode, Unlock
from tests.contract.sink import RecordingSink
from tests.zigbee.conftest import AnnouncingSink, config, drop, jam, reads, running

pytestmark = pytest.mark.stack

YALE, GENERIC = "00:0d:6f:00:0a:90:00:01", "00:0d:6f:00:0a:90:00:02"
DOOR_LOCK = 0x0101


def by_native(sink: RecordingSink, ieee: str) -> str:
    return next(d.id for d in sink.devices.values() if d.native_id == ieee)


def forget_bolt(tmp_path: Path, ieee: str) -> None:
    """Take the lock's bolt state out of zigpy's cache (a lock whose first read failed): the
    driver reads it over the air when it next starts."""
    db = sqlite3.connect(tmp_path / "zigbee.db")
    with db:
        db.execute(
            "DELETE FROM attributes_cache_v15 WHERE ieee = ? AND cluster_id = ? AND attr_id = 0",
            (ieee, DOOR_LOCK),
        )
    db.close()


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


def unplugged_at_the_first_read(tmp_path: Path) -> tuple[VirtualNetwork, asyncio.Task[None]]:
    """The network of a driver about to start, and the task that pulls its radio out while
    the driver reads GENERIC's bolt over the air (zigpy never cached it), and plugs it back."""
    forget_bolt(tmp_path, GENERIC)
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    lock = net.lock(GENERIC)
    lock.delay_s = 0.5  # its answer to the read is still on its way when the radio goes

    async def pull() -> None:
        while lock.frames_received == 0:
            await asyncio.sleep(0.01)
        net.unplug()
        await asyncio.sleep(0.3)
        net.plug()
        lock.delay_s = 0.0

    return net, asyncio.ensure_future(pull())


async def ready_again(driver: ZigbeeDriver, net: VirtualNetwork) -> None:
    async with asyncio.timeout(10):
        while driver.health().state is not DriverState.READY or net.app is None:
            await asyncio.sleep(0.05)


async def test_a_radio_lost_while_the_locks_are_loaded_is_reconnected(tmp_path: Path) -> None:
    """The radio is lost while the driver loads its locks at start-up (a lock whose bolt zigpy
    never cached is read over the air). The driver reconnects once the radio is back, and the
    lock can be unlocked. Before, the loss was noted, then the end of the start-up declared
    the driver READY again on the dead connection: nothing reconnected, every command failed
    and marked its lock offline, until the daemon was restarted."""
    sink = RecordingSink()
    async with running(tmp_path, sink):
        pass
    net, pulling = unplugged_at_the_first_read(tmp_path)
    async with running(tmp_path, sink, config(), wait_locks=0, virtual=net) as driver:
        await pulling
        dev = by_native(sink, GENERIC)
        await ready_again(driver, net)
        await driver.execute(dev, Unlock())
        assert sink.devices[dev].properties.locked is False


async def test_a_command_failing_because_the_radio_is_gone_leaves_the_lock_online(
    tmp_path: Path,
) -> None:
    """The radio is lost while the driver starts, as a lock's read after the restart goes out:
    its failed delivery is the radio's, not the lock's, which stays online with no event.
    Before, the lock was marked unreachable (`device disconnected`), kept offline across the
    reconnect, and shown offline until the next availability ping (half of availability_s,
    30 minutes by default) or until it spoke."""
    sink = RecordingSink()
    async with running(tmp_path, sink):
        pass
    mark = len(sink.events)
    net, pulling = unplugged_at_the_first_read(tmp_path)
    cfg = config(availability_s=0)  # no ping to mend it: what the driver itself concludes
    async with running(tmp_path, sink, cfg, wait_locks=0, virtual=net) as driver:
        await pulling
        await ready_again(driver, net)
        await asyncio.sleep(0.5)
        yale = by_native(sink, YALE)
        assert sink.devices[yale].properties.online is True
        assert [e.event_name for e in sink.events[mark:] if e.device_id == yale] == []


async def test_the_late_echo_of_a_code_set_just_before_a_reconnect_is_not_a_second_change(
    tmp_path: Path,
) -> None:
    """A code is set and read back; the lock's own programming event for it comes a moment
    later, after a radio reconnect. One `code set on device` goes out, the action's. Before,
    the lock adopted after the reconnect did not know the event was the echo of our own set:
    it reported a second `code set on device`, method `rf`, a change nobody made."""
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        dev = by_native(sink, GENERIC)
        assert driver.virtual is not None
        driver.virtual.lock(GENERIC).programming_delay_s = 2.0
        mark = len(sink.events)
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("4682")))
        await reconnect(driver, DriverState.READY)
        await asyncio.sleep(2.5)  # the echo has come
        assert sink.code_events(dev, mark, "method") == [("code set on device", "remote")]


@pytest.mark.parametrize(
    ("ieee", "waiting"),
    [(YALE, "programming-event"), (GENERIC, "answer")],
    ids=["masking-lock-event", "set-answer"],
)
async def test_a_code_set_cut_by_a_radio_loss_fails_at_once_with_its_outcome_unknown(
    tmp_path: Path, ieee: str, waiting: str
) -> None:
    """The radio is lost while a set_code the lock has stored waits for the lock's word (a
    masking lock's programming event, or the set's answer). The action fails at once,
    `device_error`, saying whether the slot holds the code is unknown; no code is reported
    set. Before, it waited for the programming event for the whole command_timeout_s (60 s
    here), then failed `code_not_confirmed` as if the lock had not taken it; cut in the
    answer's wait, it failed saying only that the radio went down."""
    sink = RecordingSink()
    async with running(tmp_path, sink, config(command_timeout_s=60.0)) as driver:
        dev = by_native(sink, ieee)
        assert driver.virtual is not None
        vlock = driver.virtual.lock(ieee)
        if waiting == "answer":
            receive = vlock.receive

            def slow_after_the_read(packet: Any) -> None:
                receive(packet)
                vlock.delay_s = 30.0  # the read of the slot is answered, the set is not

            vlock.receive = slow_after_the_read  # type: ignore[method-assign]
        else:
            vlock.programming_delay_s = 30.0
        mark = len(sink.events)
        setting = asyncio.ensure_future(
            driver.execute(dev, SetCode(slot_id=3, code=PinCode("4682")))
        )
        async with asyncio.timeout(5):
            while vlock.mem.pins.get(3) != "4682":
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        driver.virtual.unplug()
        with anyio.fail_after(10), pytest.raises(DeviceError) as failed:
            await setting
        assert not isinstance(failed.value, CodeNotConfirmed)
        assert failed.value.type == "device_error"
        assert "radio" in str(failed.value)
        assert "unknown" in str(failed.value)
        assert "4682" not in str(failed.value)
        assert sink.code_events(dev, mark, "method") == []


async def test_a_bolt_command_cut_by_a_radio_loss_fails_at_once_with_its_outcome_unknown(
    tmp_path: Path,
) -> None:
    """The radio is lost while an unlock the lock has acknowledged waits for its bolt report.
    The action fails at once, `device_error`, saying whether the lock moved is unknown.
    Before, it waited out report_wait_s (30 s here), then its read failed: "the zigbee radio
    is down"."""
    sink = RecordingSink()
    cfg = config(command_timeout_s=60.0, report_wait_s=30.0)
    async with running(tmp_path, sink, cfg) as driver:
        dev = by_native(sink, GENERIC)
        assert driver.virtual is not None
        vlock = driver.virtual.lock(GENERIC)
        vlock.actuation_s = 30.0  # answers at once; its bolt report would come 30 s later
        unlocking = asyncio.ensure_future(driver.execute(dev, Unlock()))
        async with asyncio.timeout(5):
            while vlock.bolt_commands == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the answer is in: the unlock waits for the bolt
        assert not unlocking.done()
        driver.virtual.unplug()
        with anyio.fail_after(10), pytest.raises(DeviceError) as failed:
            await unlocking
        assert failed.value.type == "device_error"
        assert "radio" in str(failed.value)
        assert "unknown" in str(failed.value)


async def test_a_lock_whose_code_limits_were_given_up_is_not_asked_again_after_a_reconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This lock never answers a read that asks for its code limits: after LIMITS_READS
    unanswered reads they are given up (zigbee.limits_unread). A radio reconnect does not
    start the count again: heard after it, well past any backoff, the lock is not asked.
    Before, the lock adopted after the reconnect had no count of them, and it was asked up
    to LIMITS_READS more times after each reconnect."""
    monkeypatch.setattr(zigbee_lock, "LIMITS_RETRY_S", 0.05, raising=False)
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    lost = drop(vlock, reads(DoorLock.cluster_id, 0x0012)).lost  # never answered
    sink = RecordingSink()
    with capture_logs() as logs:
        async with running(tmp_path, sink, config(command_timeout_s=0.5), virtual=net) as driver:
            dev = by_native(sink, GENERIC)
            with anyio.fail_after(30):
                while not any(e["event"] == "zigbee.limits_unread" for e in logs):
                    vlock.battery(0.5 + 0.01 * (len(lost) % 2))  # heard: a battery report
                    await asyncio.sleep(0.1)
            assert len(lost) == zigbee_lock.LIMITS_READS
            await reconnect(driver, DriverState.READY)
            for n in range(5):  # heard, well after the last backoff
                vlock.battery(0.3 + 0.01 * n)
                await asyncio.sleep(0.3)
            await driver.execute(dev, Unlock())  # the lock adopted after the reconnect answers
            assert len(lost) == zigbee_lock.LIMITS_READS
            assert not sink.devices[dev].codes.slots_known
