"""Inclusion windows on the real mock controller: each window's timer closes only its own
window, and a window opened while another is open replaces it. (The mock controller has no
exclusion; unpair's windows share the same code.)"""

from __future__ import annotations

import time

import anyio
import pytest
from zwave_js_server.const import InclusionState

from drivers.zwave import ZWaveDriver
from tests.contract.sink import RecordingSink
from tests.zwave.conftest import until

pytestmark = pytest.mark.stack


def _state(driver: ZWaveDriver) -> InclusionState:
    client = driver._client
    assert client is not None
    assert client.driver is not None
    return client.driver.controller.inclusion_state


async def _at(t0: float, second: float) -> None:
    await anyio.sleep(max(0.0, t0 + second - time.monotonic()))


async def test_a_window_opened_while_another_is_open_replaces_it_and_keeps_its_own_length(
    zwave: tuple[ZWaveDriver, RecordingSink],
) -> None:
    """zwave-js refuses to start inclusion while it includes: the second pair_devices failed
    with device_error; and the first window's timer then closed whichever window was open."""
    driver, _ = zwave
    t0 = time.monotonic()
    await driver.pair(2)  # no lock waits for inclusion in this network: the window stays open
    assert _state(driver) == InclusionState.INCLUDING
    await driver.pair(6)  # the operator opens a longer window for the next lock
    assert _state(driver) == InclusionState.INCLUDING
    await _at(t0, 3.5)  # the first window's timer has fired
    assert _state(driver) == InclusionState.INCLUDING
    await until(lambda: _state(driver) == InclusionState.IDLE, timeout=10)  # its own end
    assert time.monotonic() - t0 >= 6.0
