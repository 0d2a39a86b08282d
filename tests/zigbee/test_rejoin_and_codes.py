"""A lock that rejoins is configured again; code and bolt commands complete only on the lock's
own word: a user status the lock does not report, a late programming event, a saved bolt state
that is already the target."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from drivers.zigbee import ZigbeeDriver
from drivers.zigbee import lock as zigbee_lock
from drivers.zigbee.virtual.lock import VirtualLock
from drivers.zigbee.virtual.radio import VirtualNetwork
from drivers.zigbee.zigpy_api import DoorLock, foundation, zdo_t
from gatewayd.driver import Simulation, ZigbeeConfig
from gatewayd.model import (
    ActionTimeout,
    ClearCode,
    CodeNotConfirmed,
    DeviceError,
    EventName,
    Lock,
    PinCode,
    SetCode,
    Unlock,
)
from tests.zigbee.conftest import (
    AnnouncingSink,
    binds,
    config,
    drop,
    eventually,
    reads,
    running,
    settled_events,
    zcl,
    zdo,
)
from tests.zigbee.test_odd_reports import GENERIC, YALE, HistorySink, by_native, virtual

pytestmark = pytest.mark.stack

NOT_SUPPORTED = 0xFF  # user status: the lock does not report it
BOUND = {0x0001, 0x0009, 0x0101}  # power configuration, alarms, door lock
BASIC, SW_BUILD_ID = 0x0000, 0x4000


# ------------------------------------------------------------------ clear_code, status 0xFF


@pytest.mark.parametrize("ieee", [GENERIC, YALE], ids=["zcl", "masking"])
@pytest.mark.parametrize(
    "code", [b"", b"****"], ids=["empty-code", "masked-code-then-programming-event"]
)
async def test_a_clear_is_confirmed_by_a_lock_that_reports_no_user_status(
    tmp_path: Path, ieee: str, code: bytes
) -> None:
    """A lock that answers get_pin_code with user status 0xFF (Not_Supported) and an empty code
    has cleared the slot; with a masked code, its PINCodeDeleted event confirms it. Before, any
    status but Available failed the clear ("the slot still holds a code") though it was done."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, ieee), virtual(driver, ieee)
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1357")))
        vlock.odd_readback = (NOT_SUPPORTED, code)
        mark = len(sink.events)
        await driver.execute(dev, ClearCode(slot_id=3))
        assert 3 not in vlock.mem.pins
        events = await settled_events(sink, mark, 1)
        assert events == [(EventName.CODE_REMOVED, "remote")]


@pytest.mark.parametrize("ieee", [GENERIC, YALE], ids=["zcl", "masking"])
async def test_a_clear_read_back_as_digits_under_status_0xff_is_not_confirmed(
    tmp_path: Path, ieee: str
) -> None:
    """Digits read back under user status 0xFF: the slot still holds a code."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, ieee), virtual(driver, ieee)
        vlock.set_fault("drop_code")  # the lock answers success but keeps the code
        vlock.mem.pins[3] = "1357"
        vlock.odd_readback = (NOT_SUPPORTED, b"1357")
        with pytest.raises(CodeNotConfirmed):
            await driver.execute(dev, ClearCode(slot_id=3))


# ------------------------------------------------------------------ set_code, the same code again


async def test_a_masking_lock_given_the_code_it_holds_again_reports_no_change(
    tmp_path: Path,
) -> None:
    """The Yale profile masks its read-back, so the slot cannot show which code it holds. A
    code we wrote and saw confirmed, sent again, is written again and is no change to report,
    until something says the slot changed: here a code stored at the keypad. The same set is
    then a change again, reported. Before, every repeat was reported as a new code."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, YALE), virtual(driver, YALE)
        assert vlock.profile.masked_readback
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1357")))
        await settled_events(sink, 0)
        mark = len(sink.events)

        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1357")))
        assert await settled_events(sink, mark) == []

        vlock.program_at_keypad(3, "2468")
        await sink.wait_event(dev, EventName.CODE_SET, after=mark)
        mark = len(sink.events)
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1357")))
        assert vlock.mem.pins[3] == "1357"
        assert await settled_events(sink, mark, 1) == [(EventName.CODE_SET, "remote")]


