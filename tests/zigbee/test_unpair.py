"""unpair_devices {device_id}: the lock is sent the ZDO leave itself, then removed; one that did
not confirm it left is remembered (by IEEE, in a file next to zigpy's database), is never adopted
again when it speaks, and is sent the leave again; unless it joins while pairing is permitted.

Before, zigpy's `remove` reported the lock removed at once and tried the leave in the background,
swallowing its failure: an offline lock kept the network key and its codes, and when it spoke
again zigpy took it back and the gateway adopted it as a new device, its old codes still opening
the door (`door unlocked {method: pin_code}`)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drivers.zigbee.driver import ZigbeeDriver
from drivers.zigbee.removed import RemovedLocks
from drivers.zigbee.virtual.lock import VirtualLock
from drivers.zigbee.virtual.radio import VirtualNetwork
from drivers.zigbee.zigpy_api import zdo_t
from gatewayd.driver import Simulation
from gatewayd.model import EventName, PinCode, SetCode
from tests.zigbee.conftest import AnnouncingSink, binds, drop, eventually, running, zdo
from tests.zigbee.test_odd_reports import (
    DOOR_LOCK,
    GENERIC,
    JOINING,
    YALE,
    by_native,
    virtual,
)

pytestmark = pytest.mark.stack

PIN = "86429753"
SETTLE_S = 1.5  # an interview and an adoption take well under this on the virtual radio


def listed(tmp_path: Path) -> list[str]:
    """The IEEEs the driver keeps as removed without a confirmed leave (its file, as persisted)."""
    path = tmp_path / "zigbee.removed.json"
    return list(json.loads(path.read_text())["ieee"]) if path.exists() else []


def leave_requests(vlock: VirtualLock, *, obey: bool = True) -> list[Any]:
    """The ZDO leave requests that reach the lock; with obey=False it ignores them, as a
    lock that does not answer one, or a sleeping lock whose parent dropped it, would."""
    requests = drop(vlock, zdo(zdo_t.ZDOCmd.Mgmt_Leave_req), times=0 if obey else None)
    return requests.heard if obey else requests.lost


Logs = list[MutableMapping[str, Any]]


def logged(logs: Logs, event: str) -> Logs:
    return [entry for entry in logs if entry["event"] == event]


async def unpair_offline(
    driver: ZigbeeDriver, sink: AnnouncingSink, ieee: str
) -> tuple[str, VirtualLock, Logs]:
    """Give the lock a code, take it out of range, unpair it: the action completes."""
    dev, vlock = by_native(sink, ieee), virtual(driver, ieee)
    await driver.execute(dev, SetCode(slot_id=5, code=PinCode(PIN)))
    await driver.simulate(dev, Simulation.OFFLINE, {})
    with capture_logs() as logs:
        await driver.unpair(10, dev)
    assert dev in sink.removed
    assert dev not in sink.devices
    assert vlock.mem.joined
    assert vlock.mem.pins[5] == PIN
    # zigpy's own leave, in the background, fails too; then zigpy has forgotten the lock
    await eventually(lambda: ieee not in {str(k) for k in driver._app.devices})
    return dev, vlock, logs


def adopted(sink: AnnouncingSink, ieee: str) -> list[str]:
    return [d.id for d in sink.added if d.native_id == ieee]


@pytest.mark.parametrize("late", [False, True], ids=["answers", "says-it-left-before-answering"])
async def test_an_online_lock_unpaired_confirms_the_leave_and_is_removed(
    tmp_path: Path, late: bool
) -> None:
    """The lock is sent the leave before zigpy forgets it, and answers (or says it left, its
    answer later than command_timeout_s, 2 s here): device_left, removed, not listed. Before,
    the leave went in the background after the removal, never confirmed."""
    sink = AnnouncingSink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        requests = leave_requests(vlock)
        if late:
            vlock.set_fault("delay", 3.0)  # its answer would come after it left: never
        with capture_logs() as logs:
            await driver.unpair(10, dev)
        assert requests, "the leave was sent before unpair returned"
        assert [e["ieee"] for e in logged(logs, "zigbee.device_left")] == [GENERIC]
        assert not logged(logs, "zigbee.removed_without_leave")
        assert dev in sink.removed
        assert dev not in sink.devices
        await eventually(lambda: not vlock.mem.joined)
        assert listed(tmp_path) == []
        await asyncio.sleep(SETTLE_S)
        assert adopted(sink, GENERIC) == [dev]  # once, at start-up


@pytest.mark.parametrize("obeys", [True, False], ids=["leaves", "ignores-the-leave"])
async def test_an_offline_lock_unpaired_is_not_adopted_again_when_it_comes_back(
    tmp_path: Path, obeys: bool
) -> None:
    """An offline lock: unpair completes, the lock is listed with a warning. When it comes back
    (its Device_annce) it is not adopted (no device, its keypad unlock goes nowhere) and is sent
    the leave again: one that obeys is dropped from the list; one that ignores it stays listed.
    Before, it was adopted as a new device and its old code's unlock went up as `pin_code`."""
    sink = AnnouncingSink()
    async with running(tmp_path, sink) as driver:
        dev, vlock, logs = await unpair_offline(driver, sink, YALE)
        [warning] = logged(logs, "zigbee.removed_without_leave")
        assert warning["ieee"] == YALE
        assert warning["log_level"] == "warning"
        assert "codes still work" in warning["effect"]
        assert "leave again" in warning["effect"]
        assert PIN not in repr(logs)
        assert listed(tmp_path) == [YALE]
        mark, devices = len(sink.events), len(sink.added)

        requests = leave_requests(vlock, obey=obeys)
        vlock.online = True
        assert driver.virtual is not None
        with capture_logs() as heard:
            driver.virtual.announce(vlock)
            await eventually(lambda: len(requests) >= 1)
            await asyncio.sleep(SETTLE_S if obeys else 2.0 + SETTLE_S)  # 2 s: no answer
            vlock.keypad_unlock(5)
            await asyncio.sleep(SETTLE_S)
        assert [e["ieee"] for e in logged(heard, "zigbee.removed_lock_heard")] == [YALE]
        assert len(sink.added) == devices
        assert adopted(sink, YALE) == [dev]
        assert sink.events[mark:] == []
        assert [d.native_id for d in sink.devices.values()] == [GENERIC]
        assert vlock.mem.joined is not obeys
        assert listed(tmp_path) == ([] if obeys else [YALE])
        assert PIN not in repr(heard)


