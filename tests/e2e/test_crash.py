"""SIGKILL of the real daemon in the middle of an event burst: after a restart the cloud holds
every event the daemon acknowledged, exactly once and in order."""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import aiohttp
import anyio
import pytest

from tests.e2e.conftest import CloudFactory, tunnel_url
from tests.support import DaemonProcess, config_text, free_port

pytestmark = pytest.mark.stack


async def healthy(http: aiohttp.ClientSession, base: str) -> None:
    with anyio.fail_after(30):
        while True:
            try:
                async with http.get(f"{base}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await anyio.sleep(0.1)


async def test_sigkill_mid_burst_loses_and_duplicates_nothing(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    cloud = await cloud_factory()
    port = free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        config_text(tmp_path / "state", status_port=port, cloud_url=tunnel_url(cloud.server.port))
    )
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess(cfg, log).start()
    acknowledged = 0
    try:
        async with aiohttp.ClientSession() as http:
            await healthy(http, base)
            async with http.get(f"{base}/status") as r:
                status = await r.json()
            token = status["gateway"]["registration_token"]
            door = status["devices"][0]["id"]
            location = await cloud.location()
            code, _ = await cloud.post(
                f"/v1/locations/{location}/register_gateway",
                {"registration_token": token, "name": "crash test"},
            )
            assert code == 200
            with anyio.fail_after(30):
                while len(cloud.state.db.devices()) < 2:
                    await anyio.sleep(0.05)

            async def burst(n: int, kill_at: int) -> int:
                done = 0
                for i in range(n):
                    if i == kill_at:
                        daemon.signal(signal.SIGKILL)  # mid-burst, whatever was delivered yet
                    what = "manual_unlock" if i % 2 == 0 else "manual_lock"
                    try:
                        async with http.post(
                            f"{base}/simulate", json={"device_id": door, "what": what}
                        ) as r:
                            if r.status != 200:
                                return done
                    except aiohttp.ClientError:
                        return done
                    done += 1
                return done

            acknowledged = await burst(1000, kill_at=400)
            assert acknowledged == 400  # every request before the kill was answered
            daemon.wait(10)

            daemon = DaemonProcess(cfg, log).start()
            await healthy(http, base)
            with anyio.fail_after(30):
                while True:
                    async with http.get(f"{base}/status") as r:
                        if (await r.json())["store"]["outbox_backlog"] == 0:
                            break
                    await anyio.sleep(0.1)
    finally:
        daemon.kill()

    rows = cloud.state.db._conn.execute(
        "SELECT id, json_extract(body, '$.event_name'), json_extract(body, '$.details.method')"
        " FROM events WHERE device_id = ? ORDER BY n",
        (door,),
    ).fetchall()
    manual = [name for _, name, method in rows if method == "manual"]
    ids = [i for i, _, _ in rows]
    assert len(ids) == len(set(ids))  # exactly once
    # Every acknowledged event arrived.
    assert len(manual) == acknowledged
    # In order: the burst alternates unlock/lock, so a loss or a duplicate would break it.
    assert manual[0] == "door unlocked"
    assert all(a != b for a, b in itertools.pairwise(manual))
