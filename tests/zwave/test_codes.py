"""User codes on the mock locks: written, read back from the device, re-checked later.

"code set on device" / "code removed from device" answer a confirmed set_code / clear_code at
once; the later re-check (code_recheck_s) only reports a code the lock dropped since.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from drivers.zwave import ZWaveDriver
from drivers.zwave import driver as zwave_driver
from drivers.zwave.events import (
    AC_ALL_CODES_DELETED,
    AC_CODE_ADDED,
    AC_CODE_DUPLICATE,
    ACCESS_CONTROL,
)
from gatewayd.actions import Dispatcher, StatusUpdate
from gatewayd.driver import DriverContext, Simulation
from gatewayd.model import (
    ActionRequest,
    ActionTimeout,
    ClearCode,
    CodeNotConfirmed,
    DeviceNotFound,
    EventName,
    GatewayError,
    InvalidInput,
    PinCode,
    SetCode,
    utcnow,
)
from gatewayd.registry import Registry
from gatewayd.store import Store
from gatewayd.upstream import Upstream
from tests.contract.sink import RecordingSink
from tests.zwave.conftest import Tasks, driver_with, make_config, until
from tests.zwave.stack import ZWaveStack, native_id

pytestmark = pytest.mark.stack


async def test_set_code_is_read_back_and_rechecked_and_never_logged(
    zwave: tuple[ZWaveDriver, RecordingSink],
    zwave_stack: ZWaveStack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    caplog.set_level(logging.DEBUG)
    result = await driver.execute(dev, SetCode(slot_id=5, code=PinCode("0427")))
    assert result.details == {"slot_id": 5}
    assert 5 in zwave_stack.control(2, "state")["slots"]
    ev = await sink.wait_event(dev, "code set on device", timeout=5)  # type: ignore[arg-type]
    assert ev.details == {"slot_id": 5, "method": "remote"}
    assert "0427" not in caplog.text
    await driver.execute(dev, ClearCode(slot_id=5))
    assert 5 not in zwave_stack.control(2, "state")["slots"]
    ev = await sink.wait_event(dev, "code removed from device", timeout=5)  # type: ignore[arg-type]
    assert ev.details == {"slot_id": 5, "method": "remote"}


async def test_a_pin_is_in_no_log_line_even_with_zwave_js_server_logging_at_debug(
    zwave: tuple[ZWaveDriver, RecordingSink],
    zwave_stack: ZWaveStack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With every logger at DEBUG, zwave_js_server's too: the PIN goes out as a User Code Set
    argument and comes back in the read-back report and the User Code "value updated" event,
    where no key rule finds it. It is in no log line, stdlib or structlog, no error text and
    not in health, for a set that works and one the lock refuses."""
    driver, sink = zwave
    ok, refused = sink.ids[native_id(2)], sink.ids[native_id(3)]
    pin = "86420975"
    caplog.set_level(logging.DEBUG)
    for name in ("zwave_js_server", "aiohttp", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    assert logging.getLogger("zwave_js_server.model.node").isEnabledFor(logging.DEBUG)
    errors: list[str] = []
    with capture_logs() as structured:
        await driver.execute(ok, SetCode(slot_id=7, code=PinCode(pin)))
        await sink.wait_event(ok, "code set on device", timeout=5)  # type: ignore[arg-type]
        await driver.simulate(refused, Simulation.FAULT, {"kind": "refuse"})
        with pytest.raises(CodeNotConfirmed) as err:
            await driver.execute(refused, SetCode(slot_id=7, code=PinCode(pin)))
        errors.append(repr(err.value))
        await anyio.sleep(2.0)  # the set's re-check (code_recheck_s) has read the slot again
    assert 7 in zwave_stack.control(2, "state")["slots"]  # the PIN did go through the stack
    assert any(e["event"] == "zwave.code_set" for e in structured)  # structlog was captured
    lines = [r.getMessage() for r in caplog.records] + [caplog.text]
    lines += [repr(entry) for entry in structured] + errors + [repr(driver.health())]
    assert [line for line in lines if pin in line] == []


async def test_a_clear_right_after_a_set_is_not_reported_as_a_dropped_code(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    # The set's re-check is still pending when the slot is cleared: the clear supersedes it, so
    # the empty slot is "removed", never "dropped".
    driver, sink = zwave
    dev = sink.ids[native_id(3)]
    await driver.execute(dev, SetCode(slot_id=6, code=PinCode("31415")))
    await driver.execute(dev, ClearCode(slot_id=6))
    ev = await sink.wait_event(dev, "code removed from device", timeout=5)  # type: ignore[arg-type]
    assert ev.details == {"slot_id": 6, "method": "remote"}
    await anyio.sleep(2.0)  # past the set's re-check (code_recheck_s)
    assert sink.names(dev) == ["code set on device", "code removed from device"]


@pytest.mark.parametrize("second", ["set", "clear"])
async def test_a_recheck_read_overlapping_a_new_set_or_clear_reports_no_drop(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack, second: str
) -> None:
    """The set's re-check read the slot while a newer set or clear of it was on a slow mesh,
    and compared what it read with the old code: "code dropped by device" for a code just
    written (or just removed) on purpose."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await driver.execute(dev, SetCode(slot_id=5, code=PinCode("1111")))
    await anyio.sleep(1.2)  # the re-check (code_recheck_s 1.5) comes during the next command
    zwave_stack.control(2, "fault", kind="delay", delay_s=0.6)
    try:
        if second == "set":
            await driver.execute(dev, SetCode(slot_id=5, code=PinCode("2222")))
        else:
            await driver.execute(dev, ClearCode(slot_id=5))
    finally:
        zwave_stack.control(2, "fault", kind="none")
    await anyio.sleep(2.5)  # past the re-checks of both
    last = "code set on device" if second == "set" else "code removed from device"
    assert sink.names(dev)[-2:] == ["code set on device", last]
    assert "code dropped by device" not in sink.names(dev)


async def test_bad_slot_and_bad_length_are_refused_before_the_radio(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    with pytest.raises(InvalidInput) as slot_err:
        await driver.execute(dev, SetCode(slot_id=21, code=PinCode("1234")))
    assert "slot_id" in slot_err.value.validation_errors
    with pytest.raises(InvalidInput) as len_err:
        await driver.execute(dev, SetCode(slot_id=2, code=PinCode("123456789")))
    assert "123456789" not in str(len_err.value)
    assert zwave_stack.control(2, "state")["slots"] == []


async def test_a_lock_that_ignores_the_code_fails_with_code_not_confirmed(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(3)]
    await driver.simulate(dev, Simulation.FAULT, {"kind": "refuse"})
    with pytest.raises(CodeNotConfirmed) as err:
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("55667788")))
    assert "55667788" not in str(err.value)
    assert zwave_stack.control(3, "state")["slots"] == []


async def test_a_code_the_lock_drops_later_is_reported_dropped(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """The lock stores the code (read back: set, reported so), then loses it: the re-check
    reports it dropped."""
    driver, sink = zwave
    dev = sink.ids[native_id(3)]
    await driver.simulate(dev, Simulation.FAULT, {"kind": "drop_code", "delay_s": 0.5})
    await driver.execute(dev, SetCode(slot_id=4, code=PinCode("2468")))
    ev = await sink.wait_event(dev, "code dropped by device", timeout=5)  # type: ignore[arg-type]
    assert ev.details == {"slot_id": 4}
    assert sink.names(dev) == ["code set on device", "code dropped by device"]


async def test_masked_lock_is_confirmed_by_its_programming_notification(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(4)]  # Kwikset 916 mock: reports codes as ****
    await driver.execute(dev, SetCode(slot_id=2, code=PinCode("13579")))
    assert 2 in zwave_stack.control(4, "state")["slots"]
    await sink.wait_event(dev, "code set on device", timeout=5)  # type: ignore[arg-type]


async def test_a_masked_lock_confirming_our_own_clear_is_not_a_keypad_change(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """The Kwikset mock says "user code deleted" as it clears the slot we asked it to: that is
    the lock confirming our clear, reported once, never as a keypad change."""
    driver, sink = zwave
    dev = sink.ids[native_id(4)]
    await driver.execute(dev, SetCode(slot_id=2, code=PinCode("13579")))
    await anyio.sleep(2.5)  # past the set's re-check (code_recheck_s)
    mark = len(sink.events)
    await driver.execute(dev, ClearCode(slot_id=2))
    await anyio.sleep(2.5)  # the lock's notification and the clear's re-check are in
    after = [(e.event_name, e.details) for e in sink.events[mark:] if e.device_id == dev]
    assert after == [(EventName.CODE_REMOVED, {"slot_id": 2, "method": "remote"})]


async def test_a_masked_lock_given_the_code_it_holds_again_reports_no_change(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """The Kwikset mock reads codes back as ****, so the slot cannot show which code it holds.
    A code we wrote and saw confirmed, sent again, is written again and is no change to report,
    until something says the slot changed: here "user code added" from the keypad. The same
    set is then a change again, reported. Before, every repeat was reported as a new code."""
    driver, sink = zwave
    dev = sink.ids[native_id(4)]
    await driver.execute(dev, SetCode(slot_id=2, code=PinCode("13579")))
    await anyio.sleep(2.5)  # past the set's notification and re-check (code_recheck_s)
    mark = len(sink.events)

    await driver.execute(dev, SetCode(slot_id=2, code=PinCode("13579")))
    await anyio.sleep(1.0)  # the lock's notification of the write is in
    assert sink.code_events(dev, mark, "method") == []

    zwave_stack.control(4, "notify_raw", type=ACCESS_CONTROL, event=AC_CODE_ADDED, params=[2])
    await sink.wait_event(dev, EventName.CODE_SET, after=mark)
    assert sink.code_events(dev, mark, "method") == [("code set on device", "keypad")]
    mark = len(sink.events)
    await driver.execute(dev, SetCode(slot_id=2, code=PinCode("13579")))
    await anyio.sleep(1.0)
    assert sink.code_events(dev, mark, "method") == [("code set on device", "remote")]


async def test_set_and_clear_are_reported_when_confirmed_even_with_the_recheck_off(
    zwave_stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> None:
    """A confirmed set_code / clear_code is reported by the time the action completes, once,
    whether or not the later re-check is on (code_recheck_s = 0: off). Before, only the re-check
    sent these events: with it off a confirmed code never reached the cloud, and with the
    default it came 30 s late, or never when that read failed or the daemon restarted."""
    async with driver_with(zwave_stack, tmp_path, tasks, code_recheck_s=0) as (driver, sink):
        dev = sink.ids[native_id(2)]
        await driver.execute(dev, SetCode(slot_id=5, code=PinCode("0427")))
        assert 5 in zwave_stack.control(2, "state")["slots"]
        await driver.execute(dev, ClearCode(slot_id=5))
        assert 5 not in zwave_stack.control(2, "state")["slots"]
        await anyio.sleep(2.0)  # nothing more is due
        events = [(e.event_name, e.details) for e in sink.events if e.device_id == dev]
        assert events == [
            (EventName.CODE_SET, {"slot_id": 5, "method": "remote"}),
            (EventName.CODE_REMOVED, {"slot_id": 5, "method": "remote"}),
        ]


async def test_a_masked_lock_that_ignores_a_new_code_fails_with_code_not_confirmed(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """The Kwikset mock masks codes and its slot already holds one: it acknowledges a new code
    but keeps the old, reads back "****" and sends no "user code added". The lock answered
    every frame and did not confirm the code: code_not_confirmed, as on Zigbee. Before, this
    failed as a timeout, as if the lock had not answered."""
    driver, sink = zwave
    dev = sink.ids[native_id(4)]
    await driver.execute(dev, SetCode(slot_id=3, code=PinCode("13579")))
    await driver.simulate(dev, Simulation.FAULT, {"kind": "drop_code"})
    mark = len(sink.events)
    with anyio.fail_after(10), pytest.raises(CodeNotConfirmed) as err:
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("24680")))
    assert "24680" not in str(err.value)
    assert EventName.CODE_SET not in [e.event_name for e in sink.events[mark:]]


def _texts(err: GatewayError, caplog: pytest.LogCaptureFixture, structured: list[Any]) -> list[str]:
    """Everything a refusal shows: the exception, its upstream form, every log line."""
    lines = [str(err), repr(err), repr(err.to_dict()), caplog.text]
    return lines + [r.getMessage() for r in caplog.records] + [repr(e) for e in structured]


@pytest.mark.parametrize(
    ("node", "occupied"),
    [(2, False), (4, False), (4, True)],
    ids=["readable", "masked", "masked-over-an-old-code"],
)
async def test_a_code_another_slot_holds_fails_with_duplicate_code(
    zwave: tuple[ZWaveDriver, RecordingSink],
    zwave_stack: ZWaveStack,
    caplog: pytest.LogCaptureFixture,
    node: int,
    occupied: bool,
) -> None:
    """The lock refuses a PIN another of its slots holds and says so (Access Control 0x0F):
    duplicate_code, at once and without the PIN anywhere. Before, this was code_not_confirmed
    ("reads back a different code"), and over an old code on a masked lock only after waiting
    out code_confirm_s for a programming notification that never comes."""
    driver, sink = zwave
    dev = sink.ids[native_id(node)]
    pin = "80461357"
    caplog.set_level(logging.DEBUG)
    await driver.execute(dev, SetCode(slot_id=2, code=PinCode(pin)))
    if occupied:
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("2222")))
    mark = len(sink.events)
    with capture_logs() as structured, pytest.raises(GatewayError) as err:
        with anyio.fail_after(4):  # below code_confirm_s: the lock's answer ends the wait
            await driver.execute(dev, SetCode(slot_id=3, code=PinCode(pin)))
    assert err.value.to_dict()["type"] == "duplicate_code"
    assert "slot 3" in err.value.message
    assert zwave_stack.control(node, "state")["slots"] == ([2, 3] if occupied else [2])
    await anyio.sleep(0.5)  # a late notice of the refused code would be in
    assert [e.event_name for e in sink.events[mark:] if e.device_id == dev] == []
    assert [t for t in _texts(err.value, caplog, structured) if pin in t] == []


async def test_a_lock_that_drops_a_duplicate_without_a_word_says_the_slot_is_empty(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """A lock that refuses a duplicate silently leaves the slot empty: code_not_confirmed,
    saying the code was not stored, not that the lock holds a different one."""
    driver, sink = zwave
    dev = sink.ids[native_id(3)]
    zwave_stack.control(3, "duplicates", mode="silent")
    await driver.execute(dev, SetCode(slot_id=2, code=PinCode("5511")))
    with pytest.raises(GatewayError) as err:
        await driver.execute(dev, SetCode(slot_id=4, code=PinCode("5511")))
    assert err.value.to_dict()["type"] == "code_not_confirmed"
    assert "did not store" in err.value.message
    assert "5511" not in repr(err.value.to_dict())


async def test_the_same_code_again_in_its_own_slot_is_no_duplicate(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await driver.execute(dev, SetCode(slot_id=5, code=PinCode("7301")))
    result = await driver.execute(dev, SetCode(slot_id=5, code=PinCode("7301")))
    assert result.details == {"slot_id": 5}
    assert zwave_stack.control(2, "state")["slots"] == [5]


async def test_a_late_notice_of_a_clear_does_not_fail_the_next_set_of_the_slot(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """A masking lock says "user code deleted" for our clear after answering its read-back
    (here 0.8 s late), while the next set_code of the slot (a guest's code replaced: clear,
    then set) waits for its "user code added". That late notice is the echo of the clear, not
    the lock's answer to the set. Before, it was taken as the lock refusing the new code: the
    set failed code_not_confirmed though the lock stored it, and its own notice then went up
    as a keypad change."""
    driver, sink = zwave
    dev = sink.ids[native_id(4)]  # Kwikset 916 mock: reports codes as ****
    await driver.execute(dev, SetCode(slot_id=2, code=PinCode("13579")))
    zwave_stack.control(4, "code_notify", delay_s=0.8)
    await driver.execute(dev, ClearCode(slot_id=2))
    mark = len(sink.events)

    with anyio.fail_after(4):
        result = await driver.execute(dev, SetCode(slot_id=2, code=PinCode("24680")))

    assert result.details == {"slot_id": 2}
    assert zwave_stack.control(4, "state")["slots"] == [2]
    await anyio.sleep(1.5)  # both late notices are in
    assert sink.code_events(dev, mark, "method") == [("code set on device", "remote")]


async def test_a_late_duplicate_notice_of_a_failed_set_does_not_fail_the_next_set_of_the_slot(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """A masking lock refuses a PIN another slot holds and says why only after the set has
    given up waiting for its reason (REFUSAL_WAIT_S): the set failed code_not_confirmed. That
    late "duplicate code" notice comes while the next set of the slot, a new code the lock
    stores, waits for its "user code added". It is the first set's reason, not the answer to
    the second. Before, it failed the second set duplicate_code though the lock stored its code,
    and the lock's "user code added" then went up as a keypad change."""
    driver, sink = zwave
    dev = sink.ids[native_id(4)]  # Kwikset 916 mock: reports codes as ****
    await driver.execute(dev, SetCode(slot_id=2, code=PinCode("80461357")))
    zwave_stack.control(4, "duplicates", mode="silent")  # its notice is sent by hand, late
    with pytest.raises(CodeNotConfirmed):
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("80461357")))
    zwave_stack.control(4, "code_notify", delay_s=1.0)
    mark = len(sink.events)

    setting = asyncio.ensure_future(driver.execute(dev, SetCode(slot_id=3, code=PinCode("2468"))))
    await until(lambda: zwave_stack.control(4, "state")["slots"] == [2, 3])
    assert not setting.done()  # it waits for the lock's "user code added"
    zwave_stack.control(4, "notify_raw", type=ACCESS_CONTROL, event=AC_CODE_DUPLICATE, params=[3])
    with anyio.fail_after(10):
        result = await setting

    assert result.details == {"slot_id": 3}
    await anyio.sleep(1.5)  # the lock's notice of the second set is in
    assert sink.code_events(dev, mark, "method") == [("code set on device", "remote")]


