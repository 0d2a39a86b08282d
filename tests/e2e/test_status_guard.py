"""The status endpoint answers only requests that name it by address (or by a name listed in
status.allowed_hosts), and takes a POST only from its own page or from a client that is not a
browser: a page whose DNS name was pointed at 127.0.0.1 must not read /status (registration
token included), and another site's page must not send actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import running_daemon


async def _call(
    port: int, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, json=body) as resp,
    ):
        payload = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, payload


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:{port}", True),
        ("localhost:{port}", True),
        ("[::1]:{port}", True),
        ("127.0.0.1", True),
        ("box.lan:{port}", True),  # listed in status.allowed_hosts
        ("BOX.LAN", True),
        ("rebound.example:{port}", False),
        ("localhost.example", False),
        ("", False),
    ],
)
async def test_only_a_host_named_by_address_or_allowed_name_is_answered(
    tmp_path: Path, host: str, allowed: bool
) -> None:
    async with running_daemon(tmp_path / "gw", allowed_hosts=("box.lan",)) as daemon:
        port = daemon.status_port
        assert port is not None
        for path in ("/status", "/healthz", "/metrics", "/"):
            status, body = await _call(port, "GET", path, {"Host": host.format(port=port)})
            if allowed:
                assert status in (200, 503), path
            else:
                assert status == 403, path
                assert body["error"]["type"] == "forbidden_host"


async def test_a_host_name_matches_with_or_without_its_trailing_dot(tmp_path: Path) -> None:
    """`box.lan.` (the name written in full) in status.allowed_hosts passed check-config and
    then never matched the `box.lan` a browser sends, nor `box.lan.` `box.lan`."""
    async with running_daemon(tmp_path / "gw", allowed_hosts=("box.lan.", "nas.lan")) as daemon:
        port = daemon.status_port
        assert port is not None
        for host, allowed in [
            ("box.lan", True),
            ("box.lan.", True),
            (f"box.lan.:{port}", True),
            ("nas.lan.", True),
            ("localhost.", True),
            ("box.lan..", False),
            ("lan.", False),
        ]:
            status, _ = await _call(port, "GET", "/healthz", {"Host": host})
            assert (host, status != 403) == (host, allowed)


async def test_a_post_from_another_origin_is_refused(tmp_path: Path) -> None:
    async with running_daemon(tmp_path / "gw") as daemon:
        port = daemon.status_port
        assert port is not None
        assert daemon.registry is not None
        device = daemon.registry.devices()[0].id
        own = f"127.0.0.1:{port}"
        body = {"device_id": device, "action": "unlock"}
        for origin, expected in [
            ("http://evil.example", 403),
            (f"http://{own}.evil.example", 403),
            ("null", 403),
            (f"http://{own}", 202),  # the status page itself
            (None, 202),  # curl, scripts
        ]:
            headers = {"Host": own} | ({} if origin is None else {"Origin": origin})
            status, reply = await _call(port, "POST", "/actions", headers, body)
            assert status == expected, (origin, reply)
            if expected == 403:
                assert reply["error"]["type"] == "forbidden_origin"
        assert daemon.store is not None
        assert len([a for a in daemon.store.recent_actions() if a.action == "unlock"]) == 2
