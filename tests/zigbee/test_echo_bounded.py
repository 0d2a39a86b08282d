"""A lock that never echoes our own code changes: what the driver keeps to recognise a late
echo stays bounded by the echo window, however many codes are set over the months."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.zigbee import lock as zigbee_lock
from gatewayd.model import ClearCode, PinCode, SetCode
from tests.contract.sink import RecordingSink
from tests.zigbee.conftest import running

pytestmark = pytest.mark.stack

GENERIC = "00:0d:6f:00:0a:90:00:02"  # reads codes back in clear: no programming event awaited
ECHO_S = 0.05


async def test_unanswered_echo_expectations_do_not_pile_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zigbee_lock, "OWN_ECHO_S", ECHO_S)
    sink = RecordingSink()
    async with running(tmp_path, sink) as driver:
        dev = next(d.id for d in sink.devices.values() if d.native_id == GENERIC)
        assert driver.virtual is not None
        driver.virtual.lock(GENERIC).programming_delay_s = 3600.0  # the echo never comes
        lock = driver._locks[dev]
        for n in range(40):
            await driver.execute(dev, SetCode(slot_id=4, code=PinCode(f"{2000 + n}")))
            await driver.execute(dev, ClearCode(slot_id=4))
            if n % 10 == 9:
                await asyncio.sleep(ECHO_S * 2)  # past the window of what came before
        # only the expectations of the window's last changes are worth keeping
        assert len(lock._own_programming) <= 20, len(lock._own_programming)