@pytest.mark.parametrize("meanwhile", ["out_of_reach", "all_codes_deleted"])
async def test_a_code_set_again_after_the_lock_may_have_changed_it_is_reported(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack, meanwhile: str
) -> None:
    """On a lock that masks codes, a set of the code we saw confirmed in the slot is no change
    to report, unless the slot may have changed since:
    - out_of_reach: while zwave-js marks the lock dead nothing it does is heard (a code
      changed at its keypad leaves no trace), as on Zigbee when a lock went silent;
    - all_codes_deleted: Access Control 0x0C (a lock's programming button) emptied every slot.
    Before, the lock was still taken to hold our code: the set went unreported."""
    driver, sink = zwave
    dev = sink.ids[native_id(4)]  # Kwikset 916 mock: reports codes as ****
    await driver.execute(dev, SetCode(slot_id=2, code=PinCode("8642")))
    await anyio.sleep(2.0)  # past the set's notification and re-check (code_recheck_s)
    if meanwhile == "out_of_reach":
        await driver.simulate(dev, Simulation.OFFLINE, {})
        await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED, timeout=15)
        await driver.simulate(dev, Simulation.ONLINE, {})
        await sink.wait_event(dev, EventName.DEVICE_CONNECTED, timeout=15)
    else:
        mark = len(sink.events)
        zwave_stack.control(4, "notify_raw", type=ACCESS_CONTROL, event=AC_ALL_CODES_DELETED)
        await sink.wait_event(dev, EventName.CODE_REMOVED, timeout=30, after=mark)
    mark = len(sink.events)

    await driver.execute(dev, SetCode(slot_id=2, code=PinCode("8642")))

    await anyio.sleep(1.0)  # the lock's notification of the write is in
    assert sink.code_events(dev, mark, "method") == [("code set on device", "remote")]


