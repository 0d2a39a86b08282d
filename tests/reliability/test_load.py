"""Load and soak (`make reliability`): 200 simulated locks under a mixed random workload through
devcloud for GATEWAYD_SOAK_S seconds (600 by default), and a fleet of 500 claimed tunnels
against one devcloud process. Figures are printed; the assertions are about memory, backlog and
the delivery invariants, never about speed."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd import protocol
from tests.devcloud.conftest import device_body
from tests.reliability import leakscan
from tests.reliability.harness import (
    TERMINAL,
    DevcloudProcess,
    GatewayProcess,
    Rest,
    check,
    claim,
    cloud_actions,
    drained,
    get_json,
    table,
    wait_for,
)

pytestmark = [pytest.mark.reliability, pytest.mark.stack]

MB = 1024 * 1024
SOAK_S = float(os.environ.get("GATEWAYD_SOAK_S", "600"))
LOCKS = int(os.environ.get("GATEWAYD_SOAK_LOCKS", "200"))
FLEET = int(os.environ.get("GATEWAYD_FLEET", "500"))


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# The soak outlasts pytest's default timeout (300 s): its own budget is the run, the drain
# (120 s), the wait for terminal actions (60 s) and set-up.
@pytest.mark.timeout(SOAK_S + 300)
async def test_soak_200_locks_mixed_workload(tmp_path: Path) -> None:
    rng = random.Random(7)
    cloud = DevcloudProcess(
        tmp_path / "cloud.db", tmp_path / "cloud.log", args=("--handoff-timeout", "30")
    ).start()
    gw = GatewayProcess(
        tmp_path / "gw", tmp_path / "gw.log", cloud.tunnel_url, locks=LOCKS, latency_ms=50
    ).start()
    samples: list[tuple[float, int, int, int]] = []  # (t, gateway rss, cloud rss, backlog)
    ops = 0
    try:
        async with aiohttp.ClientSession() as http:
            rest = Rest(http, cloud.base)
            gateway_id = await claim(http, rest, gw, LOCKS)
            devices = [d["id"] for d in (await get_json(http, gw.base + "/status"))["devices"]]
            began = time.monotonic()
            stop = began + SOAK_S

            async def worker() -> None:
                nonlocal ops
                while time.monotonic() < stop:
                    door = rng.choice(devices)
                    pick = rng.random()
                    if pick < 0.35:
                        await rest.call(
                            "POST", f"/v1/devices/{door}/actions/{rng.choice(['lock', 'unlock'])}"
                        )
                    elif pick < 0.45:
                        pin = f"{rng.randrange(10**7, 10**8)}"
                        leakscan.register(pin)
                        body = {"data": {"code": pin, "slot_id": rng.randint(2, 11)}}
                        await rest.call("POST", f"/v1/devices/{door}/actions/set_code", body)
                    elif pick < 0.5:
                        body = {"data": {"slot_id": rng.randint(2, 11)}}
                        await rest.call("POST", f"/v1/devices/{door}/actions/clear_code", body)
                    else:
                        what = rng.choice(
                            [
                                "manual_lock",
                                "manual_unlock",
                                "door_open",
                                "door_close",
                                "wrong_code",
                                "keypad_lock",
                            ]
                        )
                        async with http.post(
                            gw.base + "/simulate", json={"device_id": door, "what": what}
                        ) as r:
                            await r.read()
                    ops += 1
                    await asyncio.sleep(rng.uniform(0.05, 0.25))

            async def sampler() -> None:
                while time.monotonic() < stop:
                    st = await get_json(http, gw.base + "/status")
                    samples.append(
                        (
                            time.monotonic() - began,
                            gw.rss(),
                            cloud.rss(),
                            st["store"]["outbox_backlog"],
                        )
                    )
                    await asyncio.sleep(min(10.0, SOAK_S / 20))

            await asyncio.gather(sampler(), *(worker() for _ in range(8)))
            await drained(http, gw, 120)

            async def all_terminal() -> bool:
                return all(s in TERMINAL for s in cloud_actions(cloud, gateway_id).values())

            await wait_for("all actions terminal", all_terminal, 60)
            outcome = check(cloud, gateway_id, gw.produced_events(), cloud.log)
            conn = cloud.db_conn()
            rows = conn.execute(
                "SELECT created_at, updated_at, status FROM action_requests WHERE gateway_id = ?",
                (gateway_id,),
            ).fetchall()
            conn.close()
    finally:
        gw.kill()
        cloud.kill()
    t0 = min(_ts(r["created_at"]) for r in rows)
    per_minute: dict[int, list[float]] = {}
    for r in rows:
        if r["status"] == "completed":
            minute = int((_ts(r["created_at"]) - t0).total_seconds() // 60)
            latency = (_ts(r["updated_at"]) - _ts(r["created_at"])).total_seconds() * 1000
            per_minute.setdefault(minute, []).append(latency)
    by_minute: dict[int, list[tuple[float, int, int, int]]] = {}
    for sample in samples:
        by_minute.setdefault(int(sample[0] // 60), []).append(sample)
    table(
        f"soak: {LOCKS} locks, {SOAK_S:.0f} s, {ops} operations",
        [
            "minute",
            "completed actions",
            "p50 ms",
            "p99 ms",
            "gatewayd RSS MB (end of minute)",
            "outbox backlog (max)",
        ],
        [
            [
                m,
                len(v),
                f"{statistics.median(v):.0f}",
                f"{sorted(v)[max(0, int(len(v) * 0.99) - 1)]:.0f}",
                f"{by_minute[m][-1][1] / MB:.1f}" if m in by_minute else "",
                max(x[3] for x in by_minute[m]) if m in by_minute else "",
            ]
            for m, v in sorted(per_minute.items())
        ],
    )
    warm = [s for s in samples if s[0] >= min(60.0, SOAK_S * 0.2)] or samples
    first, last = warm[0], samples[-1]
    third = max(1, len(samples) // 3)
    early_backlog = max(s[3] for s in samples[:third])
    late_backlog = max(s[3] for s in samples[-third:])
    table(
        "soak: resources",
        ["", "gatewayd RSS MB", "devcloud RSS MB", "outbox backlog (max of third)"],
        [
            ["after warm-up", f"{first[1] / MB:.1f}", f"{first[2] / MB:.1f}", early_backlog],
            [
                "end",
                f"{last[1] / MB:.1f} ({(last[1] / first[1] - 1) * 100:+.1f} %)",
                f"{last[2] / MB:.1f}",
                late_backlog,
            ],
        ],
    )
    table(
        "soak: delivery",
        ["events produced", "delivered", "lost", "actions", "ran twice", "late reports"],
        [
            [
                outcome.produced,
                outcome.delivered,
                outcome.lost,
                outcome.actions,
                outcome.executed_twice,
                outcome.late_reports,
            ]
        ],
    )
    assert outcome.produced > 0  # a soak that moved no lock proves nothing
    assert outcome.actions > 0
    outcome.assert_clean()
    assert last[1] <= first[1] * 1.05, "gatewayd memory grew more than 5 % after warm-up"
    assert late_backlog <= max(2 * early_backlog, 50), "the outbox backlog kept growing"


async def _hello(ws: Any, token: str | None = None) -> None:
    """A fleet gateway's hello: with its registration token while unclaimed."""
    hello = protocol.Hello(
        protocol=1,
        software_version="0.1",
        hardware="fleet",
        drivers=["sim"],
        registration_token=token,
    )
    await ws.send_str(protocol.encode(hello).decode())


