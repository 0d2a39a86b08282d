"""The full loop with Z-Wave locks: REST → devcloud → tunnel → gatewayd → zwave-js → mock lock.

The daemon runs in this process with only the Z-Wave driver (no simulated locks), connected to a
real zwave-server in front of zwave-js's mock-server (tests/zwave/mock/locks.cjs); devcloud
serves REST and the tunnel on loopback. The stack is the one shared by the Z-Wave tests of this
run, its locks reset first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from drivers.zwave import ZWaveDriver
from gatewayd.daemon import Daemon
from gatewayd.driver import Simulation
from tests.cloudkit import Cloud, CloudFactory
from tests.e2e.conftest import Receiver, Rest, claim, transitions, tunnel_url
from tests.support import running_daemon, wait_until
from tests.zwave.stack import native_id, shared_stack

pytestmark = pytest.mark.stack

PIN = "0591736"  # starts with 0: a string of digits, never a number
SLOT = 4
KEYPAD_SLOT = 7
YALE, ALLEGION = 2, 3  # mock node ids (tests/zwave/mock/locks.cjs)


def _locked(cloud: Cloud, device_id: str) -> object:
    device = cloud.state.db.device(device_id)
    return None if device is None else device["properties"]["locked"]


def zwave(daemon: Daemon) -> ZWaveDriver:
    assert daemon.registry is not None
    driver = daemon.registry.drivers["zwave"]
    assert isinstance(driver, ZWaveDriver)
    return driver


async def _slot_event(rest: Rest, device_id: str, name: str) -> bool:
    return any(e["details"].get("slot_id") == SLOT for e in await rest.events(device_id, name))


async def _until(check: Any, timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)


async def test_zwave_lock_through_the_cloud(
    tmp_path: Path, cloud_factory: CloudFactory, receiver: Receiver
) -> None:
    stack = await anyio.to_thread.run_sync(shared_stack)
    network = await anyio.to_thread.run_sync(stack.reset)
    cloud = await cloud_factory(webhook_urls=(receiver.url,))
    rest = Rest(cloud)
    assert cloud.server.port is not None
    async with running_daemon(
        tmp_path / "gw", cloud_url=tunnel_url(cloud.server.port), locks=0, extra=stack.daemon_toml()
    ) as daemon:
        await claim(cloud, daemon)
        driver = zwave(daemon)
        await wait_until(lambda: len(cloud.state.db.devices()) == len(network["nodes"]), 30)
        devices = await rest.get("/v1/devices")
        by_node = {d.native_id: d.id for d in driver.devices()}
        assert {d["id"] for d in devices} == set(by_node.values())
        assert {d["protocol"] for d in devices} == {"zwave"}
        yale_id = by_node[native_id(YALE)]
        yale = next(d for d in devices if d["id"] == yale_id)
        assert yale["properties"]["locked"] is True
        assert yale["properties"]["online"] is True

        # unlock: confirmed by the lock's own report, then devcloud shows it.
        done = await rest.act(yale_id, "unlock")
        assert done["status"] == "completed", done
        assert transitions(cloud, done["id"]) == [
            "pending",
            "gateway_received",
            "processing",
            "completed",
        ]
        assert stack.control(YALE, "state")["locked"] is False  # the mock bolt really moved
        await wait_until(lambda: _locked(cloud, yale_id) is False)

        async def remote_unlock_event() -> bool:
            unlocked = await rest.events(yale_id, "door unlocked")
            return any(e["details"].get("action_request_id") == done["id"] for e in unlocked)

        await _until(remote_unlock_event)
        unlocked = await rest.events(yale_id, "door unlocked")
        assert unlocked[-1]["details"]["method"] == "remote"

        # set_code / clear_code on two locks: written and read back before `completed`, which
        # reports the code on or off the device (a later re-check reports one the lock dropped).
        for node in (YALE, ALLEGION):
            device_id = by_node[native_id(node)]
            done = await rest.act(device_id, "set_code", {"code": PIN, "slot_id": SLOT})
            assert done["status"] == "completed", done
            assert transitions(cloud, done["id"])[-1] == "completed"
            assert SLOT in stack.control(node, "state")["slots"]  # what the lock itself holds
            await _until(lambda d=device_id: _slot_event(rest, d, "code set on device"))
            done = await rest.act(device_id, "clear_code", {"slot_id": SLOT})
            assert done["status"] == "completed", done
            assert SLOT not in stack.control(node, "state")["slots"]
            await _until(lambda d=device_id: _slot_event(rest, d, "code removed from device"))
            assert await rest.events(device_id, "code dropped by device") == []

        # A person types a code on the Yale's keypad (slot 7), the bolt locked first.
        done = await rest.act(yale_id, "lock")
        assert done["status"] == "completed", done
        await wait_until(lambda: _locked(cloud, yale_id) is True)
        await driver.simulate(yale_id, Simulation.KEYPAD_UNLOCK, {"slot_id": KEYPAD_SLOT})

        found: list[dict[str, Any]] = []

        async def keypad_unlock() -> bool:
            unlocked = await rest.events(yale_id, "door unlocked")
            found[:] = [e for e in unlocked if e["details"].get("method") == "pin_code"]
            return bool(found)

        await _until(keypad_unlock)
        await wait_until(lambda: _locked(cloud, yale_id) is False)
        found.clear()
        await keypad_unlock()
        assert len(found) == 1  # the notification and the bolt report made one event
        assert found[0]["details"] == {"method": "pin_code", "slot_id": KEYPAD_SLOT}
        assert found[0]["device_id"] == yale_id
        await wait_until(
            lambda: any(
                b.get("event_name") == "door unlocked"
                and b.get("details", {}).get("method") == "pin_code"
                for b in receiver.bodies
            )
        )
        assert receiver.bad_signatures == 0

        # No response, webhook or stored event carries the PIN.
        await rest.get("/v1/events")
        await rest.get("/v1/devices")
        for body in rest.bodies:
            assert PIN not in body
        for hook in receiver.bodies:
            assert PIN not in json.dumps(hook)
        rows = cloud.state.db._conn.execute("SELECT body FROM events").fetchall()
        assert rows
        assert not any(PIN in str(r[0]) for r in rows)
