"""A Z-Wave lock the store remembers but the controller no longer has (excluded with another
tool while the gateway was down) is removed once the driver is up, upstream too; never while
zwave-server is unreachable, nor while a node that may be a lock has not been interviewed (a
lock removed by mistake comes back with a new id, breaking whatever refers to it).

Each test runs a real daemon (its Registry and Store on disk) twice on one state dir."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from drivers.zwave import ZWaveDriver
from gatewayd.daemon import Daemon
from gatewayd.driver import DriverContext
from tests.contract.sink import RecordingSink
from tests.daemon_runs import run_once, stored
from tests.proxy import FaultProxy
from tests.support import config_text, running_daemon, wait_until
from tests.zwave.conftest import Tasks, make_config
from tests.zwave.stack import ZWaveStack, free_port, native_id

pytestmark = pytest.mark.stack

OTHER_HOME_ID = 0x0BADF00D  # another controller's network


def section(url: str, *, connect_timeout_s: float = 5.0, interview_timeout_s: float = 30.0) -> str:
    return f"""
[drivers.zwave]
enabled = true
url = "{url}"
connect_timeout_s = {connect_timeout_s}
interview_timeout_s = {interview_timeout_s}
reconnect_max_s = 2.0
"""


async def run_zwave(state: Path, zwave: str) -> Daemon:
    """Start a daemon with the Z-Wave driver (and no simulated locks), stop it once started."""
    return await run_once(config_text(state, locks=0, extra=zwave), timeout=90)


def reported(daemon: Daemon) -> set[str]:
    """The native ids the Z-Wave driver reported in that run."""
    registry = daemon.registry
    assert registry is not None
    return {d.native_id for d in registry.devices() if registry.driver_of(d.id) == "zwave"}


async def remembered(state: Path, stack: ZWaveStack) -> dict[str, str]:
    """A first run on the 3-lock stack: the store then holds locks 2, 3 and 4."""
    await anyio.to_thread.run_sync(stack.reset)
    daemon = await run_zwave(state, section(stack.url))
    first, removed = stored(state)
    assert reported(daemon) == set(first) == {native_id(n) for n in (2, 3, 4)}
    assert removed == []
    return first


async def test_a_lock_excluded_while_the_gateway_was_down_is_removed(
    tmp_path: Path, zwave_stack: ZWaveStack
) -> None:
    state = tmp_path / "state"
    first = await remembered(state, zwave_stack)

    # lock 4 was excluded while the gateway was off: the network now holds locks 2 and 3
    smaller = ZWaveStack(tmp_path / "stack", locks=2)
    try:
        await anyio.to_thread.run_sync(smaller.start)
        daemon = await run_zwave(state, section(smaller.url))
    finally:
        await anyio.to_thread.run_sync(smaller.stop)

    devices, removed = stored(state)
    assert devices == {native_id(n): first[native_id(n)] for n in (2, 3)}  # ids kept
    assert removed == [first[native_id(4)]]  # and upstream told
    assert daemon.registry is not None
    assert sorted(d.id for d in daemon.registry.devices()) == sorted(devices.values())


@pytest.mark.parametrize("link", ["refused", "frozen"])
async def test_nothing_is_removed_while_zwave_server_is_unreachable(
    link: str, tmp_path: Path, zwave_stack: ZWaveStack
) -> None:
    state = tmp_path / "state"
    first = await remembered(state, zwave_stack)

    # zwave-server not running (nothing listens), or hung (the connection opens, nothing answers)
    proxy = await FaultProxy(target_port=zwave_stack.ws_port, blackhole=True).start()
    port = proxy.port if link == "frozen" else free_port()
    try:
        daemon = await run_zwave(state, section(f"ws://127.0.0.1:{port}", connect_timeout_s=1.0))
    finally:
        await proxy.close()

    assert reported(daemon) == set()
    assert stored(state) == (first, [])


async def test_nothing_is_removed_while_a_node_has_not_been_interviewed(
    tmp_path: Path, zwave_stack: ZWaveStack, tasks: Tasks
) -> None:
    """zwave-server restarted with an empty cache while lock 4 is out of reach: the controller
    lists node 4, but zwave-js cannot interview it, so nothing tells it is a lock."""
    state = tmp_path / "state"
    first = await remembered(state, zwave_stack)

    stack = ZWaveStack(tmp_path / "stack", locks=3)
    try:
        await anyio.to_thread.run_sync(stack.start_mock)
        await anyio.to_thread.run_sync(lambda: stack.control(4, "offline"))
        await anyio.to_thread.run_sync(stack.start_server)
        # locks 2 and 3 interviewed first, so that the daemon's run finds them ready
        sink = RecordingSink()
        warmup = ZWaveDriver(make_config(stack), DriverContext(tmp_path, tasks.spawn))
        await warmup.start(sink)
        await sink.wait_for(lambda: len(sink.devices) == 2, timeout=30)
        await warmup.stop()

        # its start gives up waiting for node 4 after interview_timeout_s
        daemon = await run_zwave(state, section(stack.url, interview_timeout_s=1.0))
    finally:
        await anyio.to_thread.run_sync(stack.stop)

    assert reported(daemon) == {native_id(2), native_id(3)}  # connected, the others reported
    assert stored(state) == (first, [])  # lock 4 keeps its id


async def test_a_controller_of_another_network_removes_none_of_this_networks_locks(
    tmp_path: Path, zwave_stack: ZWaveStack
) -> None:
    """zwave-server pointed at another controller (a typo in its config, a second stick): that
    network's inventory is complete, and says nothing about this network's locks. They stay,
    and keep their ids once zwave-server is pointed back at this network's controller."""
    state = tmp_path / "state"
    first = await remembered(state, zwave_stack)

    other = ZWaveStack(tmp_path / "other", locks=2, home_id=OTHER_HOME_ID)
    try:
        await anyio.to_thread.run_sync(other.start)
        with capture_logs() as logs:
            daemon = await run_zwave(state, section(other.url))
    finally:
        await anyio.to_thread.run_sync(other.stop)

    theirs = {native_id(n, OTHER_HOME_ID) for n in (2, 3)}
    assert reported(daemon) == theirs
    devices, removed = stored(state)
    assert removed == []  # the cloud was told nothing of this network's locks going
    assert set(devices) == set(first) | theirs
    assert {n: devices[n] for n in first} == first
    kept = [e for e in logs if e["event"] == "daemon.other_network_devices_kept"]
    assert len(kept) == 1
    assert kept[0]["log_level"] == "warning"
    assert (kept[0]["driver"], kept[0]["network"]) == ("zwave", f"{OTHER_HOME_ID:08x}")
    assert (kept[0]["kept"], kept[0]["native_ids"]) == (3, sorted(first))

    # zwave-server pointed back at this network's controller: the same locks, the same ids
    await anyio.to_thread.run_sync(zwave_stack.reset)
    daemon = await run_zwave(state, section(zwave_stack.url))
    assert daemon.registry is not None
    assert {d.native_id: d.id for d in daemon.registry.devices()} == first
    assert stored(state) == ({**first, **{n: devices[n] for n in theirs}}, [])