@pytest.mark.parametrize("ieee", [GENERIC, YALE], ids=["zcl", "masking"])
async def test_a_code_set_again_after_the_lock_left_and_came_back_is_reported(
    tmp_path: Path, ieee: str
) -> None:
    """While a lock is off the network nothing it does is heard: a set of the code we wrote
    before is reported again on a lock that masks codes; one that reads codes back shows it."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, ieee), virtual(driver, ieee)
        await driver.execute(dev, SetCode(slot_id=4, code=PinCode("8642")))
        await settled_events(sink, 0)
        await driver.simulate(dev, Simulation.OFFLINE, {})
        await sink.wait_for(lambda: sink.devices[dev].properties.online is False)
        await driver.simulate(dev, Simulation.ONLINE, {})
        await sink.wait_for(lambda: sink.devices[dev].properties.online is True)
        await settled_events(sink, 0)
        mark = len(sink.events)

        await driver.execute(dev, SetCode(slot_id=4, code=PinCode("8642")))

        expected = [(EventName.CODE_SET, "remote")] if vlock.profile.masked_readback else []
        assert await settled_events(sink, mark, len(expected)) == expected


# ------------------------------------------------------------------ set_code, late event


async def test_a_masked_code_confirmed_after_report_wait_is_completed(tmp_path: Path) -> None:
    """A lock that masks its read-back confirms a code with its programming event, which may
    come after report_wait_s (0.5 s here): the action waits for it up to command_timeout_s
    (2 s) and completes, with one `remote` report. Before, it failed with CodeNotConfirmed
    after report_wait_s, and the late event went up as a `code set on device`, method rf."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, YALE), virtual(driver, YALE)
        assert vlock.profile.masked_readback
        vlock.programming_delay_s = 1.0
        mark = len(sink.events)
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1357")))
        assert vlock.mem.pins[3] == "1357"
        await asyncio.sleep(1.0)  # the lock's programming event of the set is due
        events = await settled_events(sink, mark, 1)
        assert events == [(EventName.CODE_SET, "remote")]


# ------------------------------------------------------------------ a bolt already there


def _silent_motor(vlock: VirtualLock, then: Any = None) -> None:
    """The lock takes lock/unlock commands but sends nothing itself (`then` after 0.3 s)."""

    def move(target: Any, source: Any, code: Any, user: int, tsn: int | None = None) -> None:
        if then is not None:
            asyncio.get_running_loop().call_later(0.3, then)

    vlock._move = move  # type: ignore[method-assign]


async def test_a_lock_whose_saved_state_is_stale_fails_on_a_jam(tmp_path: Path) -> None:
    """The bolt was turned by hand and its report lost, so the driver still holds `locked`;
    told to lock, the motor jams. The action waits for the lock's word and fails with the jam.
    Before, it completed at once with a `remote` report that the jam then contradicted."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        assert sink.devices[dev].properties.locked is True
        vlock.mem.lock_state = 2  # unlocked by hand, not reported
        _silent_motor(vlock, then=vlock.jam)
        mark = len(sink.events)
        with pytest.raises(DeviceError, match="jammed"):
            await driver.execute(dev, Lock())
        events = await settled_events(sink, mark, 1)
        assert events == [(EventName.DOOR_JAMMED, None)]


async def test_a_lock_already_locked_completes_on_the_lock_s_word(tmp_path: Path) -> None:
    """Already locked, told to lock: completed on the lock's report, or, from a lock that says
    nothing, on a read of its bolt after report_wait_s."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        assert sink.devices[dev].properties.locked is True
        mark = len(sink.events)
        await driver.execute(dev, Lock())
        _silent_motor(vlock)
        await driver.execute(dev, Lock())
        events = await settled_events(sink, mark, 2)
        assert events == [(EventName.DOOR_LOCKED, "remote")] * 2


