"""Odd reports from real Z-Wave locks, sent by the mock locks through zwave-js and zwave-server:
never a value out of range upstream, never a false event, never a lost later event."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from drivers.zwave import ZWaveDriver
from drivers.zwave.events import Notice, parse_notification, parse_state_value
from gatewayd.driver import DriverContext, Simulation
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
from tests.zwave.conftest import Tasks, make_config
from tests.zwave.stack import ZWaveStack, native_id

pytestmark = pytest.mark.stack

ACCESS_CONTROL, HOME_SECURITY = 6, 7


async def _quiet(seconds: float = 1.5) -> None:
    await anyio.sleep(seconds)  # past the merge window: a late or false event would be here


def _events(sink: RecordingSink, dev: str, mark: int) -> list[tuple[str, dict[str, Any]]]:
    return [(str(e.event_name), e.details) for e in sink.events[mark:] if e.device_id == dev]


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
        (ACCESS_CONTROL, 0x30, [0x03]),  # not an Access Control event we know
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


async def test_a_lock_whose_user_code_cc_reports_no_users_fails_a_code_typed(
    tmp_path: Path, tasks: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """User Code CC with 0 supported users: zwave-js keeps the count internal, so the driver
    cannot tell it from a lock whose count is not known yet (an interview that timed out) and
    keeps the code actions with the default slots. A set_code then fails with a typed error
    that quotes no PIN, and the bolt still works."""
    monkeypatch.setenv("ZWAVE_MOCK_NUM_USERS", "0")
    stack = ZWaveStack(tmp_path / "stack", locks=1)
    try:
        await anyio.to_thread.run_sync(stack.start)
        sink = RecordingSink()
        driver = ZWaveDriver(make_config(stack), DriverContext(tmp_path, tasks.spawn))
        await driver.start(sink)
        try:
            await sink.wait_for(lambda: len(sink.devices) == 1, timeout=30)
            device = sink.devices[sink.ids[native_id(2)]]
            assert ActionName.SET_CODE in device.actions
            with pytest.raises(GatewayError) as failed:
                await driver.execute(device.id, SetCode(slot_id=1, code=PinCode("480613")))
            assert "480613" not in str(failed.value)
            assert "480613" not in str(failed.value.to_dict())
            await driver.execute(device.id, Unlock())  # the bolt still works
        finally:
            await driver.stop()
    finally:
        await anyio.to_thread.run_sync(stack.stop)
