"""gatewayd.coalesce: the frames of one batch leave in one write, intact and in order, over a
real aiohttp websocket on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from aiohttp import web

from gatewayd.coalesce import coalesced_writes, writer_transport


class _Server:
    def __init__(self) -> None:
        self.frames: list[str] = []
        self.port = 0


@pytest_asyncio.fixture
async def server() -> AsyncIterator[_Server]:
    state = _Server()

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                state.frames.append(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield state
    await runner.cleanup()


async def _until(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_a_batch_leaves_in_one_write_intact_and_in_order(server: _Server) -> None:
    frames = [f'{{"type":"event","seq":{n},"pad":"{"x" * (n * 37 % 300)}"}}' for n in range(400)]
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"http://127.0.0.1:{server.port}/ws") as ws,
    ):
        transport = writer_transport(ws)
        assert transport is not None, "aiohttp's writer moved: coalesced_writes no longer applies"
        writes: list[int] = []  # frames per call that reached the socket's transport
        real_write, real_writelines = transport.write, transport.writelines

        def write(data: bytes) -> None:
            writes.append(1)
            real_write(data)

        def writelines(parts: list[bytes]) -> None:
            writes.append(len(parts))
            real_writelines(parts)

        transport.write = write  # type: ignore[method-assign]
        transport.writelines = writelines  # type: ignore[method-assign, assignment]
        with coalesced_writes(ws):
            for frame in frames:
                await ws.send_str(frame)
            await asyncio.sleep(0.05)
            assert server.frames == []  # held back until the batch ends
            assert writes == []
        assert writes == [len(frames)]  # one writelines with every frame
        await _until(lambda: len(server.frames) == len(frames))
        assert server.frames == frames
        await ws.send_str("after")  # outside a batch: straight through, as before
        await _until(lambda: server.frames[-1:] == ["after"])
        assert writes == [len(frames), 1]


async def test_a_batch_on_a_closed_connection_is_dropped_quietly(server: _Server) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"http://127.0.0.1:{server.port}/ws")
        transport = writer_transport(ws)
        assert transport is not None
        with coalesced_writes(ws):
            await ws.send_str("one")
            transport.close()  # the link dies mid-batch: these frames stay in the outbox
        assert server.frames == []
        assert writer_transport(ws) is transport  # the writer has its transport back
        await ws.close()


async def test_without_aiohttp_internals_frames_go_one_by_one() -> None:
    class Plain:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send_str(self, data: str) -> None:
            self.sent.append(data)

    ws = Plain()
    assert writer_transport(ws) is None
    with coalesced_writes(ws):
        await ws.send_str("a")
        assert ws.sent == ["a"]
