"""The status endpoint's development route refuses what it cannot use with a 400 naming the
field, instead of failing inside the handler with a 500."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.support import running_daemon


async def test_a_local_action_with_an_absurd_timeout_is_invalid_input(tmp_path: Path) -> None:
    """timeout_s = 1e300 overflowed the deadline's timedelta: a 500 and a traceback."""
    async with running_daemon(tmp_path / "gw") as daemon:
        assert daemon.registry is not None
        device = daemon.registry.devices()[0].id
        body = {"device_id": device, "action": "unlock", "timeout_s": 1e300}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{daemon.status_port}/actions", json=body) as resp,
        ):
            reply = await resp.json()
        assert resp.status == 400
        assert reply["error"]["type"] == "invalid_input"
        assert "timeout_s" in reply["error"]["message"]
