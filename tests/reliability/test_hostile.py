"""Hostile input against devcloud's tunnel and gatewayd's status endpoint, both as processes:
oversized frames, floods, slow-loris upgrades and deep JSON. Neither crashes, both keep serving,
and memory comes back (RSS measured before and after, printed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import aiohttp
import pytest

from gatewayd import protocol
from tests.reliability.harness import DevcloudProcess, GatewayProcess, healthy, table

pytestmark = pytest.mark.stack

MB = 1024 * 1024
ROUNDS = int(os.environ.get("GATEWAYD_HOSTILE_ROUNDS", "1"))


async def _slowloris(port: int, n: int, path: str) -> list[asyncio.StreamWriter]:
    """n connections that send half an upgrade request and then nothing."""
    writers = []
    for _ in range(n):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n".encode())
        writers.append(writer)
    await asyncio.gather(*(w.drain() for w in writers))
    return writers


async def _hostile_tunnel_round(base: str, port: int) -> dict[str, int]:
    url = base.replace("http", "ws") + "/v1/gateway/tunnel"
    refused = 0
    async with aiohttp.ClientSession() as http:

        async def one(frame: str) -> None:
            nonlocal refused
            ws = await http.ws_connect(url, max_msg_size=0)
            try:
                try:
                    await ws.send_str(frame)
                except (ConnectionError, aiohttp.ClientError):
                    # The server closed on us mid-frame: only an oversized frame may see this.
                    refused += len(frame) > 4 * protocol.MAX_FRAME_BYTES
                    return
                msg = await ws.receive(timeout=10)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    refused += isinstance(protocol.decode(msg.data), protocol.ErrorMsg)
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    # Over the socket's limit (4 x 64 KiB) aiohttp closes with 1009 at once.
                    refused += msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            finally:
                await ws.close()

        frames = (
            ["x" * (2 * MB)] * 5  # oversized
            + ["[" * 60_000 + "]" * 60_000] * 10  # deep JSON, under the size limit
            + ['{"type": "hello", "protocol": 1, "software_version": "' + "v" * 60_000 + '"}'] * 5
            + ["{not json"] * 30
        )
        for chunk in range(0, len(frames), 10):
            await asyncio.gather(*(one(f) for f in frames[chunk : chunk + 10]))
        # A flood of frames on one socket before hello is answered.
        ws = await http.ws_connect(url)
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            for _ in range(5000):
                await ws.send_str('{"type": "ack", "seq": 1}')
        await ws.close()
        loris = await _slowloris(port, 300, "/v1/gateway/tunnel")
        # Still serving while 300 half-open upgrades wait.
        async with http.get(base + "/v1/openapi.json") as r:
            serving = r.status == 200
        for w in loris:
            w.transport.abort()
    return {"refused": refused, "sent": len(frames), "serving": int(serving)}


async def test_devcloud_survives_hostile_tunnel_clients_with_bounded_memory(tmp_path: Path) -> None:
    cloud = DevcloudProcess(tmp_path / "cloud.db", tmp_path / "cloud.log").start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(cloud.base + "/v1/openapi.json") as r,
        ):
            assert r.status == 200
        before = cloud.rss()
        results = [await _hostile_tunnel_round(cloud.base, cloud.port) for _ in range(ROUNDS)]
        await asyncio.sleep(1)
        after = cloud.rss()
        alive = cloud.alive()
    finally:
        cloud.kill()
    r = results[-1]
    table(
        "devcloud under hostile tunnel input",
        [
            "rounds",
            "bad frames",
            "refused with error",
            "slow-loris",
            "RSS before MB",
            "RSS after MB",
            "delta MB",
        ],
        [
            [
                ROUNDS,
                r["sent"],
                r["refused"],
                300,
                f"{before / MB:.1f}",
                f"{after / MB:.1f}",
                f"{(after - before) / MB:+.1f}",
            ]
        ],
    )
    assert alive
    assert all(x["serving"] for x in results)
    assert r["refused"] == r["sent"]  # an `error` frame then a close, or close 1009
    assert after - before < 64 * MB  # bounded: 2 MiB frames were refused, not buffered


async def test_the_status_endpoint_survives_hostile_clients(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "gw", tmp_path / "gw.log", "", locks=2).start()
    try:
        async with aiohttp.ClientSession() as http:
            await healthy(http, gw)
            device = (await (await http.get(gw.base + "/status")).json())["devices"][0]["id"]
            before = gw.rss()
            codes: dict[int, int] = {}

            async def post(path: str, data: bytes) -> None:
                try:
                    async with http.post(
                        gw.base + path, data=data, headers={"Content-Type": "application/json"}
                    ) as r:
                        codes[r.status] = codes.get(r.status, 0) + 1
                except aiohttp.ClientError:
                    codes[0] = codes.get(0, 0) + 1

            bodies = (
                [b"x" * (4 * MB)] * 5
                + [b"[" * 15_000 + b"]" * 15_000] * 20
                + [b'{"device_id": "' + device.encode() + b'", "what": "' + b"w" * 10_000 + b'"}']
                * 20
                + [b'{"device_id": {"a": ' * 1000 + b"1" + b"}" * 1000 + b', "action": "x"}'] * 20
            )
            for path in ("/simulate", "/actions"):
                await asyncio.gather(*(post(path, b) for b in bodies))
            await asyncio.gather(*(http.get(gw.base + "/status") for _ in range(300)))
            loris = await _slowloris(gw.status_port, 200, "/status")
            async with http.get(gw.base + "/healthz") as r:
                serving = r.status == 200
            for w in loris:
                w.transport.abort()
            await asyncio.sleep(1)
            after = gw.rss()
            alive = gw.alive()
            st = await (await http.get(gw.base + "/status")).json()
    finally:
        gw.kill()
    table(
        "status endpoint under hostile input",
        ["requests", "answers by status", "RSS before MB", "RSS after MB", "delta MB"],
        [
            [
                len(bodies) * 2 + 300,
                dict(sorted(codes.items())),
                f"{before / MB:.1f}",
                f"{after / MB:.1f}",
                f"{(after - before) / MB:+.1f}",
            ]
        ],
    )
    assert alive
    assert serving
    assert 500 not in codes
    assert set(codes) <= {400, 413, 0}  # refused, never accepted, never a server error
    assert codes.get(0, 0) <= 2 * 5  # answered: only a 4 MiB body may be cut off mid-upload
    assert st["actions"]["counts"] == {}  # nothing hostile turned into an action
    assert after - before < 64 * MB
