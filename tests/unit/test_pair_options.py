"""pair_devices' optional `dsk_pin` (the 5-digit PIN on a Z-Wave S2 device's label): validated
by the core, handed to each driver's `pair` as `PairOptions.dsk_pin` (a `PinCode`), and, like
a user code, never in a log line, /status, the store or the outbox."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from structlog.testing import capture_logs

from drivers.sim import SimDriver
from gatewayd.actions import StatusUpdate, validate
from gatewayd.driver import NO_PAIR_OPTIONS, PairOptions
from gatewayd.model import ActionRequest, GatewayError, InvalidInput, PinCode, utcnow
from gatewayd.protocol import ActionRequestMsg
from tests.support import running_daemon, wait_until

DSK_PIN = "73915"  # distinctive: it must show up nowhere


def pair_request(inputs: dict[str, Any], action: str = "pair_devices") -> ActionRequest:
    now = utcnow()
    return ActionRequest(
        str(uuid.uuid4()), "Gateway", "gw", action, inputs, now, now + timedelta(seconds=10)
    )


def test_a_5_digit_dsk_pin_is_accepted() -> None:
    assert validate(pair_request({"duration": 30, "dsk_pin": "01234"}), None) is None


@pytest.mark.parametrize(
    "dsk_pin", ["7391", "739150", "7391a", 73915, "", "\uff17\uff13\uff19\uff11\uff15", None]
)
def test_a_dsk_pin_that_is_not_5_digits_is_invalid_input(dsk_pin: object) -> None:
    inputs = {"duration": 30, "dsk_pin": dsk_pin}
    if dsk_pin is None:
        assert validate(pair_request(inputs), None) is None  # absent
        return
    with pytest.raises(InvalidInput) as info:
        validate(pair_request(inputs), None)
    err = info.value
    assert err.type == "invalid_input"
    assert set(err.to_dict()["validation_errors"]) == {"dsk_pin"}
    if dsk_pin:
        assert str(dsk_pin) not in f"{err} {err!r} {err.to_dict()}"


def test_unpair_devices_takes_no_dsk_pin() -> None:
    with pytest.raises(InvalidInput) as info:
        validate(pair_request({"duration": 30, "dsk_pin": DSK_PIN}, "unpair_devices"), None)
    assert "dsk_pin" in info.value.to_dict()["validation_errors"]


def test_pair_options_and_the_frame_that_carries_the_pin_mask_it() -> None:
    options = PairOptions(dsk_pin=PinCode(DSK_PIN))
    frame = ActionRequestMsg(
        id="a",
        entity_type="Gateway",
        entity_id="gw",
        action="pair_devices",
        inputs={"duration": 30, "dsk_pin": DSK_PIN},
        created_at="x",
        deadline="y",
    )
    for text in (repr(options), str(options), repr(frame), repr(frame.masked_inputs())):
        assert DSK_PIN not in text
    assert NO_PAIR_OPTIONS.dsk_pin is None


class PinTaker(SimDriver):
    """The simulator, recording what each pair call was given."""

    given: ClassVar[list[PairOptions]] = []

    async def pair(self, duration_s: int, options: PairOptions = NO_PAIR_OPTIONS) -> None:
        PinTaker.given.append(options)
        await super().pair(duration_s, options)


async def test_the_dsk_pin_reaches_the_driver_and_nothing_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    PinTaker.given = []
    state = tmp_path / "state"
    caplog.set_level(logging.DEBUG)
    updates: list[StatusUpdate] = []
    with capture_logs() as logs:
        async with running_daemon(state, driver_classes={"sim": PinTaker}) as daemon:
            daemon.status_listeners.append(updates.append)
            request = pair_request({"duration": 10, "dsk_pin": DSK_PIN})
            assert daemon.submit(request)
            await wait_until(lambda: any(u.status.terminal for u in updates))
            status = json.dumps(daemon.snapshot(), default=str)

    assert updates[-1].status == "completed", updates[-1]
    assert [o.dsk_pin.reveal() if o.dsk_pin else None for o in PinTaker.given] == [DSK_PIN]
    texts = {"status": status, "caplog": caplog.text, "updates": repr(updates)}
    texts |= {f"log {e['event']}": repr(e) for e in logs}
    texts |= {str(p): p.read_bytes().decode("latin-1") for p in state.rglob("*") if p.is_file()}
    assert [where for where, text in texts.items() if DSK_PIN in text] == []


async def test_a_driver_failing_to_pair_says_so_without_the_pin(tmp_path: Path) -> None:
    class Refuses(SimDriver):
        async def pair(self, duration_s: int, options: PairOptions = NO_PAIR_OPTIONS) -> None:
            raise GatewayError(f"refused {options!r}")

    updates: list[StatusUpdate] = []
    async with running_daemon(tmp_path / "state", driver_classes={"sim": Refuses}) as daemon:
        daemon.status_listeners.append(updates.append)
        assert daemon.submit(pair_request({"duration": 10, "dsk_pin": DSK_PIN}))
        await wait_until(lambda: any(u.status.terminal for u in updates))
    assert updates[-1].status == "failed"
    assert DSK_PIN not in repr(updates)
