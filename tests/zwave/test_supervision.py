"""Locks that support Supervision CC: zwave-js supervises their Door Lock Operation Set and User
Code Set and hands back the lock's own answer. A lock that answers "Fail" did not do it: the
action fails at once, typed and without the PIN, instead of after a read-back (or, on a lock
that masks codes, after waiting out code_confirm_s for a notification that never comes).

The mock lock answers "fail" on the control channel's `fault {kind: "fail"}`; the mock node's
default SupervisionCCHooks (zwave-js lib/node/mockCCBehaviors/Supervision.js) send it as a
Supervision Report with status Fail."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs
from zwave_js_server.const import CommandClass

from drivers.zwave import ZWaveDriver
from drivers.zwave.commands import supervision_failed
from gatewayd.model import (
    ClearCode,
    CodeNotConfirmed,
    DeviceError,
    EventName,
    GatewayError,
    Lock,
    PinCode,
    SetCode,
    Unlock,
)
from tests.contract.sink import RecordingSink
from tests.zwave.conftest import Tasks, running_stack, started_driver
from tests.zwave.stack import ZWaveStack, native_id

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def supervised_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZWaveStack]:
    yield from running_stack(tmp_path_factory.mktemp("supervised"), locks=3, supervision=True)


@pytest.fixture
async def supervised(
    supervised_stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> AsyncIterator[tuple[ZWaveDriver, RecordingSink]]:
    async for started in started_driver(supervised_stack, tmp_path, tasks):
        yield started


def _texts(err: GatewayError, caplog: pytest.LogCaptureFixture, structured: list[Any]) -> list[str]:
    """Everything a refusal shows: the exception, its upstream form, every log line."""
    lines = [str(err), repr(err), repr(err.to_dict()), caplog.text]
    return lines + [r.getMessage() for r in caplog.records] + [repr(e) for e in structured]


async def test_the_supervised_mock_answers_each_set_with_the_locks_supervision_status(
    supervised: tuple[ZWaveDriver, RecordingSink], supervised_stack: ZWaveStack
) -> None:
    """What the driver reads, as zwave-server sends it: invoke_cc_api's SupervisionResult."""
    driver, _ = supervised
    client = driver._client  # the stack's own answer, below the driver
    assert client is not None
    assert client.driver is not None
    node = client.driver.controller.nodes[2]

    async def code_set() -> Any:
        return await node.async_invoke_cc_api(
            CommandClass.USER_CODE, "set", 9, 1, "2468", wait_for_result=True
        )

    async def bolt_set() -> Any:
        return await node.async_invoke_cc_api(
            CommandClass.DOOR_LOCK, "set", 0x00, wait_for_result=True
        )

    for command in (code_set, bolt_set):
        done = await command()
        supervised_stack.control(2, "fault", kind="fail")
        refused = await command()
        assert (done, refused) == ({"status": 255}, {"status": 2})
        assert (supervision_failed(done), supervision_failed(refused)) == (False, True)
    assert supervision_failed(None) is False  # an unsupervised Set: the lock cannot say


async def test_supervised_locks_lock_unlock_and_take_codes(
    supervised: tuple[ZWaveDriver, RecordingSink], supervised_stack: ZWaveStack
) -> None:
    driver, sink = supervised
    for node in (2, 4):  # readable, masked
        dev = sink.ids[native_id(node)]
        await driver.execute(dev, Unlock())
        assert supervised_stack.control(node, "state")["locked"] is False
        await driver.execute(dev, Lock())
        assert supervised_stack.control(node, "state")["locked"] is True
        await driver.execute(dev, SetCode(slot_id=4, code=PinCode("97531")))
        assert supervised_stack.control(node, "state")["slots"] == [4]
        await driver.execute(dev, ClearCode(slot_id=4))
        assert supervised_stack.control(node, "state")["slots"] == []
        names = [e.event_name for e in sink.events if e.device_id == dev]
        assert names.count(EventName.CODE_SET) == names.count(EventName.CODE_REMOVED) == 1