# ------------------------------------------------------------------ rejoins


@pytest.mark.parametrize("new_address", [False, True], ids=["same-address", "new-address"])
@pytest.mark.parametrize("ieee", [GENERIC, YALE], ids=["zcl", "yale"])
async def test_a_lock_that_rejoins_is_bound_and_configured_again(
    tmp_path: Path, ieee: str, new_address: bool
) -> None:
    """A lock reset or re-paired leaves, loses its bindings and joins again (at its old network
    address, of which zigpy tells nothing, or at a new one, which zigpy interviews again): it
    is online, bound and reporting again, so a hand turn and a keypad unlock reach the cloud.
    Before, it stayed unbound for good (silent), and at its old address offline too."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, ieee), virtual(driver, ieee)
        assert vlock.mem.bound >= BOUND
        vlock.leave()
        await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED)
        assert not vlock.mem.bound
        if new_address:
            vlock.mem.nwk = 0x2345
        await driver.pair(30)
        await eventually(lambda: vlock.mem.bound >= BOUND)
        await sink.wait_for(lambda: sink.devices[dev].properties.online is True, timeout=5)
        await asyncio.sleep(0.5)  # the configuration's last request and the read after it
        mark = len(sink.events)
        await driver.execute(dev, Unlock())
        await driver.simulate(dev, Simulation.MANUAL_LOCK, {})
        await sink.wait_event(dev, EventName.DOOR_LOCKED, after=mark)
        await driver.simulate(dev, Simulation.KEYPAD_UNLOCK, {"slot_id": 4})
        await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark + 2)
        events = [(e.event_name, e.details.get("method")) for e in sink.events[mark:]]
        assert events == [
            (EventName.DOOR_UNLOCKED, "remote"),
            (EventName.DOOR_LOCKED, "manual"),
            (EventName.DOOR_UNLOCKED, "pin_code"),
        ]
        assert len(sink.devices) == 2  # the same device, not a new one


async def test_a_bolt_report_heard_before_the_lock_leaves_goes_up_before_its_disconnect(
    tmp_path: Path,
) -> None:
    """The lock reports its bolt, and its operation event (the method) does not come; the lock
    then leaves (a reset) within the merge window. The report goes up as it is (method
    unknown), before the lock's `device disconnected`, as it was heard before it. Before, it
    went up after the disconnect, once the merge window had run out: the cloud heard of a bolt
    moving at a lock it had been told was gone."""
    sink = HistorySink()
    async with running(tmp_path, sink, config(event_merge_s=1.0)) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        lock = driver._locks[dev]
        mark = len(sink.events)
        vlock.mem.lock_state = int(DoorLock.LockState.Unlocked)  # turned, its event lost
        vlock.report(DoorLock.cluster_id, [0x0000])
        await eventually(lambda: lock._pending is not None)
        vlock.leave()
        await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED, after=mark)
        events = await settled_events(sink, mark, 2)
        assert events == [
            (EventName.DOOR_UNLOCKED, "unknown"),
            (EventName.DEVICE_DISCONNECTED, None),
        ]


async def test_a_lock_that_lost_its_bindings_is_bound_again_after_a_restart(
    tmp_path: Path,
) -> None:
    """A lock that lost its bindings before this run (re-paired under an older version, or a
    configuration that failed) is bound and configured again after a restart."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        vlock.mem.bound.clear()
        assert driver.virtual is not None
        driver.virtual.save()
    async with running(tmp_path, sink) as driver:
        vlock = virtual(driver, GENERIC)
        await eventually(lambda: vlock.mem.bound >= BOUND)
        mark = len(sink.events)
        await driver.simulate(dev, Simulation.KEYPAD_UNLOCK, {"slot_id": 4})
        event = await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
        assert event.details == {"method": "pin_code", "slot_id": 4}