async def test_all_codes_deleted_at_the_lock_is_a_code_removed_event(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Access Control 0x0C (a lock's programming button emptied every slot) was only logged:
    the cloud went on listing codes the lock no longer held. It is one `code removed from
    device` naming all codes, as on Zigbee."""
    _driver, sink = zwave
    dev = sink.ids[native_id(4)]
    mark = len(sink.events)
    zwave_stack.control(4, "notify_raw", type=ACCESS_CONTROL, event=AC_ALL_CODES_DELETED)
    await sink.wait_event(dev, EventName.CODE_REMOVED, timeout=10, after=mark)
    await anyio.sleep(0.3)  # no second one
    removed = [e for e in sink.events[mark:] if e.device_id == dev]
    assert [(e.event_name, e.details) for e in removed] == [
        (EventName.CODE_REMOVED, {"all_codes": True, "method": "keypad"})
    ]


@pytest.mark.parametrize("then", ["set_dropped", "clear"])
async def test_a_late_notice_of_a_failed_set_is_heard_before_the_next_change_of_the_slot(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack, then: str
) -> None:
    """A masking lock confirms a code with "user code added"; one that comes after
    code_confirm_s (5 s) fails the set, though the lock stored the code. The next change of the
    slot waits that late notice out (at most OWN_ECHO_S), and it goes up as the first set
    carried out (it was a keypad change):
    - set_dropped: a next set the lock does not store was confirmed by the late notice of the
      first, and reported set: the lock held the first code;
    - clear: the late notice went up after the clear's report, as the slot's last word."""
    driver, sink = zwave
    dev = sink.ids[native_id(4)]  # Kwikset 916 mock: reports codes as ****
    zwave_stack.control(4, "code_notify", delay_s=6.0)
    mark = len(sink.events)
    with pytest.raises(CodeNotConfirmed):
        await driver.execute(dev, SetCode(slot_id=2, code=PinCode("13579")))
    assert zwave_stack.control(4, "state")["slots"] == [2]  # stored; its notice is to come
    zwave_stack.control(4, "code_notify", delay_s=0.02)

    if then == "set_dropped":
        await driver.simulate(dev, Simulation.FAULT, {"kind": "drop_code"})
        with anyio.fail_after(10), pytest.raises(CodeNotConfirmed):
            await driver.execute(dev, SetCode(slot_id=2, code=PinCode("24680")))
        expected = [("code set on device", "remote")]
    else:
        with anyio.fail_after(10):
            await driver.execute(dev, ClearCode(slot_id=2))
        assert zwave_stack.control(4, "state")["slots"] == []
        expected = [("code set on device", "remote"), ("code removed from device", "remote")]
    await anyio.sleep(0.5)  # a notice of the last command is in
    assert sink.code_events(dev, mark, "method") == expected


async def test_a_lock_removed_while_a_set_waits_for_its_word_ends_the_set_at_once(
    tmp_path: Path, tasks: Tasks
) -> None:
    """A masking lock stored the code and reads back "****"; before its "user code added"
    comes, it goes out of reach and is removed from the network (remove failed node): the set
    ends then, device_not_found. Before, it waited out code_confirm_s and failed as a lock that
    did not confirm the code, of a device that no longer existed."""
    stack = ZWaveStack(tmp_path / "stack", locks=3)  # of its own: a removed node stays removed
    try:
        await anyio.to_thread.run_sync(stack.start)
        async with driver_with(stack, tmp_path, tasks, code_confirm_s=60.0) as (driver, sink):
            dev = sink.ids[native_id(4)]  # Kwikset 916 mock: reports codes as ****
            stack.control(4, "code_notify", delay_s=120.0)  # its word would come after the wait
            setting = asyncio.ensure_future(
                driver.execute(dev, SetCode(slot_id=2, code=PinCode("13579")))
            )
            await until(lambda: stack.control(4, "state")["slots"] == [2])
            await anyio.sleep(1.0)  # the read-back is in: the set waits for the lock's word
            assert not setting.done()
            await driver.simulate(dev, Simulation.OFFLINE, {})
            await sink.wait_event(dev, EventName.DEVICE_DISCONNECTED, timeout=15)
            await driver.unpair(10, dev)
            await sink.wait_for(lambda: dev in sink.removed, timeout=30)
            await asyncio.wait({setting})
            with pytest.raises(DeviceNotFound) as err:
                setting.result()
            assert "removed" in err.value.message
    finally:
        stack.stop()


async def test_an_unlock_does_not_wait_behind_a_set_that_waits_out_a_late_notice(
    zwave_stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> None:
    """After a set the lock did not confirm in time, the next set of the slot waits out its
    late notice (up to OWN_ECHO_S, 10 s), in the dispatcher's one-at-a-time queue of the lock:
    an unlock pressed meanwhile waited behind it. Now the held set lets it go first, and is
    still confirmed by its own notice, not the first set's."""
    zwave_stack.reset()
    store = Store.open(tmp_path / "gatewayd.db")
    registry = Registry(store, Upstream(store))
    driver = ZWaveDriver(
        make_config(zwave_stack, code_confirm_s=1.0), DriverContext(tmp_path, tasks.spawn)
    )
    updates: list[StatusUpdate] = []
    dispatcher = Dispatcher(store, registry, updates.append)

    def submit(action: str, inputs: dict[str, Any]) -> str:
        now = utcnow()
        request = ActionRequest(
            id=str(uuid.uuid4()),
            entity_type="Device",
            entity_id=dev,
            action=action,
            inputs=inputs,
            created_at=now,
            deadline=now + timedelta(seconds=30),
        )
        assert dispatcher.submit(request)
        return request.id

    def done() -> dict[str, StatusUpdate]:
        return {u.action_request_id: u for u in updates if u.status.terminal}

    await driver.start(registry.attach(driver))
    try:
        await until(lambda: len(driver.devices()) == zwave_stack.locks, 30)
        dev = store.device_id(driver.name, native_id(4))  # Kwikset 916 mock: reports codes as ****
        async with anyio.create_task_group() as tg:
            dispatcher.bind(tg)
            zwave_stack.control(4, "code_notify", delay_s=2.5)  # after code_confirm_s
            failed = submit("set_code", {"slot_id": 2, "code": "13579"})
            await until(lambda: failed in done(), 15)
            assert done()[failed].error["type"] == "code_not_confirmed"  # type: ignore[index]
            zwave_stack.control(4, "code_notify", delay_s=0.02)
            again = submit("set_code", {"slot_id": 2, "code": "24680"})
            unlock = submit("unlock", {})
            await until(lambda: {again, unlock} <= done().keys(), 30)
            tg.cancel_scope.cancel()
    finally:
        await driver.stop()
        store.close()
    order = [u.action_request_id for u in updates if u.status.terminal]
    assert order == [failed, unlock, again]
    assert {str(done()[a].status) for a in (again, unlock)} == {"completed"}


async def _masked_code_change(
    driver: ZWaveDriver, sink: RecordingSink, change: str
) -> tuple[str, SetCode | ClearCode, int]:
    """On the masking lock (node 4, Kwikset 916 mock: reports codes as ****): the device, the
    `change` to make in slot 2 ("set", or "clear" of a code set first and re-checked), and the
    count of events before it."""
    dev = sink.ids[native_id(4)]
    action: SetCode | ClearCode = SetCode(slot_id=2, code=PinCode("13579"))
    if change == "clear":
        await driver.execute(dev, action)
        await anyio.sleep(2.5)  # past the set's re-check (code_recheck_s)
        action = ClearCode(slot_id=2)
    return dev, action, len(sink.events)


@pytest.mark.parametrize("change", ["set", "clear"])
async def test_a_code_change_the_lock_confirms_while_its_read_back_is_lost_is_reported(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack, change: str
) -> None:
    """A masking lock carries out a User Code Set (of a code, or a clear) and says "user code
    added" / "deleted", and the read-back that follows is lost: the action fails
    (action_timeout), but the code is on the lock (or gone from it), and one event says so,
    method `remote`. Before, the word was taken while the read-back waited (by the set's
    waiter, or as the clear's echo) and nothing went up: the cloud's list of the lock's codes
    stayed wrong."""
    driver, sink = zwave
    dev, action, mark = await _masked_code_change(driver, sink, change)
    zwave_stack.control(4, "fault", kind="no_readback")
    with pytest.raises(ActionTimeout):
        await driver.execute(dev, action)
    zwave_stack.control(4, "fault", kind="none")
    assert (2 in zwave_stack.control(4, "state")["slots"]) is (change == "set")
    await anyio.sleep(1.0)  # a late or repeated event would be in by now
    name = EventName.CODE_SET if change == "set" else EventName.CODE_REMOVED
    assert sink.code_events(dev, mark, "method") == [(str(name), "remote")]


@pytest.mark.parametrize("end", ["timeout", "deadline"])
@pytest.mark.parametrize("change", ["set", "clear"])
async def test_a_code_change_the_lock_carries_out_too_late_is_ours_when_its_word_comes(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack, change: str, end: str
) -> None:
    """A masking lock carries out a User Code Set (of a code, or a clear) only after zwave-js
    gave up on its read-back (node timeout): the change fails (action_timeout), and the lock's
    "user code added" / "deleted" that follows is that change carried out: reported once,
    method `remote`. Before, a late "added" went up as a change at the keypad, and a late
    "deleted" was taken for the echo of a clear that worked: nothing went up, and the cloud,
    told the clear failed, kept a code the lock no longer held. The same when the action's
    deadline, not the node timeout, ends the change (the dispatcher cancels the driver's
    call): before, that late word went up as `keypad`."""
    driver, sink = zwave
    dev, action, mark = await _masked_code_change(driver, sink, change)
    # the Set and its read-back go unanswered; the lock carries the Set out 3 s later
    zwave_stack.control(4, "fault", kind="no_reply", delay_s=3.0)
    if end == "timeout":
        with pytest.raises(ActionTimeout):
            await driver.execute(dev, action)
    else:
        with anyio.move_on_after(1.0) as deadline:  # as the dispatcher's scope does
            await driver.execute(dev, action)
        assert deadline.cancelled_caught
    name = EventName.CODE_SET if change == "set" else EventName.CODE_REMOVED
    await sink.wait_event(dev, name, timeout=15, after=mark)
    await anyio.sleep(1.0)  # a repeat would be in by now
    assert sink.code_events(dev, mark, "method") == [(str(name), "remote")]


async def test_a_set_whose_read_back_shows_no_code_reports_the_lock_saying_added(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """A masking lock stores the code and says "user code added", but answers the read-back
    that follows as if the slot were still empty (it commits the code after answering): the
    set fails (code_not_confirmed), and the lock's word, heard while the set waited for a
    reason, goes up once, method `remote`. Before, the set's waiter took it and nothing went
    up: the cloud, told the set failed, did not list a code the lock held."""
    driver, sink = zwave
    dev, clear, _ = await _masked_code_change(driver, sink, "clear")
    await driver.execute(dev, clear)  # the slot emptied, for a new guest's code
    await anyio.sleep(0.5)  # the lock's word of the clear is in
    mark = len(sink.events)
    zwave_stack.control(4, "code_notify", delay_s=0.5)  # after the read-back, within 1 s
    zwave_stack.control(4, "readback_raw", status=0, code=[])
    with pytest.raises(CodeNotConfirmed):
        await driver.execute(dev, SetCode(slot_id=2, code=PinCode("24680")))
    assert 2 in zwave_stack.control(4, "state")["slots"]
    await anyio.sleep(1.0)  # a late or repeated event would be in by now
    assert sink.code_events(dev, mark, "method") == [("code set on device", "remote")]


@pytest.mark.parametrize("word", ["during", "after"])
async def test_a_clear_whose_read_back_still_shows_the_code_reports_the_lock_saying_deleted(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack, word: str
) -> None:
    """A masking lock clears the slot and says "user code deleted", but answers the read-back
    that follows as if the code were still there (it commits the clear after answering): the
    clear fails (code_not_confirmed), and the lock's word, heard during the read-back or after
    the failure, goes up once, method `remote`. Before, it was taken as the echo of the clear
    (which stayed open after the failure) and nothing went up: the cloud, told the clear
    failed, kept listing a code the lock no longer held."""
    driver, sink = zwave
    dev, action, mark = await _masked_code_change(driver, sink, "clear")
    if word == "after":
        zwave_stack.control(4, "code_notify", delay_s=0.8)
    zwave_stack.control(4, "readback_raw", status=1, code=list(b"****"))
    with pytest.raises(CodeNotConfirmed):
        await driver.execute(dev, action)
    assert 2 not in zwave_stack.control(4, "state")["slots"]
    await anyio.sleep(1.5)  # the lock's word is in, and a repeat would be
    assert sink.code_events(dev, mark, "method") == [("code removed from device", "remote")]


async def test_sets_a_lock_refused_without_a_word_leave_no_entry_each_behind(
    zwave: tuple[ZWaveDriver, RecordingSink],
    zwave_stack: ZWaveStack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A set that fails before the lock says why leaves room, OWN_ECHO_S long, for its late
    "duplicate code" notice. A lock that never sends one (here it ignores the code) must not
    keep one entry per failed set for as long as the daemon runs: only a duplicate notice
    pruned them."""
    monkeypatch.setattr(zwave_driver, "OWN_ECHO_S", 0.3)  # a late notice's window, shorter
    driver, sink = zwave
    dev = sink.ids[native_id(3)]
    for _ in range(3):
        await driver.simulate(dev, Simulation.FAULT, {"kind": "refuse"})
        with pytest.raises(CodeNotConfirmed):
            await driver.execute(dev, SetCode(slot_id=3, code=PinCode("55667788")))
        await anyio.sleep(0.4)  # past its window
    assert len(driver._locks[3].late_refusals) <= 1
