"""What the Z-Wave driver keeps per node and per code change stays bounded on a box that runs
for months: listeners go with their node, expected code echoes with their time."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.zwave import ZWaveDriver
from drivers.zwave import driver as zwave_driver
from drivers.zwave.driver import OWN_ECHO_S, _Lock
from tests.contract.sink import RecordingSink

pytestmark = pytest.mark.stack


def _listeners(node: object) -> int:
    return sum(len(callbacks) for callbacks in node._listeners.values())  # type: ignore[attr-defined]


async def test_a_removed_node_takes_its_listeners_with_it(
    zwave: tuple[ZWaveDriver, RecordingSink],
) -> None:
    """Before, each watched node's seven listeners stayed registered (holding the Node) until
    the link to zwave-server went down: for months, on a box whose link stays up, for every
    node ever included."""
    driver, _sink = zwave
    client = driver._client
    assert client is not None
    assert client.driver is not None
    node = client.driver.controller.nodes[3]
    assert _listeners(node) >= 7  # ours, on a real Node of the connected client
    driver._on_node_removed({"node": node})  # what zwave-js-server-python hands the listener
    assert _listeners(node) == 0
    assert 3 not in driver._node_unsubs
    assert 2 in driver._node_unsubs  # the other lock is still watched
    assert _listeners(client.driver.controller.nodes[2]) >= 7


def test_expected_code_echoes_expire_also_when_no_echo_ever_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock that sends no code notifications never prunes its expected echoes through
    `is_own_echo`: adding one must, or every set and clear it ever ran stays in memory."""
    now = [1000.0]
    monkeypatch.setattr(zwave_driver.time, "monotonic", lambda: now[0])
    lock = _Lock(2, "home-2", "device-2", tracker=None)  # type: ignore[arg-type]
    for i in range(500):
        lock.expect_echo(i % 20 + 1, present=i % 2 == 0)
        now[0] += 1.0
    # only the changes of the last OWN_ECHO_S seconds can still be echoed
    assert len(lock.own_codes) <= OWN_ECHO_S + 1
    assert lock.own_codes[-1].slot == 499 % 20 + 1