async def test_a_configuration_that_fails_is_tried_again_when_the_lock_is_next_heard(
    tmp_path: Path,
) -> None:
    """The configuration of a rejoined lock fails (no answer): it is tried again, not at once
    (its answers would start it over and over), but when the lock is heard after
    command_timeout_s (2 s here), here by its Device_annce."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        lock = driver._locks[dev]
        configure, calls = lock.configure, []

        async def failing_once() -> None:
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise ActionTimeout("the lock did not answer")
            await configure()

        lock.configure = failing_once  # type: ignore[method-assign]
        vlock.leave()
        await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED)
        await driver.pair(30)
        await eventually(lambda: len(calls) == 1)
        assert driver.virtual is not None
        driver.virtual.announce(vlock)  # heard within 2 s of the failure: not yet
        await asyncio.sleep(0.3)
        assert len(calls) == 1
        await asyncio.sleep(calls[0] + 2.0 - time.monotonic())
        driver.virtual.announce(vlock)
        await eventually(lambda: vlock.mem.bound >= BOUND)
        assert len(calls) == 2


@pytest.mark.parametrize("lost", ["bind", "reporting"])
async def test_a_lock_whose_setup_after_joining_fails_is_configured_when_next_heard(
    tmp_path: Path, lost: str
) -> None:
    """A lock joins, and its binds (or its Door Lock reporting request) go unanswered: asleep,
    a lost frame. It is configured again once it answers, with no restart: its keypad unlock
    reaches the cloud. Before, the failure was only logged (device_setup_failed) and nothing
    tried again: the lock stayed unbound, every door event lost until the next restart."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    reporting = zcl(DoorLock.cluster_id, foundation.GeneralCommand.Configure_Reporting)
    setup = drop(vlock, binds() if lost == "bind" else reporting)
    requests = setup if lost == "reporting" else drop(vlock, reporting, times=0)
    sink = HistorySink()
    async with running(tmp_path, sink, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        taken = len(requests.heard)  # Door Lock reporting requests
        setup.stop()  # heard by the availability pings it answers all along
        await eventually(
            lambda: vlock.mem.bound >= BOUND and len(requests.heard) > taken, timeout=10
        )
        await asyncio.sleep(0.5)  # the configuration's last request and the read after it
        mark = len(sink.events)
        await driver.simulate(dev, Simulation.KEYPAD_UNLOCK, {"slot_id": 4})
        event = await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
        assert event.details == {"method": "pin_code", "slot_id": 4}


async def test_a_lock_whose_binds_fail_after_joining_is_read_all_the_same(
    tmp_path: Path,
) -> None:
    """A lock joins and its binds go unanswered (a lost frame), but it answers the reads: it is
    announced with its bolt, battery, firmware and slot count, not as unknown until it is next
    heard and configured (the firmware and slots stayed unknown even then, until a restart)."""
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    drop(vlock, binds())  # every bind is lost
    sink = AnnouncingSink()
    async with running(tmp_path, sink, virtual=net):
        dev = by_native(sink, GENERIC)
        announced = next(d for d in sink.added if d.id == dev)
        assert vlock.mem.bound == set()
        assert announced.properties.locked is not None
        assert announced.properties.battery_level is not None
        assert announced.properties.firmware is not None
        assert announced.codes.slots_known
        assert announced.codes.max_slot == 29


def retries(lock: Any) -> list[asyncio.TimerHandle]:
    """The configuration retries the event loop holds for `lock`, not cancelled."""
    scheduled = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    return [h for h in scheduled if not h.cancelled() and h._callback == lock._retry_now]


async def test_a_lock_whose_setup_failed_is_configured_again_before_it_is_next_heard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock joins and its binds go unanswered, then it answers again but says nothing on
    its own (unbound, it sends no reports) and, under the default availability_s (3600 s),
    is not pinged for half an hour: it is configured again on a timer (first after
    CONFIGURE_RETRY_S, 0.5 s here, 30 s by default), and its keypad unlock reaches the cloud.
    Before, it was tried again only when heard: its door events lost for up to ~1.5 h."""
    monkeypatch.setattr(zigbee_lock, "CONFIGURE_RETRY_S", 0.5, raising=False)
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    lost = drop(vlock, binds())
    sink = HistorySink()
    default = ZigbeeConfig()
    async with running(
        tmp_path, sink, config(availability_s=default.availability_s), virtual=net
    ) as driver:
        dev = by_native(sink, GENERIC)
        assert not vlock.mem.bound
        lost.stop()
        await eventually(lambda: vlock.mem.bound >= BOUND, timeout=10)
        await asyncio.sleep(0.5)  # the configuration's last request and the read after it
        mark = len(sink.events)
        await driver.simulate(dev, Simulation.KEYPAD_UNLOCK, {"slot_id": 4})
        event = await sink.wait_event(dev, EventName.DOOR_UNLOCKED, after=mark)
        assert event.details == {"method": "pin_code", "slot_id": 4}


async def test_a_lock_configured_later_has_its_unread_firmware_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock answers neither its binds nor its Basic cluster at first (lost frames): it is
    announced without firmware. Once it answers, the retry configures it, and the firmware
    its first read missed is read and shown. Before, only the bolt, door and battery were read
    again: the firmware stayed unknown until a restart."""
    monkeypatch.setattr(zigbee_lock, "CONFIGURE_RETRY_S", 0.5, raising=False)
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    # its binds, and a read of sw_build_id (the interview's reads of the Basic cluster are taken)
    lost = drop(vlock, binds(), reads(BASIC, SW_BUILD_ID))
    sink = HistorySink()
    default = ZigbeeConfig()
    async with running(
        tmp_path, sink, config(availability_s=default.availability_s), virtual=net
    ) as driver:
        dev = by_native(sink, GENERIC)
        assert sink.devices[dev].properties.firmware is None
        lost.stop()
        await eventually(lambda: vlock.mem.bound >= BOUND, timeout=10)
        await sink.wait_for(lambda: sink.devices[dev].properties.firmware is not None)
        assert driver._locks[dev].device().properties.firmware is not None


@pytest.mark.parametrize("end", ["leaves", "driver-stops"])
async def test_a_failed_setup_is_retried_one_timer_at_a_time_and_not_after_the_lock_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """A lock that never answers its binds, and is heard often (each hearing may start a try
    too, each failed try asks for the next): at most one retry is ever pending for it, and
    none once it has left (it is configured when it is back) or the driver has stopped."""
    monkeypatch.setattr(zigbee_lock, "CONFIGURE_RETRY_S", 0.5, raising=False)
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    bind_requests = drop(vlock, binds())
    sink = HistorySink()
    fast = config(availability_s=0, command_timeout_s=0.2)
    async with running(tmp_path, sink, fast, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        lock = driver._locks[dev]
        assert driver.virtual is not None
        for _ in range(25):
            driver.virtual.announce(vlock)
            await asyncio.sleep(0.1)
            assert len(retries(lock)) <= 1
        assert len(bind_requests.lost) >= 4  # tried again and again, each try a failure
        await eventually(lambda: bool(retries(lock)))  # not while a try is on its way
        if end == "leaves":
            vlock.leave()
            await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED)
        else:
            await driver.stop()
        assert retries(lock) == []


async def test_a_retry_due_during_an_interview_that_fails_is_tried_again_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock's setup failed (binds unanswered), then it joins at a new address and zigpy
    interviews it again; the retry falls due during the interview, which then fails (its node
    descriptor refused): the lock is configured all the same, by a later retry. Before, the
    retry due during the interview did nothing and set none: the lock stayed unbound, its
    door events lost, until it was next heard."""
    monkeypatch.setattr(zigbee_lock, "CONFIGURE_RETRY_S", 0.5, raising=False)
    net = VirtualNetwork(tmp_path / "zigbee.virtual.json")
    vlock = net.lock(GENERIC)
    lost = drop(vlock, binds())
    sink = HistorySink()
    default = ZigbeeConfig()
    slow = config(availability_s=default.availability_s, command_timeout_s=0.5)
    async with running(tmp_path, sink, slow, virtual=net) as driver:
        dev = by_native(sink, GENERIC)
        lock = driver._locks[dev]
        await eventually(lambda: bool(retries(lock)))
        due = retries(lock)[0]
        lost.stop()
        # answered by the test, when the retry has fallen due
        asked = drop(vlock, zdo(zdo_t.ZDOCmd.Node_Desc_req)).lost
        lock.zdev.node_desc = None  # so the interview asks for it
        vlock.mem.nwk = 0x2345
        assert driver.virtual is not None
        assert driver.virtual.app is not None
        driver.virtual.app.handle_join(nwk=vlock.nwk, ieee=vlock.ieee, parent_nwk=0x0000)
        await eventually(lambda: bool(asked))
        assert lock.zdev.initializing
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, due.when() - loop.time()) + 0.2)
        assert lock.zdev.initializing  # the retry fell due during the interview
        assert not vlock.mem.bound
        tsn = asked[0].data.serialize()[0]
        vlock._zdo_reply(
            zdo_t.ZDOCmd.Node_Desc_rsp,
            tsn,
            zdo_t.Status.NOT_SUPPORTED,
            vlock.nwk,
            vlock._node_desc(),
        )
        await eventually(lambda: not lock.zdev.initializing)
        await eventually(lambda: vlock.mem.bound >= BOUND, timeout=10)


async def test_a_late_event_of_a_failed_set_does_not_confirm_the_next_one(
    tmp_path: Path,
) -> None:
    """A masking lock confirms a code with its programming event; one that comes after
    command_timeout_s (2 s here) fails the set, though the lock stored the code. A next set of
    the slot that the lock does not store (here silently dropped) must not be confirmed by
    that late event of the first: the lock holds the first code, not the one reported set.
    The next set waits it out (at most OWN_ECHO_S), and it goes up as the first set done."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, YALE), virtual(driver, YALE)
        assert vlock.profile.masked_readback
        vlock.programming_delay_s = 2.5
        mark = len(sink.events)
        with pytest.raises(CodeNotConfirmed):
            await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1357")))
        assert vlock.mem.pins[3] == "1357"  # stored; its event is still to come
        # the dispatcher lets the lock's other actions go before a code change of the slot
        assert driver.hold_s(dev, SetCode(slot_id=3, code=PinCode("2468"))) > 0
        assert driver.hold_s(dev, ClearCode(slot_id=3)) > 0
        assert driver.hold_s(dev, ClearCode(slot_id=4)) == 0
        assert driver.hold_s(dev, Unlock()) == 0
        vlock.programming_delay_s = 0.0
        vlock.set_fault("drop_code")

        with pytest.raises(CodeNotConfirmed):
            await driver.execute(dev, SetCode(slot_id=3, code=PinCode("2468")))
        assert vlock.mem.pins[3] == "1357"
        # the next set waited the late event out; it went up as the first set carried out
        assert await settled_events(sink, mark, 1) == [(EventName.CODE_SET, "remote")]


async def test_a_clear_after_a_set_that_failed_waits_for_its_late_event(tmp_path: Path) -> None:
    """The late event of a failed set went up after the clear that followed it: the cloud's
    last word on the slot was `code set on device`, and the slot was empty."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, YALE), virtual(driver, YALE)
        vlock.programming_delay_s = 2.5
        mark = len(sink.events)
        with pytest.raises(CodeNotConfirmed):
            await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1357")))
        vlock.programming_delay_s = 0.0

        await driver.execute(dev, ClearCode(slot_id=3))

        assert 3 not in vlock.mem.pins
        assert await settled_events(sink, mark, 2) == [
            (EventName.CODE_SET, "remote"),
            (EventName.CODE_REMOVED, "remote"),
        ]


async def late_answer(driver: ZigbeeDriver, dev: str, vlock: VirtualLock) -> None:
    """The lock answers the set 2.5 s late, its programming event after the answer: the set
    fails `timeout` at command_timeout_s (2 s here)."""
    vlock.on_pin_set = lambda: setattr(vlock, "delay_s", 2.5)  # its read before, on time
    with pytest.raises(ActionTimeout):
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1357")))
    vlock.on_pin_set, vlock.delay_s = None, 0.0


async def cut_by_the_deadline(driver: ZigbeeDriver, dev: str, vlock: VirtualLock) -> None:
    """The action's deadline (the dispatcher's cancel scope) ends the set while it waits for
    the programming event, which the lock sends 2.5 s late."""
    vlock.programming_delay_s = 2.5
    with anyio.CancelScope() as scope:
        # due 0.5 s after the lock took the set, however slow the read before it
        vlock.on_pin_set = lambda: setattr(scope, "deadline", anyio.current_time() + 0.5)
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1357")))
    assert scope.cancelled_caught
    vlock.on_pin_set, vlock.programming_delay_s = None, 0.0


@pytest.mark.parametrize("first_set", [late_answer, cut_by_the_deadline])
async def test_a_set_that_ends_before_the_lock_s_word_does_not_confirm_the_next_one(
    tmp_path: Path, first_set: Any
) -> None:
    """A masking lock confirms a code only with its programming event. A set that ended before
    it (the lock's answer late, the action's deadline) may have been carried out: a next set of
    the slot that the lock drops must not be confirmed by that event, the lock holds the first
    code. Before, only a set that had waited command_timeout_s for the event was waited out;
    these completed the next set, reporting a code the lock does not hold."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, YALE), virtual(driver, YALE)
        assert vlock.profile.masked_readback
        mark = len(sink.events)
        await first_set(driver, dev, vlock)
        assert vlock.mem.pins[3] == "1357"  # stored; its event is still to come
        assert driver.hold_s(dev, SetCode(slot_id=3, code=PinCode("2468"))) > 0
        vlock.set_fault("drop_code")

        with pytest.raises(CodeNotConfirmed):
            await driver.execute(dev, SetCode(slot_id=3, code=PinCode("2468")))
        assert vlock.mem.pins[3] == "1357"
        # the next set waited the late event out; it went up as the first set carried out
        assert await settled_events(sink, mark, 1) == [(EventName.CODE_SET, "remote")]


