"""Odd reports from real Z-Wave locks, sent by the mock locks through zwave-js and zwave-server:
never a value out of range upstream, never a false event, never a lost later event."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs
from zwave_js_server.const import CommandClass

from drivers.zwave import ZWaveDriver
from drivers.zwave.events import Notice, parse_notification, parse_state_value
from gatewayd.driver import Simulation
from gatewayd.model import (
    ActionName,
    CodeNotConfirmed,
    GatewayError,
    Method,
    PinCode,
    SetCode,
    Unlock,
)
from tests.contract.sink import RecordingSink
from tests.zwave.conftest import Tasks, own_stack, started_read, until
from tests.zwave.stack import ZWaveStack, native_id

pytestmark = pytest.mark.stack

ACCESS_CONTROL, HOME_SECURITY, POWER_MANAGEMENT = 6, 7, 8


async def _quiet(seconds: float = 1.5) -> None:
    await anyio.sleep(seconds)  # past the merge window: a late or false event would be here


def _events(sink: RecordingSink, dev: str, mark: int) -> list[tuple[str, dict[str, Any]]]:
    return [(str(e.event_name), dict(e.details)) for e in sink.events[mark:] if e.device_id == dev]


async def test_a_door_notification_with_a_parameter_is_one_event(
    zwave: tuple[ZWaveDriver, RecordingSink],
    zwave_stack: ZWaveStack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Access Control 0x16 (door open) with its parameter 1 (tilted): zwave-js makes it the
    "Door state" value only (no notification event), and that is one `door opened`, with no
    error in zwave-js-server-python's listeners."""
    _, sink = zwave
    dev = sink.ids[native_id(2)]
    mark = len(sink.events)
    caplog.set_level(logging.ERROR, logger="zwave_js_server")
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x16, params=[1])
    await sink.wait_event(dev, "door opened", after=mark)  # type: ignore[arg-type]
    assert sink.devices[dev].properties.door_open is True
    zwave_stack.control(2, "door_close")
    await sink.wait_event(dev, "door closed", after=mark)  # type: ignore[arg-type]
    await _quiet(0.5)
    assert sink.names(dev)[-2:] == ["door opened", "door closed"]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("zwave_js_server")] == []


async def test_a_door_lock_mode_that_is_unknown_or_not_in_the_enum(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """currentMode 0xFE (unknown: bolt neither retracted nor thrown) or a value outside the
    Door Lock mode enum: locked None, no event; the mode as before again: no event. Before,
    0xFE left `locked` true, and 0x42 was taken for unsecured: a false `door unlocked`."""
    driver, sink = zwave
    dev = sink.ids[native_id(3)]
    assert sink.devices[dev].properties.locked is True
    await started_read(driver)
    mark = len(sink.events)
    for mode in (0xFE, 0x42):
        zwave_stack.control(3, "mode_raw", mode=mode)
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is None)
        await _quiet(0.5)
        zwave_stack.control(3, "mode_raw", mode=0xFF)
        await sink.wait_for(lambda: sink.devices[dev].properties.locked is True)
    await _quiet()
    assert _events(sink, dev, mark) == []
    await driver.simulate(dev, Simulation.MANUAL_UNLOCK, {})
    ev = await sink.wait_event(dev, "door unlocked", after=mark)  # type: ignore[arg-type]
    assert ev.details == {"method": "manual"}


