"""devcloud killed between creating an action request and its hand-off: after a restart on the
same database the request still ends (`gateway_failure`) instead of staying `pending` forever."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from gatewayd import protocol
from tests.devcloud.conftest import device_body
from tests.reliability import leakscan
from tests.reliability.harness import DevcloudProcess, Rest, wait_for

pytestmark = pytest.mark.stack


async def _hello(ws: aiohttp.ClientWebSocketResponse, token: str | None) -> protocol.Message:
    hello = protocol.Hello(
        protocol=1, software_version="0.1", hardware="t", drivers=["sim"], registration_token=token
    )
    await ws.send_str(protocol.encode(hello).decode())
    return protocol.decode((await ws.receive(timeout=10)).data)


async def test_a_pending_request_ends_after_a_cloud_restart(tmp_path: Path) -> None:
    args = ("--handoff-timeout", "2")
    cloud = DevcloudProcess(tmp_path / "cloud.db", tmp_path / "cloud.log", args=args).start()
    try:
        async with aiohttp.ClientSession() as http:
            rest = Rest(http, cloud.base)
            _, location = await rest.call("POST", "/v1/locations", {"name": "x", "timezone": "UTC"})
            ws = await http.ws_connect(cloud.tunnel_url)
            await _hello(ws, "quiet-gateway-1")
            code, _ = await rest.call(
                "POST",
                f"/v1/locations/{location['id']}/register_gateway",
                {"registration_token": "quiet-gateway-1", "name": "silent"},
            )
            assert code == 200
            claimed = protocol.decode((await ws.receive(timeout=10)).data)
            assert isinstance(claimed, protocol.Claimed)
            leakscan.register(claimed.credential)
            await ws.close()
            ws = await http.ws_connect(
                cloud.tunnel_url, headers={"Authorization": f"Bearer {claimed.credential}"}
            )
            await _hello(ws, None)
            body = device_body()
            await ws.send_str(protocol.encode(protocol.DeviceMsg(seq=1, device=body)).decode())
            await ws.receive(timeout=10)  # ack
            # The gateway receives the request but never says gateway_received; the cloud dies.
            code, ar = await rest.call("POST", f"/v1/devices/{body['id']}/actions/unlock")
            assert code == 200
            assert ar["status"] == "pending"
            cloud.kill()
            await ws.close()
            cloud.start()
            rest.base = cloud.base

            async def ended() -> str | None:
                _, now = await rest.call("GET", f"/v1/action_requests/{ar['id']}")
                return None if now["status"] == "pending" else str(now["status"])

            status = await wait_for("request ends after the restart", ended, 15)
            await asyncio.sleep(0)
    finally:
        cloud.kill()
    assert status == "gateway_failure"