async def test_the_list_survives_a_restart(tmp_path: Path) -> None:
    """Listed, then the daemon restarts: the lock that speaks again is still refused and sent the
    leave. Before, it was adopted again."""
    sink = AnnouncingSink()
    async with running(tmp_path, sink) as driver:
        await unpair_offline(driver, sink, YALE)
    assert listed(tmp_path) == [YALE]
    sink = AnnouncingSink()
    async with running(tmp_path, sink, wait_locks=1) as driver:
        vlock = virtual(driver, YALE)
        requests = leave_requests(vlock)
        assert driver.virtual is not None
        driver.virtual.announce(vlock)  # back in range, heard again
        await eventually(lambda: not vlock.mem.joined)
        vlock.online = True
        vlock.keypad_unlock(5)  # it left: nothing to send
        await asyncio.sleep(SETTLE_S)
        assert requests  # ours, and zigpy's own that its remove sends after it
        assert adopted(sink, YALE) == []
        assert [d.native_id for d in sink.devices.values()] == [GENERIC]
        assert sink.events == []
        assert listed(tmp_path) == []


@pytest.mark.parametrize("reset", [False, True], ids=["rejoins", "reset-then-joins"])
async def test_a_listed_lock_that_joins_while_pairing_is_adopted(
    tmp_path: Path, reset: bool
) -> None:
    """The user pairs the removed lock again on purpose (a pair window is open): it is dropped
    from the list and adopted, and its events reach the cloud."""
    sink = AnnouncingSink()
    async with running(tmp_path, sink) as driver:
        _, vlock, _ = await unpair_offline(driver, sink, YALE)
        assert listed(tmp_path) == [YALE]
        vlock.online = True
        if reset:
            vlock.leave()  # a factory reset: it joins while joining is permitted
        await driver.pair(30)
        if not reset:
            assert driver.virtual is not None
            driver.virtual.announce(vlock)
        await sink.wait_for(lambda: any(d.native_id == YALE for d in sink.devices.values()))
        assert listed(tmp_path) == []
        dev = by_native(sink, YALE)
        await asyncio.sleep(0.5)  # its configuration, then the read after it
        mark = len(sink.events)
        vlock.keypad_unlock(5)
        event = await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
        assert event.details == {"method": "pin_code", "slot_id": 5}


