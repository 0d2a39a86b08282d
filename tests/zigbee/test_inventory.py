"""A Zigbee lock the store remembers is never removed at start-up because zigpy's database
does not list it: a lost zigpy database or a re-formed network says nothing of whether the lock
is gone, and the lock that joins again by the same IEEE address must keep its id.

Each test runs a real daemon (its Registry and Store on disk) with zigpy on the virtual radio."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gatewayd.config import parse_config
from gatewayd.daemon import Daemon
from tests.daemon_runs import stored
from tests.support import config_text, wait_until

pytestmark = pytest.mark.stack

ZIGBEE = """
[drivers.zigbee]
enabled = true
radio_type = "virtual"
virtual_locks = 2
command_timeout_s = 2.0
report_wait_s = 0.5
event_merge_s = 0.2
availability_s = 0
"""
LOCKS = {"00:0d:6f:00:0a:90:00:01", "00:0d:6f:00:0a:90:00:02"}


def zigbee_native_ids(daemon: Daemon) -> set[str]:
    registry = daemon.registry
    assert registry is not None
    return {d.native_id for d in registry.devices() if registry.driver_of(d.id) == "zigbee"}


async def run_until_both_locks(state: Path) -> tuple[Daemon, set[str]]:
    """Run a daemon until both virtual locks are reported; what it reported when it started."""
    daemon = Daemon(parse_config(config_text(state, locks=0, extra=ZIGBEE)))
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await daemon.wait_started()
            at_start = zigbee_native_ids(daemon)
            await wait_until(lambda: zigbee_native_ids(daemon) == LOCKS, timeout=30)
            daemon.stop()
    return daemon, at_start


async def test_a_reformed_network_with_a_new_zigpy_database_removes_no_lock(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    await run_until_both_locks(state)
    first, _ = stored(state)
    assert set(first) == LOCKS

    # a new stick and a lost zigpy database: zigpy forms a new network and knows no device
    assert (state / "zigbee.db").exists()
    assert (state / "zigbee.virtual.json").exists()
    for name in ("zigbee.db", "zigbee.db-wal", "zigbee.db-shm", "zigbee.virtual.json"):
        (state / name).unlink(missing_ok=True)
    daemon, at_start = await run_until_both_locks(state)

    assert at_start == set()  # the radio was up with none of them when the daemon started
    assert stored(state) == (first, [])  # none removed, upstream neither; the same ids
    assert daemon.registry is not None
    assert {d.native_id: d.id for d in daemon.registry.devices()} == first