def clear_answered_late(vlock: VirtualLock, late_s: float) -> None:
    """From now on the lock answers a clear_pin_code, and sends its programming event for it,
    `late_s` late; every other frame on time."""
    receive, clear = vlock.receive, DoorLock.ServerCommandDefs.clear_pin_code.id

    def hears(packet: Any) -> None:
        hdr = foundation.ZCLHeader.deserialize(packet.data.serialize())[0]
        clears = packet.cluster_id == DoorLock.cluster_id and packet.dst_ep != 0
        if clears and not hdr.frame_control.is_general and hdr.command_id == clear:
            vlock.delay_s = late_s
        try:
            receive(packet)
        finally:
            vlock.delay_s = 0.0

    vlock.receive = hears  # type: ignore[method-assign]


@pytest.mark.parametrize("ieee", [GENERIC, YALE], ids=["readable", "masking"])
async def test_a_clear_answered_late_goes_up_as_ours_when_the_lock_tells_it(
    tmp_path: Path, ieee: str
) -> None:
    """The lock answers a clear 2.5 s late, after command_timeout_s (2 s here): the action
    fails `timeout`, and the lock's programming event for the clear comes after. That event is
    the clear we sent, carried out: `code removed from device`, method `remote`, as a late
    set's. Before, it went up as a change someone else made over the air, method `rf`."""
    sink = HistorySink()
    async with running(tmp_path, sink) as driver:
        dev, vlock = by_native(sink, ieee), virtual(driver, ieee)
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("1357")))
        mark = len(sink.events)
        clear_answered_late(vlock, 2.5)
        with pytest.raises(ActionTimeout):
            await driver.execute(dev, ClearCode(slot_id=3))
        assert await settled_events(sink, mark, 1) == [(EventName.CODE_REMOVED, "remote")]
        assert 3 not in vlock.mem.pins