def connected(logs: list[dict[str, Any]]) -> int:
    return sum(1 for e in logs if e["event"] == "zwave.connected")


def serving_zwave(state: Path, zwave: str) -> AbstractAsyncContextManager[Daemon]:
    """A daemon with the Z-Wave driver, kept running until the block ends."""
    return running_daemon(state, locks=0, extra=zwave, start_timeout=90)


async def test_a_lock_excluded_while_the_gateway_was_down_goes_once_zwave_server_comes_up(
    tmp_path: Path, zwave_stack: ZWaveStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zwave-server unreachable while the daemon starts, reachable later in the same run: the
    gone lock is removed then, and only once however often the driver reconnects."""
    monkeypatch.setattr("gatewayd.daemon.INVENTORY_CHECK_S", 0.2, raising=False)
    state = tmp_path / "state"
    first = await remembered(state, zwave_stack)

    smaller = ZWaveStack(tmp_path / "stack", locks=2)  # lock 4 excluded while the gateway was off
    proxy = FaultProxy(target_port=smaller.ws_port, refuse=True)
    try:
        await anyio.to_thread.run_sync(smaller.start)
        await proxy.start()
        url = f"ws://127.0.0.1:{proxy.port}"
        with capture_logs() as logs:
            async with serving_zwave(state, section(url, connect_timeout_s=1.0)) as daemon:
                assert daemon.store is not None
                store = daemon.store
                assert reported(daemon) == set()
                assert store.knows_device(first[native_id(4)])  # nothing removed while down

                proxy.refuse = False  # zwave-server reachable: the driver reconnects
                with anyio.fail_after(60):
                    while store.knows_device(first[native_id(4)]):
                        await anyio.sleep(0.1)
                assert reported(daemon) == {native_id(2), native_id(3)}

                proxy.cut()  # a reconnect to the same network removes nothing more
                await wait_until(lambda: connected(logs) == 2, 30)
                await anyio.sleep(1.0)
    finally:
        await proxy.close()
        await anyio.to_thread.run_sync(smaller.stop)

    devices, removed = stored(state)
    assert devices == {native_id(n): first[native_id(n)] for n in (2, 3)}  # ids kept
    assert removed == [first[native_id(4)]]  # and upstream told, once
    gone = [e for e in logs if e["event"] == "daemon.devices_gone"]
    assert [(e["driver"], e["device_ids"]) for e in gone] == [("zwave", [first[native_id(4)]])]
