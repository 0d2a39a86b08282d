"""The link to zwave-server's lifecycle: zwave-js restarted inside a running zwave-server (the
websocket stays up), a command or an inclusion window's close cut off by a link that resets, and
events that come right behind the state dump of a reconnect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest
from zwave_js_server.client import Client
from zwave_js_server.const import InclusionState
from zwave_js_server.model.driver import Driver

from drivers.zwave import ZWaveDriver
from gatewayd.driver import DriverContext, DriverState, Simulation
from gatewayd.model import DeviceError, EventName, GatewayError, Lock, Unlock
from tests.contract.sink import RecordingSink
from tests.zwave.conftest import Tasks, make_config, until
from tests.zwave.stack import ZWaveStack, native_id
from tests.zwave.test_reconnect import behind_proxy, proxied_driver

pytestmark = pytest.mark.stack


@contextlib.asynccontextmanager
async def _other_client(url: str) -> AsyncIterator[Driver]:
    """Another client of zwave-server (Z-Wave JS UI, a script): its view of zwave-js."""
    async with aiohttp.ClientSession() as http:
        client = Client(url, http)
        await client.connect()
        ready = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.listen, ready)
            with anyio.fail_after(10):
                await ready.wait()
            assert client.driver is not None
            yield client.driver
            await client.disconnect()


async def _restart_zwave_js(url: str) -> None:
    """Another client restarts zwave-js inside zwave-server."""
    async with _other_client(url) as other:
        await other.async_soft_reset_and_restart()


async def test_a_lock_gone_when_zwave_js_restarts_inside_zwave_server_is_removed(
    tmp_path: Path, tasks: Tasks
) -> None:
    """zwave-js restarts inside zwave-server (the websocket stays up; zwave-server says "driver
    ready"), and a lock excluded through another client is no longer in the network it loads.
    The lock is removed and the other one still works. Before, the driver went on with the
    node list of the zwave-js that was gone: the lock stayed listed all run, and every command
    and unpair naming it failed, until the daemon restarted."""
    stack = ZWaveStack(tmp_path / "home", locks=2)
    driver = ZWaveDriver(make_config(stack), DriverContext(tmp_path, tasks.spawn))
    try:
        await anyio.to_thread.run_sync(stack.start)
        sink = RecordingSink()
        await driver.start(sink)
        await sink.wait_for(lambda: len(sink.devices) == 2, timeout=30)
        front, back = sink.ids[native_id(2)], sink.ids[native_id(3)]

        assert stack.remove_node(3) == [2]
        await _restart_zwave_js(stack.url)
        with anyio.fail_after(30):
            await sink.wait_for(lambda: back in sink.removed)
        await until(lambda: driver.health().state is DriverState.READY, timeout=30)
        assert sink.removed == [back]
        assert [d.id for d in driver.devices()] == [front]
        await driver.execute(front, Unlock())
        assert stack.control(2, "state")["locked"] is False
    finally:
        await driver.stop()
        stack.stop()


async def test_a_window_whose_close_is_cut_off_by_a_lost_link_ends_quietly(
    tmp_path: Path, tasks: Tasks
) -> None:
    """The inclusion window's timer asks zwave-server to stop inclusion, and the link drops
    before the answer: the client cancels the command's future. The timer's task ends
    quietly and the driver reconnects. Before, the client's cancellation left the task
    (`except Exception` does not take a CancelledError) and, spawned in the daemon's task
    group, cancelled that group: the whole daemon shut down."""
    async with behind_proxy(tmp_path, tasks) as (_stack, proxy, driver, _sink):
        await driver.pair(1)
        proxy.blackhole = True  # the link stays up; the stop command goes unanswered
        window = next(t for t in tasks.tasks if t.get_name() == "zwave.inclusion_window")
        await anyio.sleep(1.5)
        assert not window.done()  # waiting for zwave-server's answer
        proxy.refuse = True
        proxy.cut()
        with anyio.fail_after(5):
            await asyncio.wait({window})
        assert not window.cancelled(), "the client's cancellation left the window's task"
        assert window.exception() is None
        proxy.blackhole = proxy.refuse = False
        await until(lambda: driver.health().state is DriverState.READY, timeout=20)


async def test_commands_sent_as_the_link_resets_fail_typed(tmp_path: Path, tasks: Tasks) -> None:
    """A command sent in the moment between the socket's reset and the client noticing it is
    refused by aiohttp ("Cannot write to closing transport"): it fails as a DeviceError like
    any command cut off by a lost link. Before, aiohttp's ClientConnectionResetError came out
    raw: an action failed as a driver crash, and an S2 inclusion answer sent then (in a task
    of the daemon's group, which catches only GatewayError) took the daemon down."""
    async with behind_proxy(tmp_path, tasks) as (_stack, proxy, driver, sink):
        dev = sink.ids[native_id(2)]
        outcomes: list[BaseException | None] = []

        async def lock() -> None:
            try:
                await driver.execute(dev, Lock())
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            proxy.refuse = True
            proxy.cut()
            for _ in range(20):  # one command started in each step of the loop
                tg.start_soon(lock)
                await asyncio.sleep(0)
        raw = [
            type(e).__name__ for e in outcomes if e is not None and not isinstance(e, GatewayError)
        ]
        assert raw == []
        proxy.refuse = False
        await until(lambda: driver.health().state is DriverState.READY, timeout=20)


async def test_a_simulation_whose_ping_is_cut_off_by_a_lost_link_fails_typed(
    tmp_path: Path, tasks: Tasks
) -> None:
    """simulate(offline) (mock only) pings the lock so that the controller notices it is gone;
    the link drops before the answer and the client cancels the ping's future: a DeviceError,
    as for any command cut off by a lost link. Before, the ping did not go through
    commands.call and the client's CancelledError came out of simulate: the status API's
    handler ended as if cancelled, not with an error."""
    async with behind_proxy(tmp_path, tasks) as (_stack, proxy, driver, sink):
        dev = sink.ids[native_id(2)]
        proxy.blackhole = True  # the link stays up; the ping goes unanswered
        simulating = asyncio.ensure_future(driver.simulate(dev, Simulation.OFFLINE, {}))
        await anyio.sleep(1.0)
        assert not simulating.done()  # waiting for zwave-server's answer to the ping
        proxy.refuse = True
        proxy.cut()
        with anyio.fail_after(5):
            await asyncio.wait({simulating})
        assert not simulating.cancelled(), "the client's cancellation left simulate"
        assert isinstance(simulating.exception(), DeviceError)
        proxy.blackhole = proxy.refuse = False
        await until(lambda: driver.health().state is DriverState.READY, timeout=20)


class _HoldingProxy:
    """Forwards to zwave-server; when `armed`, from its answer to start_listening (the state
    dump) on, holds what zwave-server sends until `release`, then passes it on in one write:
    events that came right after the dump reach the client together with it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.armed = False
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> _HoldingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, hold=False),
            self._pipe(up_reader, writer, hold=True),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        while data := await reader.read(65536):
            if hold and self.armed and b'"start-listening"' in data:
                self.armed = False
                held = bytearray(data)
                self.holding.set()
                while not self.release.is_set():
                    with contextlib.suppress(TimeoutError):
                        held += await asyncio.wait_for(reader.read(65536), 0.05)
                data = bytes(held)
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


async def test_events_that_come_right_after_the_state_dump_are_not_lost(
    tmp_path: Path, tasks: Tasks
) -> None:
    """After a reconnect, a wrong code typed and a keypad unlock reach the gateway right behind
    zwave-server's state dump (in the same read, or while the client parses it). They go up
    as when the link is up: "keypad invalid code", and "door unlocked" by pin_code naming the
    slot. Before, the client dispatched them before the driver had its listeners on the new
    nodes: the wrong code was lost, and the unlock went up from the value cache as "unknown"."""
    stack = ZWaveStack(tmp_path / "stack", locks=1)
    proxy = _HoldingProxy(stack.ws_port)
    try:
        await anyio.to_thread.run_sync(stack.start)
        await proxy.start()
        sink = RecordingSink()
        cfg = make_config(stack, url=f"ws://127.0.0.1:{proxy.port}", reconnect_max_s=0.5)
        driver = ZWaveDriver(cfg, DriverContext(tmp_path, tasks.spawn))
        await driver.start(sink)
        await sink.wait_for(lambda: len(sink.devices) == 1, timeout=30)
        dev = sink.ids[native_id(2)]
        mark = len(sink.events)

        proxy.armed = True
        proxy.cut()
        with anyio.fail_after(10):
            await proxy.holding.wait()
        await anyio.to_thread.run_sync(lambda: stack.control(2, "wrong_code"))
        await anyio.to_thread.run_sync(lambda: stack.control(2, "keypad_unlock", slot_id=1))
        await anyio.sleep(0.5)  # zwave-server has sent both on (held)
        proxy.release.set()
        await until(lambda: driver.health().state is DriverState.READY, timeout=20)
        await sink.wait_for(
            lambda: sum(e.device_id == dev for e in sink.events[mark:]) >= 2, timeout=30
        )
        await anyio.sleep(2)  # the merge of a bolt value with its notification is over
        got = [(e.event_name, e.details) for e in sink.events[mark:] if e.device_id == dev]
        assert got == [
            (EventName.KEYPAD_INVALID_CODE, {"method": "keypad"}),
            (EventName.DOOR_UNLOCKED, {"method": "pin_code", "slot_id": 1}),
        ]
        await driver.stop()
    finally:
        await proxy.close()
        stack.stop()


def _inclusion(driver: ZWaveDriver) -> InclusionState:
    client = driver._client
    assert client is not None
    assert client.driver is not None
    return client.driver.controller.inclusion_state


async def test_a_window_whose_time_ends_while_the_link_is_down_is_closed_once_it_is_back(
    zwave_stack: ZWaveStack, tmp_path: Path, tasks: Tasks
) -> None:
    """pair_devices opens a 1 s window and the link to zwave-server drops; the window's time
    ends while it is down. zwave-server does not end a window when its client goes away: once
    the link is back, the driver closes it. Before, the timer found no link and gave up, and
    the controller went on including any device that asked, for good (zwave-js has no end of
    its own for a window)."""
    zwave_stack.reset()  # three locks, none waiting: a window stays open until stopped
    sink = RecordingSink()
    async with proxied_driver(zwave_stack, tmp_path, tasks, sink) as (proxy, driver):
        await driver.pair(1)
        assert _inclusion(driver) == InclusionState.INCLUDING
        proxy.refuse = True
        proxy.cut()
        await until(lambda: driver.health().state is DriverState.DOWN, timeout=10)
        await anyio.sleep(1.5)  # the window's time is up
        proxy.refuse = False
        await until(lambda: driver.health().state is DriverState.READY, timeout=20)
        try:
            await until(lambda: _inclusion(driver) == InclusionState.IDLE, timeout=5)
        finally:
            if _inclusion(driver) != InclusionState.IDLE:  # the shared stack is left idle
                client = driver._client
                assert client is not None
                assert client.driver is not None
                await client.driver.controller.async_stop_inclusion()


async def test_a_window_open_when_the_driver_stops_is_closed(
    zwave: tuple[ZWaveDriver, RecordingSink], zwave_stack: ZWaveStack
) -> None:
    """The daemon stops (systemctl stop, an upgrade) during a pairing window. zwave-server does
    not end a window when its client goes away, and zwave-js has no end of its own: the driver
    stops it on its way out. Before, the controller went on including any device that asked,
    for good."""
    driver, _ = zwave
    await driver.pair(60)
    assert _inclusion(driver) == InclusionState.INCLUDING
    await driver.stop()
    async with _other_client(zwave_stack.url) as other:
        controller = other.controller
        try:
            assert controller.inclusion_state == InclusionState.IDLE
        finally:
            if controller.inclusion_state != InclusionState.IDLE:  # the shared stack is left idle
                await controller.async_stop_inclusion()