# ------------------------------------------------------------------ requests cut by a rejoin


def slow_request_in_flight(
    driver: ZigbeeDriver, dev: str, vlock: VirtualLock
) -> asyncio.Task[None]:
    """The lock answers 1 s late, and the driver's read of its bolt is on its way: zigpy sends
    one request at a time to a lock, so the next one waits in zigpy's queue meanwhile."""
    vlock.delay_s = 1.0
    return asyncio.ensure_future(driver._locks[dev].resync())


async def test_a_ping_cut_by_the_lock_s_announce_does_not_mark_it_offline(tmp_path: Path) -> None:
    """The lock announces itself (batteries changed, a router restarted) while an availability
    ping waits for its turn: zigpy fails the waiting request with a delivery error. The lock,
    which just spoke, stays online. Before, it was marked unreachable: `device disconnected`,
    then `device connected` at its next frame."""
    sink = HistorySink()
    async with running(tmp_path, sink, config(availability_s=0)) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        mark = len(sink.events)
        reading = slow_request_in_flight(driver, dev, vlock)
        pinging = asyncio.ensure_future(driver._ping(driver._locks[dev]))
        await asyncio.sleep(0.05)
        assert driver.virtual is not None
        driver.virtual.announce(vlock)
        await asyncio.gather(reading, pinging)
        assert await settled_events(sink, mark) == []
        assert all(d.properties.online for d in sink.updates if d.id == dev)