async def test_user_ids_and_events_the_lock_does_not_have(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """A keypad event naming user 255 on a lock with slots 1..20 names no slot; a code added in
    slot 255 is not reported; no parameters, or bytes that are no CC, leave the bolt event;
    Access Control / Home Security events we do not know say nothing. Before, slot 255 went up
    as a `pin_code` unlock and a `code set on device`."""
    _, sink = zwave
    dev = sink.ids[native_id(2)]
    mark = len(sink.events)
    raw = [
        (ACCESS_CONTROL, 0x06, [0xFF]),  # keypad unlock, user 255
        (ACCESS_CONTROL, 0x0E, [0xFF]),  # code added, slot 255
        (ACCESS_CONTROL, 0x05, [0x01, 0x02]),  # keypad lock, bytes that are no CC
        (ACCESS_CONTROL, 0x3C, [0x03]),  # not an Access Control event we know
        (ACCESS_CONTROL, 0xFE, None),  # "unknown event"
        (HOME_SECURITY, 0x2A, None),
        (ACCESS_CONTROL, 0x06, None),  # keypad unlock without a user
    ]
    for type_, event, params in raw:
        zwave_stack.control(2, "notify_raw", type=type_, event=event, params=params)
    await sink.wait_for(lambda: len(_events(sink, dev, mark)) >= 3)
    await _quiet()
    assert _events(sink, dev, mark) == [
        ("door unlocked", {"method": "keypad"}),
        ("door locked", {"method": "keypad"}),
        ("door unlocked", {"method": "keypad"}),
    ]
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x0E, params=[4])
    ev = await sink.wait_event(dev, "code set on device", after=mark)  # type: ignore[arg-type]
    assert ev.details == {"slot_id": 4, "method": "keypad"}


async def test_a_battery_report_of_0xff_and_user_codes_that_are_bytes(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Battery level 0xFF ("battery low"): zwave-js 15 stores neither `level` nor an `isLow`,
    so nothing reaches the driver; the level shown stays in 0..1 and later reports count. A User
    Code report whose code is not text (zwave-js: a Buffer) changes nothing and raises nothing."""
    driver, sink = zwave
    dev = sink.ids[native_id(3)]
    mark = len(sink.events)
    zwave_stack.control(3, "battery_raw", level=0xFF)
    zwave_stack.control(3, "user_code_raw", slot_id=3, status=1, code=[0xFF, 0xFE, 0x01, 0x02])
    await driver.simulate(dev, Simulation.BATTERY, {"level": 0.3})
    await sink.wait_for(lambda: sink.devices[dev].properties.battery_level == pytest.approx(0.3))
    await _quiet(0.5)
    assert _events(sink, dev, mark) == []
    await driver.simulate(dev, Simulation.BATTERY, {"level": 0.1})
    await sink.wait_event(dev, "low battery", after=mark)  # type: ignore[arg-type]


async def test_a_code_read_back_as_bytes_is_not_confirmed_and_the_pin_is_not_logged(
    zwave: tuple[ZWaveDriver, RecordingSink],
    zwave_stack: ZWaveStack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    pin = "86420975"
    caplog.set_level(logging.DEBUG)
    zwave_stack.control(2, "readback_raw", status=1, code=[0xFF, 0xFE, 0x01, 0x02])
    with capture_logs() as structured, pytest.raises(CodeNotConfirmed) as err:
        await driver.execute(dev, SetCode(slot_id=6, code=PinCode(pin)))
    texts = [str(err.value), repr(err.value.to_dict()), caplog.text, repr(structured)]
    assert [t for t in texts if pin in t] == []
    await driver.execute(dev, SetCode(slot_id=6, code=PinCode(pin)))  # the next read-back counts


async def test_charge_battery_soon_or_now_is_low_battery(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Power Management 0x0E / 0x0F ("charge battery soon / now"): what zwave-js's device files
    make of the low and critical battery alarms (types 167, 168) of Yale and Kwikset locks. One
    `low battery`. Before, nothing: a lock running flat was never reported."""
    _, sink = zwave
    for node, event in ((2, 0x0E), (3, 0x0F)):
        dev = sink.ids[native_id(node)]
        mark = len(sink.events)
        zwave_stack.control(node, "notify_raw", type=POWER_MANAGEMENT, event=event)
        await sink.wait_event(dev, "low battery", after=mark)  # type: ignore[arg-type]
        # "battery is fully charged": the state value as it was, for the tests after this one
        zwave_stack.control(node, "notify_raw", type=POWER_MANAGEMENT, event=0x0D)
        await _quiet(0.5)
        assert [name for name, _ in _events(sink, dev, mark)] == ["low battery"]


async def test_a_lock_that_did_not_fully_lock_is_jammed(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Access Control 0x07 / 0x08 / 0x0A (manual, RF, auto lock "not fully locked"; Kwikset's
    alarm types 23 and 26 through zwave-js's mapping): the bolt stuck part way, one `door jammed`
    each. Before, nothing: a door that never locked went unreported."""
    _, sink = zwave
    dev = sink.ids[native_id(2)]
    for event in (0x07, 0x08, 0x0A):
        mark = len(sink.events)
        zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=event)
        await sink.wait_event(dev, "door jammed", after=mark)  # type: ignore[arg-type]
        assert sink.devices[dev].properties.jammed is True
        zwave_stack.control(2, "manual_lock")  # a bolt operation ends the jam
        await sink.wait_for(lambda: sink.devices[dev].properties.jammed is False)


async def test_too_many_wrong_codes_is_a_keypad_invalid_code(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Access Control 0x13 ("user access code exceeds code limit"; Yale's alarm type 161 through
    zwave-js's mapping, Keymaster's "bad code entered") and 0x10 ("keypad temporary disabled", a
    state value; Schlage's alarm type 96): a `keypad invalid code` each. Before, nothing: someone
    trying codes at the door until the keypad locked them out went unreported."""
    _, sink = zwave
    dev = sink.ids[native_id(2)]
    for event in (0x13, 0x10):
        mark = len(sink.events)
        zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=event)
        ev = await sink.wait_event(dev, "keypad invalid code", after=mark)  # type: ignore[arg-type]
        assert ev.details == {"method": "keypad"}
    # the keypad enabled again (the state idle): nothing more
    mark = len(sink.events)
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x00, params=[0x10])
    await _quiet(0.5)
    assert _events(sink, dev, mark) == []


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"userId": 3}, Notice("bolt", locked=False, method=Method.PIN_CODE, slot_id=3)),
        ({"userId": "3"}, Notice("bolt", locked=False, method=Method.KEYPAD)),
        ({"userId": None}, Notice("bolt", locked=False, method=Method.KEYPAD)),
        ({"userId": 3.0}, Notice("bolt", locked=False, method=Method.KEYPAD)),
        ({"userId": True}, Notice("bolt", locked=False, method=Method.KEYPAD)),
        ({"userId": -1}, Notice("bolt", locked=False, method=Method.KEYPAD)),
        ({}, Notice("bolt", locked=False, method=Method.KEYPAD)),
        (1, Notice("bolt", locked=False, method=Method.KEYPAD)),
        (None, Notice("bolt", locked=False, method=Method.KEYPAD)),
        ({"type": "Buffer", "data": [1, 2]}, Notice("bolt", locked=False, method=Method.KEYPAD)),
    ],
)
def test_keypad_unlock_parameters_of_any_shape(parameters: Any, expected: Notice) -> None:
    """Notification parameters as zwave-js-server may hand them over: a user id only when it is
    a positive int; anything else is a keypad unlock that names no slot, never an exception."""
    assert parse_notification(ACCESS_CONTROL, 6, parameters) == expected