async def test_fleet_of_claimed_tunnels_against_one_devcloud(tmp_path: Path) -> None:
    cloud = DevcloudProcess(
        tmp_path / "cloud.db",
        tmp_path / "cloud.log",
        args=("--claim-limit", str(FLEET + 10), "--heartbeat", "60"),
    ).start()
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    url = cloud.tunnel_url
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            rest = Rest(http, cloud.base)
            code, location = await rest.call(
                "POST", "/v1/locations", {"name": "fleet", "timezone": "UTC"}
            )
            assert code == 200
            await asyncio.sleep(0.5)
            base_rss = cloud.rss()
            gate = asyncio.Semaphore(20)

            async def one(n: int) -> None:
                async with gate:
                    token = f"fleet-token-{n:04d}"
                    ws = await http.ws_connect(url)
                    await _hello(ws, token)
                    assert isinstance(
                        protocol.decode((await ws.receive(timeout=30)).data), protocol.Welcome
                    )
                    code, gw = await rest.call(
                        "POST",
                        f"/v1/locations/{location['id']}/register_gateway",
                        {"registration_token": token, "name": f"gw {n}"},
                    )
                    assert code == 200, gw
                    claimed = protocol.decode((await ws.receive(timeout=30)).data)
                    assert isinstance(claimed, protocol.Claimed)
                    leakscan.register(claimed.credential)
                    await ws.close()
                    ws = await http.ws_connect(
                        url, headers={"Authorization": f"Bearer {claimed.credential}"}
                    )
                    await _hello(ws)
                    await ws.receive(timeout=30)  # welcome
                    body: dict[str, Any] = device_body(f"00000000-0000-4000-8000-{n:012d}")
                    await ws.send_str(
                        protocol.encode(protocol.DeviceMsg(seq=1, device=body)).decode()
                    )
                    ack = protocol.decode((await ws.receive(timeout=30)).data)
                    assert ack == protocol.Ack(seq=1)
                    sockets.append(ws)

            began = time.monotonic()
            results = await asyncio.gather(*(one(n) for n in range(FLEET)), return_exceptions=True)
            elapsed = time.monotonic() - began
            failures = [r for r in results if isinstance(r, BaseException)]
            await asyncio.sleep(1)
            held = sum(1 for ws in sockets if not ws.closed)
            rss = cloud.rss()
            code, gateways = await rest.call("GET", "/v1/gateways")
            online = sum(1 for g in gateways if g["status"] == "online")
            for ws in sockets:
                await ws.close()
    finally:
        cloud.kill()
    table(
        "fleet: claimed tunnels against one devcloud process",
        [
            "tunnels asked",
            "held",
            "listed online",
            "set-up s",
            "RSS base MB",
            "RSS MB",
            "KiB per tunnel",
        ],
        [
            [
                FLEET,
                held,
                online,
                f"{elapsed:.1f}",
                f"{base_rss / MB:.1f}",
                f"{rss / MB:.1f}",
                f"{(rss - base_rss) / max(1, held) / 1024:.0f}",
            ]
        ],
    )
    assert not failures, failures[:3]
    assert held == FLEET
    assert online == FLEET  # the cloud sees every one of them
