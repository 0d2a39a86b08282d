"""A dial the cloud never answers fails in `connect_timeout_s`, and backs off further each time.

The cloud ends here are real sockets on loopback: one that takes the upgrade request and never
answers it (a hung backend behind a proxy), one that upgrades and never sends `welcome`."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from gatewayd.config import CloudConfig
from gatewayd.store import Store
from gatewayd.tunnel import Tunnel

DIALS = 4


@asynccontextmanager
async def silent_upgrade() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server that reads the upgrade request and never answers: (port, dials)."""
    dials: list[int] = []
    held: list[anyio.abc.SocketStream] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        dials.append(len(dials) + 1)
        held.append(stream)
        with anyio.move_on_after(60):
            await stream.receive()
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield listener.extra(anyio.abc.SocketAttribute.local_port), dials
        tg.cancel_scope.cancel()


@asynccontextmanager
async def silent_welcome() -> AsyncIterator[tuple[int, list[int]]]:
    """A websocket server that upgrades and never sends `welcome`: (port, dials)."""
    dials: list[int] = []

    async def tunnel(request: web.Request) -> web.StreamResponse:
        dials.append(len(dials) + 1)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/v1/gateway/tunnel", tunnel)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1], dials  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


Cloud = Callable[[], Any]


@pytest.mark.parametrize("cloud", [silent_upgrade, silent_welcome], ids=["upgrade", "welcome"])
async def test_an_unanswered_dial_times_out_and_the_backoff_grows(
    tmp_path: Path, cloud: Cloud
) -> None:
    """The upgrade was bounded only by aiohttp's connect timeout (TCP/TLS): the tunnel stayed
    "connecting" for good on a silent one, no error, no redial. And each dial that timed out
    took the 10 s of a "stable" session by the clock, which reset the backoff: in an outage
    every gateway redialled every 10 s instead of backing off to a minute."""
    store = Store.open(tmp_path / "gatewayd.db")
    ticks = itertools.count(step=20.0)  # every reading 20 s later: each dial "lasts" 20 s
    attempts: list[int] = []
    done = anyio.Event()

    async def no_wait(_delay: float) -> None:
        attempts.append(tunnel.backoff.attempt)
        if len(attempts) == DIALS:
            done.set()
        await anyio.lowlevel.checkpoint()

    async with cloud() as (port, dials):
        tunnel = Tunnel(
            CloudConfig(url=f"ws://127.0.0.1:{port}/v1/gateway/tunnel", connect_timeout_s=0.3),
            store,
            lambda _request: None,
            lambda: {"software_version": "0", "hardware": "test", "drivers": ["sim"]},
            sleep=no_wait,
            clock=lambda: next(ticks),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(tunnel.run)
            with anyio.fail_after(10):
                await done.wait()
            tg.cancel_scope.cancel()
    store.close()
    assert dials == list(range(1, DIALS + 1))
    assert attempts == list(range(1, DIALS + 1))  # 0.5, 1, 2, 4 s ceilings: never back to 1
    assert tunnel.last_error is not None
    if cloud is silent_upgrade:
        assert "no answer to the websocket upgrade within 0.3 s" in tunnel.last_error