@pytest.mark.parametrize("value", [None, "11", 11.0, -1, 1 << 40, [11], {"value": 11}, True])
def test_state_values_of_any_shape_mean_nothing(value: Any) -> None:
    assert parse_state_value("Access Control", "Lock state", value) is None
    assert parse_state_value("Access Control", "Door state", value) is None


async def test_a_lock_whose_user_code_cc_reports_no_users_has_no_code_actions(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """User Code CC with 0 supported users: zwave-js keeps the count internal, and the driver
    asks for it, so the lock is published without code actions. A set_code that came anyway
    fails with a typed error that quotes no PIN, and the bolt still works."""
    monkeypatch.setenv("ZWAVE_MOCK_NUM_USERS", "0")
    async with own_stack(tmp_path, tasks, locks=1) as (_, driver, sink):
        device = sink.devices[sink.ids[native_id(2)]]
        assert ActionName.SET_CODE not in device.actions
        assert ActionName.CLEAR_CODE not in device.actions
        with pytest.raises(GatewayError) as failed:
            await driver.execute(device.id, SetCode(slot_id=1, code=PinCode("480613")))
        assert "480613" not in str(failed.value)
        assert "480613" not in str(failed.value.to_dict())
        await driver.execute(device.id, Unlock())  # the bolt still works


async def test_a_lock_whose_user_count_is_not_read_shows_no_slot_maximum_and_tries_any_slot(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zwave-js has not read a lock's count of users (it never answered Users Number Get: the
    interview skipped it). Its slots are not known: the cloud is shown no slot maximum and
    keeps the code actions, and a code in slot 12 goes to the lock, which has 20 slots and
    stores it. Before, a 1..11 guess was shown as the lock's slots, and slot 12 and up refused
    as invalid input on a lock that may have them."""
    from gatewayd.upstream import device_dict

    monkeypatch.setenv("ZWAVE_MOCK_NUM_USERS", "unread")
    async with own_stack(tmp_path, tasks, locks=1) as (stack, driver, sink):
        device = sink.devices[sink.ids[native_id(2)]]
        assert device_dict(device)["properties"]["code_slots"] == {"min": 1, "max": None}
        assert ActionName.SET_CODE in device.actions
        await driver.execute(device.id, SetCode(slot_id=12, code=PinCode("480613")))
        assert 12 in stack.control(2, "state")["slots"]


async def test_one_slot_zwave_js_heard_of_is_not_taken_for_the_locks_slot_count(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zwave-js has not read a lock's count of users, then hears of one slot (an unsolicited
    User Code report of slot 12; a partial read makes such values too). One slot tells no
    count: the lock still shows no slot maximum, and a code in slot 15 of its 20 goes to the
    lock. Before, slot 12 was published as the lock's last slot (`max_slot` 12, known), and the
    set of slot 15 was refused as invalid input."""
    from gatewayd.upstream import device_dict

    monkeypatch.setenv("ZWAVE_MOCK_NUM_USERS", "unread")
    async with own_stack(tmp_path, tasks, locks=1) as (stack, driver, sink):
        dev = sink.ids[native_id(2)]
        stack.control(2, "user_code_raw", slot_id=12, status=1, code=list(b"2468"))
        await until(lambda: _holds_slot(driver, 2, 12))  # the report reached the driver
        await driver.execute(dev, SetCode(slot_id=15, code=PinCode("480613")))
        assert 15 in stack.control(2, "state")["slots"]
        # asked again on the report, zwave-js still has no count: none is shown
        assert device_dict(sink.devices[dev])["properties"]["code_slots"]["max"] is None
        assert not sink.devices[dev].codes.slots_known


def _holds_slot(driver: ZWaveDriver, node_id: int, slot: int) -> bool:
    """Whether the driver's copy of zwave-js's values holds a user code of `slot`."""
    assert driver._client is not None
    assert driver._client.driver is not None
    node = driver._client.driver.controller.nodes[node_id]
    return any(
        v.command_class == CommandClass.USER_CODE
        and v.property_name == "userCode"
        and v.property_key == slot
        and v.value is not None
        for v in node.values.values()
    )


async def test_an_alarm_v1_lock_reports_its_door_events(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock of Notification CC version 1 that zwave-js has no alarm mapping for says only
    alarmType / alarmLevel (Kwikset, Yale; alarmLevel the user slot): zwave-js stores them as two
    values and sends no notification. Each known type is its event, as Keymaster reads them; an
    unknown type says nothing. Before, all of them were lost. A lock whose device file maps its
    alarms (Yale YRD226 ZW2) gets the notification as well as the values: one event each."""
    monkeypatch.setenv("ZWAVE_MOCK_NOTIFICATION_V1", "1")
    async with own_stack(tmp_path, tasks, locks=2) as (stack, _, sink):
        dev = sink.ids[native_id(2)]
        mark = len(sink.events)
        alarms = [(19, 3), (21, 1), (9, 0), (130, 1), (161, 1), (112, 4), (33, 4), (167, 15)]
        for alarm_type, level in alarms:
            stack.control(2, "alarm_raw", type=alarm_type, level=level)
        await sink.wait_for(lambda: len(_events(sink, dev, mark)) >= 7)
        await _quiet(0.5)
        assert _events(sink, dev, mark) == [
            ("door unlocked", {"method": "pin_code", "slot_id": 3}),
            ("door locked", {"method": "manual"}),
            ("door jammed", {}),
            ("keypad invalid code", {"method": "keypad"}),
            ("code set on device", {"slot_id": 4, "method": "keypad"}),
            ("code removed from device", {"slot_id": 4, "method": "keypad"}),
            ("low battery", {"battery_level": 0.9}),
        ]
        mapped = sink.ids[native_id(3)]
        mark = len(sink.events)
        for alarm_type, level in ((19, 3), (9, 0), (167, 15)):
            stack.control(3, "alarm_raw", type=alarm_type, level=level)
        await sink.wait_for(lambda: len(_events(sink, mapped, mark)) >= 3)
        await _quiet()
        assert _events(sink, mapped, mark) == [
            ("door unlocked", {"method": "pin_code", "slot_id": 3}),
            ("door jammed", {}),
            ("low battery", {"battery_level": 0.9}),
        ]


async def test_the_alarm_fields_of_a_later_version_lock_are_no_second_event(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """A lock of Notification CC version 2 or later that fills in alarmType / alarmLevel too
    (Yale does, in the report that carries the notification): the notification reports it, the
    alarm values alone are no event."""
    _, sink = zwave
    dev = sink.ids[native_id(2)]
    mark = len(sink.events)
    for alarm_type, level in ((9, 0), (19, 3)):
        zwave_stack.control(2, "alarm_raw", type=alarm_type, level=level)
    await _quiet()
    assert _events(sink, dev, mark) == []


async def test_a_credential_lock_or_unlock_is_one_event(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Access Control 0x24 / 0x23 (Notification v9 "credential unlock/close, lock/open
    operation": a PIN, card or fingerprint checked by the lock's User Credential CC), each
    followed by the lock's Door Lock report: one event each, `keypad` (its user is no User Code
    slot, so none is named). zwave-js infers no bolt state from them. Before, both were dropped
    and the report alone went up a second later as method `unknown`."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await started_read(driver)
    mark = len(sink.events)
    usage = [0x00, 0x03, 0x01, 0x00, 0x03]  # credential usage: user 3, a PIN code, in slot 3
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x24, params=usage)
    zwave_stack.control(2, "mode_raw", mode=0x00)
    await sink.wait_event(dev, "door unlocked", after=mark)  # type: ignore[arg-type]
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x23)
    zwave_stack.control(2, "mode_raw", mode=0xFF)
    await sink.wait_event(dev, "door locked", after=mark)  # type: ignore[arg-type]
    await _quiet()
    assert _events(sink, dev, mark) == [
        ("door unlocked", {"method": "keypad"}),
        ("door locked", {"method": "keypad"}),
    ]


async def test_an_alarm_v1_keypad_unlock_16_and_a_code_outside_its_schedule_162(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alarm CC v1 type 16 ("keypad unlock", as 19; alarmLevel the user slot) and 162 ("lock
    code attempt outside of schedule"), as Keymaster reads Kwikset and Yale locks: a `pin_code`
    unlock with its slot, and a `keypad invalid code` with the slot of the refused code (none
    for a slot the lock does not have), as the Zigbee driver reports a code refused outside its
    schedule. Before, both said nothing: a keypad unlock and a refused entry attempt were lost."""
    monkeypatch.setenv("ZWAVE_MOCK_NOTIFICATION_V1", "1")
    async with own_stack(tmp_path, tasks, locks=1) as (stack, _, sink):
        dev = sink.ids[native_id(2)]
        mark = len(sink.events)
        for alarm_type, level in ((16, 5), (162, 2), (162, 250), (21, 1)):
            stack.control(2, "alarm_raw", type=alarm_type, level=level)
        await sink.wait_for(lambda: len(_events(sink, dev, mark)) >= 4)
        await _quiet(0.5)
        assert _events(sink, dev, mark) == [
            ("door unlocked", {"method": "pin_code", "slot_id": 5}),
            ("keypad invalid code", {"method": "keypad", "slot_id": 2}),
            ("keypad invalid code", {"method": "keypad"}),
            ("door locked", {"method": "manual"}),
        ]


async def test_a_credential_refused_at_the_lock_47_49_50_is_a_keypad_invalid_code(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Access Control 0x2F / 0x31 / 0x32 (Notification v9 "valid credential access denied:
    user occupied disabled", "... not enough credentials entered", "invalid credential used"):
    a PIN, card or fingerprint refused at the lock, one `keypad invalid code` each, with no
    slot (its user is no User Code slot). "Non-access credential entered" (0x33) stays
    unreported. Before, a refused credential said nothing."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await started_read(driver)
    mark = len(sink.events)
    usage = [0x00, 0x03, 0x01, 0x00, 0x03]  # credential usage: user 3, a PIN code, in slot 3
    for event, params in ((0x2F, usage), (0x31, usage), (0x33, None)):
        zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=event, params=params)
    zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x32)
    await sink.wait_for(lambda: len(_events(sink, dev, mark)) >= 3)
    await _quiet(0.5)
    assert _events(sink, dev, mark) == [("keypad invalid code", {"method": "keypad"})] * 3


async def test_a_yale_alarm_v1_code_outside_its_schedule_132(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Yale's Alarm CC v1 type 132 ("valid user but outside of schedule", alarmLevel the user
    slot), as 162: a `keypad invalid code` with the slot, whether zwave-js has no mapping for
    the lock (lock 2) or its device file maps 132 to Access Control 0xFE, an event zwave-js
    sends no notification for (lock 4, a YRD410-F ZW3). Before, both said nothing."""
    monkeypatch.setenv("ZWAVE_MOCK_NOTIFICATION_V1", "1")
    async with own_stack(tmp_path, tasks, locks=3) as (stack, _, sink):
        for node in (2, 4):
            dev = sink.ids[native_id(node)]
            mark = len(sink.events)
            stack.control(node, "alarm_raw", type=132, level=3)
            await sink.wait_for(lambda: len(_events(sink, dev, mark)) >= 1)  # noqa: B023
            await _quiet(0.5)
            assert _events(sink, dev, mark) == [
                ("keypad invalid code", {"method": "keypad", "slot_id": 3}),
            ]


async def test_an_rf_lock_or_unlock_with_an_invalid_code_20_21_is_an_rf_invalid_code(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Access Control 0x14 / 0x15 ("unlock / locked by RF with invalid user code": a remote
    that gave a wrong code): one `keypad invalid code` each with method `rf`, not `keypad`, and
    the bolt stays. Before, both said nothing: a remote trying codes went unreported."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await started_read(driver)
    mark = len(sink.events)
    for event in (0x14, 0x15):
        zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=event)
    await sink.wait_for(lambda: len(_events(sink, dev, mark)) >= 2)
    await _quiet()
    assert _events(sink, dev, mark) == [("keypad invalid code", {"method": "rf"})] * 2
    assert sink.devices[dev].properties.locked is True


async def test_a_credential_refused_outside_its_schedule_48_names_no_user_code_slot(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """Access Control 0x30 ("valid credential access denied: schedule inactive", Notification
    v9) carries Credential Usage Data: a User Credential user, credential type and slot, no User
    Code slot. zwave-js reads a User Code Report out of bytes that begin 0x63 0x03 (user 25347)
    and hands over its "user id", the credential type: before, that went up as `slot_id` 1, a
    code slot that was never used. Now one `keypad invalid code` each, naming no slot."""
    driver, sink = zwave
    dev = sink.ids[native_id(2)]
    await started_read(driver)
    mark = len(sink.events)
    for usage in ([0x63, 0x03, 0x01, 0x00, 0x03], [0x00, 0x03, 0x01, 0x00, 0x03]):
        zwave_stack.control(2, "notify_raw", type=ACCESS_CONTROL, event=0x30, params=usage)
    await sink.wait_for(lambda: len(_events(sink, dev, mark)) >= 2)
    await _quiet(0.5)
    assert _events(sink, dev, mark) == [("keypad invalid code", {"method": "keypad"})] * 2
