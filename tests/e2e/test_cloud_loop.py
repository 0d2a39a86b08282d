"""The full loop through real sockets: REST → devcloud → tunnel → gatewayd → sim lock, and back."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from gatewayd.driver import Simulation
from tests.e2e.conftest import CloudFactory, Receiver, claim, transitions, tunnel_url, wait_action
from tests.proxy import FaultProxy
from tests.support import running_daemon, wait_until

PIN = "480917"

pytestmark = pytest.mark.stack


def cloud_event_ids(cloud: Any) -> list[str]:
    return [r[0] for r in cloud.state.db._conn.execute("SELECT id FROM events ORDER BY n")]


async def test_unlock_set_code_keypad_and_webhooks(
    tmp_path: Path, cloud_factory: CloudFactory, receiver: Receiver
) -> None:
    cloud = await cloud_factory(webhook_urls=(receiver.url,))
    async with running_daemon(
        tmp_path / "gw", cloud_url=tunnel_url(cloud.server.port), latency_ms=5
    ) as daemon:
        _, gateway_id = await claim(cloud, daemon)
        await wait_until(lambda: len(cloud.state.db.devices()) == 2)
        devices = await cloud.get("/v1/devices")
        device = devices[0]
        assert device["actions"]["set_code"]["inputs"]["slot_id"]["description"] == "1 through 11"
        gw = await cloud.get(f"/v1/gateways/{gateway_id}")
        assert gw["status"] == "online"
        assert sorted(d["id"] for d in gw["devices"]) == sorted(d["id"] for d in devices)

        status, ar = await cloud.post(f"/v1/devices/{device['id']}/actions/unlock", {})
        assert status == 200, ar
        done = await wait_action(cloud, ar["id"])
        assert done["status"] == "completed"
        assert transitions(cloud, ar["id"]) == [
            "pending",
            "gateway_received",
            "processing",
            "completed",
        ]
        await wait_until(
            lambda: cloud.state.db.device(device["id"])["properties"]["locked"] is False
        )
        events = await cloud.get("/v1/events", params={"device_id": device["id"]})
        unlocked = [e for e in events if e["event_name"] == "door unlocked"]
        assert unlocked[-1]["details"] == {"method": "remote", "action_request_id": ar["id"]}

        status, ar = await cloud.post(
            f"/v1/devices/{device['id']}/actions/set_code",
            {"data": {"code": PIN, "slot_id": 3}},
        )
        assert status == 200, ar
        assert ar["data"]["set_code"]["code"] == "****"
        set_code_id = ar["id"]
        assert (await wait_action(cloud, ar["id"]))["status"] == "completed"

        await daemon.registry.drivers["sim"].simulate(  # type: ignore[union-attr]
            device["id"], Simulation.KEYPAD_UNLOCK, {"slot_id": 3}
        )

        def keypad() -> list[dict[str, Any]]:
            return [
                b
                for b in receiver.bodies
                if b.get("event_name") == "door unlocked"
                and b.get("details", {}).get("method") == "pin_code"
            ]

        await wait_until(lambda: bool(keypad()), 10)
        assert keypad()[0]["details"]["slot_id"] == 3
        assert keypad()[0]["device_id"] == device["id"]
        assert receiver.bad_signatures == 0
        assert receiver.bad_auth == 0
        events = await cloud.get("/v1/events", params={"device_id": device["id"]})
        assert any(e["details"].get("slot_id") == 3 for e in events)

        status, ar = await cloud.post(
            f"/v1/devices/{device['id']}/actions/clear_code", {"data": {"slot_id": 3}}
        )
        assert (await wait_action(cloud, ar["id"]))["status"] == "completed"
        names = [e["event_name"] for e in await cloud.get("/v1/events")]
        assert "code set on device" in names
        assert "code removed from device" in names

        # Bad input never reaches the gateway.
        before = sum(daemon.dispatcher.counts.values())  # type: ignore[union-attr]
        status, err = await cloud.post(
            f"/v1/devices/{device['id']}/actions/set_code", {"data": {"code": "12ab"}}
        )
        assert status == 400
        assert err["error"]["type"] == "invalid_input"
        assert "code" in str(err["error"]["validation_errors"])
        status, err = await cloud.post(
            f"/v1/devices/{device['id']}/actions/set_code",
            {"data": {"code": "1234", "slot_id": 99}},
        )
        assert status == 400
        status, err = await cloud.post(
            "/v1/devices/00000000-0000-0000-0000-000000000000/actions/unlock", {}
        )
        assert status == 404
        assert err["error"]["type"] == "device_not_found"
        assert sum(daemon.dispatcher.counts.values()) == before  # type: ignore[union-attr]

    # The gateway is gone: the cloud cannot hand the action over.
    with anyio.fail_after(10):
        while (await cloud.get(f"/v1/gateways/{gateway_id}"))["status"] != "offline":
            await anyio.sleep(0.05)
    status, ar = await cloud.post(f"/v1/devices/{device['id']}/actions/lock", {})
    assert (await wait_action(cloud, ar["id"]))["status"] == "gateway_failure"

    for body in receiver.bodies:
        assert PIN not in str(body)
    # read through SQLite, so rows still in the WAL count too
    db = sqlite3.connect(cloud.state.settings.db_path)
    dump = "\n".join(db.iterdump())
    db.close()
    assert set_code_id in dump  # the database that holds the set_code request
    assert PIN not in dump


async def test_event_burst_survives_tunnel_cuts_exactly_once_in_order(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    cloud = await cloud_factory()
    proxy = await FaultProxy(cloud.server.port).start()
    produced: list[str] = []
    try:
        async with running_daemon(tmp_path / "gw", cloud_url=tunnel_url(proxy.port)) as daemon:
            daemon.event_listeners.append(lambda ev: produced.append(ev.id))
            await claim(cloud, daemon)
            await wait_until(lambda: len(cloud.state.db.devices()) == 2)
            sim = daemon.registry.drivers["sim"]  # type: ignore[union-attr]
            tunnel = daemon.tunnel
            assert tunnel is not None
            door = sim.devices()[0].id
            await sim.simulate(door, Simulation.MANUAL_LOCK, {})
            await wait_until(lambda: daemon.store.outbox_backlog() == 0)  # type: ignore[union-attr]
            before = len(produced)
            delivered_at_cut: list[int] = []
            for i in range(1000):
                what = Simulation.MANUAL_UNLOCK if i % 2 == 0 else Simulation.MANUAL_LOCK
                await sim.simulate(door, what, {})
                if i in (250, 600, 800):
                    delivered_at_cut.append(len(cloud_event_ids(cloud)))
                    sessions = tunnel.sessions
                    proxy.cut()
                    proxy.refuse = i == 800  # the last cut stays down: the outbox holds all
                    if i != 800:
                        await wait_until(lambda n=sessions: tunnel.up and tunnel.sessions > n)
                await anyio.sleep(0.001)
            assert len(produced) - before == 1000
            # Each cut hit a tunnel that was delivering the burst.
            assert delivered_at_cut[0] > 0
            assert delivered_at_cut[0] < delivered_at_cut[1] < delivered_at_cut[2]
            proxy.refuse = False
            await wait_until(lambda: daemon.store.outbox_backlog() == 0, 30)  # type: ignore[union-attr]
            assert tunnel.sessions >= 5
    finally:
        await proxy.close()
    in_cloud = cloud_event_ids(cloud)
    assert len(in_cloud) == len(set(in_cloud))  # no duplicates
    assert in_cloud == produced  # nothing lost, same order
    names = [
        r[0]
        for r in cloud.state.db._conn.execute(
            "SELECT json_extract(body, '$.event_name') FROM events ORDER BY n"
        )
    ]
    burst = names[-1000:]
    assert all(a != b for a, b in itertools.pairwise(burst))  # strictly alternating