async def test_a_damaged_list_is_a_warning_and_an_empty_list(tmp_path: Path) -> None:
    """A damaged file (a power cut, a bad card): the driver starts, warns, adopts its locks."""
    (tmp_path / "zigbee.removed.json").write_text('{"ieee": ["00:0d:6f:00:0a:90:00:01", 7')
    sink = AnnouncingSink()
    with capture_logs() as logs:
        async with running(tmp_path, sink) as driver:
            assert {d.native_id for d in sink.devices.values()} == {GENERIC, YALE}
            assert len(driver.removed) == 0
    assert [e["log_level"] for e in logged(logs, "zigbee.removed_list_damaged")] == ["warning"]


def test_the_list_is_written_atomically_and_privately(tmp_path: Path) -> None:
    path = tmp_path / "zigbee.removed.json"
    removed = RemovedLocks(path)
    removed.add(YALE)
    removed.add(GENERIC)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not path.with_name(path.name + ".tmp").exists()
    assert list(RemovedLocks(path)) == sorted([GENERIC, YALE])
    assert removed.discard(YALE)
    assert not removed.discard(YALE)
    assert list(RemovedLocks(path)) == [GENERIC]
    for bad in ("[]", '{"ieee": ["not an address"]}', "\xff"):
        path.write_text(bad)
        assert len(RemovedLocks(path)) == 0


async def test_a_lock_removed_while_it_is_being_set_up_is_not_announced(tmp_path: Path) -> None:
    """A new lock joins and is slow to answer its setup (its binds go unanswered); it leaves
    in the leave window meanwhile and is removed: the cloud never hears of it, and the driver
    holds nothing of it. Before, its adoption went on to device_added after device_removed: a
    ghost device shown until the next restart."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json", joining=1)
    newcomer = net.lock(JOINING)
    # zigpy binds Poll Control in its interview; the Door Lock's is the driver's, never
    # answered: it waits command_timeout_s (2 s)
    held = drop(newcomer, binds(DOOR_LOCK)).lost
    sink = AnnouncingSink()
    async with running(tmp_path, sink, virtual=net) as driver:
        await driver.pair(30)
        await eventually(lambda: bool(held))  # its adoption awaits the bind's answer
        dev = sink.device_id(JOINING)
        await driver.unpair(30, None)  # a lock that leaves now is removed
        with capture_logs() as logs:
            newcomer.leave()
            await sink.wait_for(lambda: dev in sink.removed)
            await asyncio.sleep(SETTLE_S)
        assert adopted(sink, JOINING) == []
        assert dev not in sink.devices
        assert dev not in driver._locks
        assert JOINING not in driver._by_ieee
    # its setup's request failed for the removal, not for the radio, which stayed up
    setup = [e for e in logs if str(e["event"]).startswith("zigbee.device_setup")]
    assert [(e["event"], e.get("reason")) for e in setup] == [
        ("zigbee.device_setup_cut", "removed")
    ]
    assert not [e for e in logs if "RadioLost" in str(e.get("error"))]