@pytest.mark.parametrize("action", [Unlock(), SetCode(slot_id=3, code=PinCode("1357"))])
async def test_an_action_queued_while_the_lock_rejoins_is_sent_again(
    tmp_path: Path, action: Unlock | SetCode
) -> None:
    """The lock rejoins while an action waits in zigpy's queue, and is heard joining three
    times (a real rejoin comes as the trust centre's join indication, then the lock's
    announces): zigpy fails the waiting request each time, unsent. The action is sent again
    and completes, once (an unlock moves the bolt once), and the lock is never shown offline.
    Before, it failed `device_offline` and the lock was marked unreachable."""
    sink = HistorySink()
    async with running(tmp_path, sink, config(availability_s=0)) as driver:
        dev, vlock = by_native(sink, GENERIC), virtual(driver, GENERIC)
        mark = len(sink.events)
        reading = slow_request_in_flight(driver, dev, vlock)
        acting = asyncio.ensure_future(driver.execute(dev, action))
        assert driver.virtual is not None
        for _ in range(3):
            await asyncio.sleep(0.25)
            driver.virtual.announce(vlock)
        await reading
        vlock.delay_s = 0.0
        await acting
        if isinstance(action, Unlock):
            assert vlock.bolt_commands == 1
            expected = [(EventName.DOOR_UNLOCKED, "remote")]
        else:
            assert vlock.mem.pins[3] == "1357"
            expected = [(EventName.CODE_SET, "remote")]
        assert await settled_events(sink, mark, 1) == expected
        assert all(d.properties.online for d in sink.updates if d.id == dev)
