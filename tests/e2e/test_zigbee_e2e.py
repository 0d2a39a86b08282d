"""The full loop with a Zigbee lock: REST → devcloud → tunnel → gatewayd → zigpy → virtual radio.

The daemon runs in this process with the Zigbee driver on zigpy's real stack over the virtual
radio (no simulated locks); devcloud serves REST and the tunnel on loopback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from drivers.zigbee import ZigbeeDriver
from gatewayd.daemon import Daemon
from gatewayd.driver import Simulation
from tests.e2e.conftest import CloudFactory, Receiver, Rest, claim, transitions, tunnel_url
from tests.support import running_daemon, wait_until

pytestmark = pytest.mark.stack

PIN = "073915"  # starts with 0: a string of digits, never a number
SLOT = 4
YALE, GENERIC = "00:0d:6f:00:0a:90:00:01", "00:0d:6f:00:0a:90:00:02"

ZIGBEE = """
[drivers.zigbee]
enabled = true
radio_type = "virtual"
virtual_locks = 2
quirks = true
command_timeout_s = 5.0
report_wait_s = 1.0
event_merge_s = 0.2
availability_s = 0
"""


def zigbee(daemon: Daemon) -> ZigbeeDriver:
    assert daemon.registry is not None
    driver = daemon.registry.drivers["zigbee"]
    assert isinstance(driver, ZigbeeDriver)
    assert driver.virtual is not None
    return driver


async def test_zigbee_lock_through_the_cloud(
    tmp_path: Path, cloud_factory: CloudFactory, receiver: Receiver
) -> None:
    cloud = await cloud_factory(webhook_urls=(receiver.url,))
    rest = Rest(cloud)
    async with running_daemon(
        tmp_path / "gw", cloud_url=tunnel_url(cloud.server.port), locks=0, extra=ZIGBEE
    ) as daemon:
        await claim(cloud, daemon)
        driver = zigbee(daemon)
        air = driver.virtual
        assert air is not None
        await wait_until(lambda: len(cloud.state.db.devices()) == 2, 30)
        devices = await rest.get("/v1/devices")
        by_ieee = {d.native_id: d.id for d in driver.devices()}
        assert {d["id"] for d in devices} == set(by_ieee.values())
        assert {d["protocol"] for d in devices} == {"zigbee"}
        yale = next(d for d in devices if d["id"] == by_ieee[YALE])
        assert yale["manufacturer"] == "Yale"
        assert yale["properties"]["locked"] is True

        # unlock: the lock's own bolt report confirms it, then devcloud shows it.
        done = await rest.act(yale["id"], "unlock")
        assert done["status"] == "completed", done
        assert transitions(cloud, done["id"]) == [
            "pending",
            "gateway_received",
            "processing",
            "completed",
        ]
        assert air.lock(YALE).mem.lock_state == 2  # the virtual bolt really moved
        await wait_until(lambda: cloud.state.db.device(yale["id"])["properties"]["locked"] is False)
        events = await rest.get("/v1/events", params={"device_id": yale["id"]})
        unlocked = [e for e in events if e["event_name"] == "door unlocked"]
        assert unlocked[-1]["details"] == {"method": "remote", "action_request_id": done["id"]}

        # set_code / clear_code on both locks: the Yale masks its read-back (confirmed by its
        # programming event), the other reads the digits back.
        for ieee in (YALE, GENERIC):
            device_id = by_ieee[ieee]
            done = await rest.act(device_id, "set_code", {"code": PIN, "slot_id": SLOT})
            assert done["status"] == "completed", done
            assert transitions(cloud, done["id"])[-1] == "completed"
            assert air.lock(ieee).mem.pins.get(SLOT) == PIN  # what the lock itself stored
            done = await rest.act(device_id, "clear_code", {"slot_id": SLOT})
            assert done["status"] == "completed", done
            assert SLOT not in air.lock(ieee).mem.pins
            events = await rest.get("/v1/events", params={"device_id": device_id})
            names = [(e["event_name"], e["details"].get("slot_id")) for e in events]
            assert ("code set on device", SLOT) in names
            assert ("code removed from device", SLOT) in names

        # A person types the code on the keypad of the generic lock (slot 7).
        generic = by_ieee[GENERIC]
        await driver.simulate(generic, Simulation.KEYPAD_UNLOCK, {"slot_id": 7})

        async def keypad_events() -> list[dict[str, Any]]:
            events = await rest.get("/v1/events", params={"device_id": generic})
            return [
                e
                for e in events
                if e["event_name"] == "door unlocked" and e["details"].get("method") == "pin_code"
            ]

        found: list[dict[str, Any]] = []

        async def arrived() -> bool:
            found[:] = await keypad_events()
            return bool(found)

        await _until(arrived)
        assert len(found) == 1  # the report and the notification made one event
        assert found[0]["details"] == {"method": "pin_code", "slot_id": 7}
        assert found[0]["device_id"] == generic
        await wait_until(
            lambda: any(
                b.get("event_name") == "door unlocked"
                and b.get("details", {}).get("method") == "pin_code"
                for b in receiver.bodies
            )
        )
        assert receiver.bad_signatures == 0

        # No response and no event carries the PIN.
        rest.bodies.append(json.dumps(await rest.get("/v1/events")))
        rest.bodies.append(json.dumps(await rest.get("/v1/devices")))
        for body in rest.bodies:
            assert PIN not in body
        for hook in receiver.bodies:
            assert PIN not in json.dumps(hook)
        rows = cloud.state.db._conn.execute("SELECT body FROM events").fetchall()
        assert rows
        assert not any(PIN in str(r[0]) for r in rows)


async def _until(check: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)