@pytest.mark.parametrize(
    ("node", "occupied"),
    [(2, False), (4, False), (4, True)],
    ids=["readable", "masked", "masked-over-an-old-code"],
)
async def test_a_code_the_lock_refuses_under_supervision_fails_at_once(
    supervised: tuple[ZWaveDriver, RecordingSink],
    supervised_stack: ZWaveStack,
    caplog: pytest.LogCaptureFixture,
    node: int,
    occupied: bool,
) -> None:
    """Before, the driver ignored the lock's Fail and read the slot back: "did not store the
    code and gave no reason", and over an old code on a masked lock ("****" read back) a
    timeout of code_confirm_s for a programming notification that never comes."""
    driver, sink = supervised
    dev = sink.ids[native_id(node)]
    pin = "73915028"
    caplog.set_level(logging.DEBUG)
    if occupied:
        await driver.execute(dev, SetCode(slot_id=3, code=PinCode("2222")))
    supervised_stack.control(node, "fault", kind="fail")
    mark = len(sink.events)
    with capture_logs() as structured, pytest.raises(CodeNotConfirmed) as err:
        with anyio.fail_after(3):  # below code_confirm_s (5 s): the lock's answer ends it
            await driver.execute(dev, SetCode(slot_id=3, code=PinCode(pin)))
    assert err.value.message == "slot 3: the lock refused the code (supervision fail)"
    assert supervised_stack.control(node, "state")["slots"] == ([3] if occupied else [])
    await anyio.sleep(0.5)  # a late notice of the refused code would be in
    assert [e.event_name for e in sink.events[mark:] if e.device_id == dev] == []
    assert [t for t in _texts(err.value, caplog, structured) if pin in t] == []
    # the fault took one command: the next set is stored
    await driver.execute(dev, SetCode(slot_id=3, code=PinCode(pin)))
    assert supervised_stack.control(node, "state")["slots"] == [3]


@pytest.mark.parametrize("node", [2, 4], ids=["readable", "masked"])
async def test_a_duplicate_refused_under_supervision_is_still_duplicate_code(
    supervised: tuple[ZWaveDriver, RecordingSink],
    supervised_stack: ZWaveStack,
    caplog: pytest.LogCaptureFixture,
    node: int,
) -> None:
    """The lock answers Fail and says why (Access Control 0x0F) just after: the reason wins."""
    driver, sink = supervised
    dev = sink.ids[native_id(node)]
    pin = "60281735"
    caplog.set_level(logging.DEBUG)
    await driver.execute(dev, SetCode(slot_id=2, code=PinCode(pin)))
    with capture_logs() as structured, pytest.raises(GatewayError) as err:
        with anyio.fail_after(3):
            await driver.execute(dev, SetCode(slot_id=5, code=PinCode(pin)))
    assert err.value.to_dict()["type"] == "duplicate_code"
    assert supervised_stack.control(node, "state")["slots"] == [2]
    assert [t for t in _texts(err.value, caplog, structured) if pin in t] == []


@pytest.mark.parametrize("action", [Unlock(), Lock()], ids=["unlock", "lock"])
async def test_a_bolt_command_the_lock_refuses_under_supervision_fails_at_once(
    supervised: tuple[ZWaveDriver, RecordingSink],
    supervised_stack: ZWaveStack,
    action: Lock | Unlock,
) -> None:
    """device_error saying the lock refused, not "the lock reports it is locked" after the
    read-backs of SETTLE_S; the bolt stays and no lock event is reported."""
    driver, sink = supervised
    dev = sink.ids[native_id(2)]
    locked = isinstance(action, Lock)
    if locked:
        await driver.execute(dev, Unlock())
    supervised_stack.control(2, "fault", kind="fail")
    mark = len(sink.events)
    with anyio.fail_after(5), pytest.raises(DeviceError) as err:
        await driver.execute(dev, action)
    assert type(err.value) is DeviceError
    assert err.value.message == f"{'lock' if locked else 'unlock'}: the lock refused the command"
    assert supervised_stack.control(2, "state")["locked"] is not locked
    await anyio.sleep(0.5)
    assert [e.event_name for e in sink.events[mark:] if e.device_id == dev] == []
    assert sink.devices[dev].properties.locked is not locked
