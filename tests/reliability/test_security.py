"""Security through real processes: forged and replayed action requests are not executed,
the status endpoint refuses a non-loopback bind, claim guessing is rate-limited, PINs and
credentials stay out of every log and file, secret files are 0600.

TLS verification and revoked credentials: tests/e2e/test_tunnel.py
(test_tls_certificates_are_verified, test_revoked_credential_returns_the_gateway_to_unclaimed).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from gatewayd import protocol
from gatewayd.model import iso, utcnow
from gatewayd.store import _ADJECTIVES, _NOUNS, Store
from tests.reliability import leakscan
from tests.reliability.faults import ZIGBEE_TOML
from tests.reliability.harness import (
    DevcloudProcess,
    GatewayProcess,
    Rest,
    claim,
    credential_of,
    drained,
    get_json,
    healthy,
    table,
    wait_for,
)
from tests.support import ROOT, config_text, free_port

pytestmark = pytest.mark.stack


class ScriptedCloud:
    """A tunnel server the test drives frame by frame; acks and records everything upstream."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.received: list[dict[str, Any]] = []
        self.ws: web.WebSocketResponse | None = None
        self.sessions = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # hello
        high = max((b["seq"] for b in self.received if "seq" in b), default=0)
        welcome = protocol.Welcome(
            protocol=1, gateway_id=self.gateway_id, acked_seq=high, heartbeat_s=60
        )
        await ws.send_str(protocol.encode(welcome).decode())
        self.ws = ws
        self.sessions += 1
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                body = protocol.to_dict(protocol.decode(msg.data))
                if body["seq"] > high:
                    self.received.append(body)
                    high = body["seq"]
                await ws.send_str(protocol.encode(protocol.Ack(seq=high)).decode())
        return ws

    async def send_action(
        self,
        id_: str,
        entity_type: str,
        entity_id: str,
        action: str,
        inputs: dict[str, Any],
        deadline_s: float,
        created_s: float = 0.0,
    ) -> None:
        now = utcnow()
        msg = protocol.ActionRequestMsg(
            id=id_,
            entity_type=entity_type,
            entity_id=entity_id,
            action=action,
            inputs=inputs,
            created_at=iso(now + timedelta(seconds=created_s)),
            deadline=iso(now + timedelta(seconds=deadline_s)),
        )
        assert self.ws is not None
        await self.ws.send_str(protocol.encode(msg).decode())

    def statuses(self, id_: str) -> list[str]:
        return [
            b["status"]
            for b in self.received
            if b["type"] == "action_status" and b["action_request_id"] == id_
        ]

    def effects(self, id_: str) -> int:
        return sum(
            1
            for b in self.received
            if b["type"] == "event" and b["event"]["details"].get("action_request_id") == id_
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/gateway/tunnel", self.handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_forged_and_replayed_action_requests_are_not_executed(tmp_path: Path) -> None:
    cloud = ScriptedCloud("gw-ours")
    await cloud.start()
    credential = secrets.token_urlsafe(24)
    leakscan.register(credential)
    store = Store.open(tmp_path / "gw" / "gatewayd.db")
    store.set_claimed("gw-ours", credential)
    store.close()
    gw = GatewayProcess(
        tmp_path / "gw",
        tmp_path / "gw.log",
        f"ws://127.0.0.1:{cloud.port}/v1/gateway/tunnel",
        locks=2,
        latency_ms=10,
    ).start()
    try:
        async with aiohttp.ClientSession() as http:
            await healthy(http, gw)
            door = (await get_json(http, gw.base + "/status"))["devices"][0]["id"]

            async def terminal(id_: str) -> bool:
                return any(s in ("completed", "failed") for s in cloud.statuses(id_))

            genuine = str(uuid.uuid4())
            await wait_for("connected", lambda: _true(cloud.ws is not None))
            await cloud.send_action(genuine, "Device", door, "unlock", {}, 30)
            await wait_for("genuine action ends", lambda: terminal(genuine))
            forged = {
                # made a minute ago, its deadline a second ago (a replay of an old request)
                "expired": ("Device", door, "unlock", {}, -1.0, -60.0),
                "other gateway": (
                    "Gateway",
                    "gw-someone-else",
                    "pair_devices",
                    {"duration": 5},
                    30,
                ),
                "foreign device": ("Device", str(uuid.uuid4()), "unlock", {}, 30),
                "unknown action": ("Device", door, "self_destruct", {}, 30),
            }
            ids = {name: str(uuid.uuid4()) for name in forged}
            for name, args in forged.items():
                await cloud.send_action(ids[name], *args)
            await cloud.send_action(genuine, "Device", door, "lock", {}, 30)  # replayed id
            for id_ in ids.values():
                await wait_for("forged action ends", lambda id_=id_: terminal(id_))
            await drained(http, gw)
            locked = (await get_json(http, gw.base + "/status"))["devices"][0]["properties"]
            # A replay after a crash and restart: the store remembers the id.
            gw.kill()
            gw.start()
            await healthy(http, gw)
            await wait_for("reconnected", lambda: _true(cloud.sessions >= 2))
            await cloud.send_action(genuine, "Device", door, "lock", {}, 30)
            await anyio.sleep(1.5)
            await drained(http, gw)
    finally:
        gw.kill()
        await cloud.close()
    rows = [["genuine", "completed", cloud.statuses(genuine), cloud.effects(genuine)]]
    for name, id_ in ids.items():
        rows.append([name, "failed", cloud.statuses(id_), cloud.effects(id_)])
    table("forged / replayed action requests", ["request", "expected", "statuses", "ran"], rows)
    assert cloud.statuses(genuine) == ["gateway_received", "processing", "completed"]
    assert cloud.effects(genuine) == 1  # the replays (live and after a restart) never ran
    assert locked["locked"] is False  # the replayed `lock` did not move the bolt
    expected_errors = {
        "expired": "timeout",
        "other gateway": "invalid_input",
        "foreign device": "device_not_found",
        "unknown action": "action_not_supported",
    }
    for name, id_ in ids.items():
        assert cloud.statuses(id_) == ["gateway_received", "failed"], name
        assert cloud.effects(id_) == 0, name
        error = next(
            b["error"]
            for b in cloud.received
            if b["type"] == "action_status" and b["action_request_id"] == id_ and b["error"]
        )
        assert error["type"] == expected_errors[name], (name, error)


async def _true(value: bool) -> bool:
    return value


def test_the_status_endpoint_refuses_a_non_loopback_bind(tmp_path: Path) -> None:
    port = free_port()
    text = config_text(tmp_path / "state", status_port=port).replace(
        f'listen = "127.0.0.1:{port}"', f'listen = "0.0.0.0:{port}"'
    )
    cfg = tmp_path / "remote.toml"
    cfg.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "gatewayd.cli", "run", "-c", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "allow_remote" in proc.stdout + proc.stderr
    with pytest.raises(ConnectionRefusedError):  # and nothing listens there
        socket.create_connection(("127.0.0.1", port), timeout=1)


async def test_claim_guessing_is_rate_limited(tmp_path: Path) -> None:
    cloud = DevcloudProcess(tmp_path / "cloud.db", tmp_path / "cloud.log").start()
    try:
        async with aiohttp.ClientSession() as http:
            rest = Rest(http, cloud.base)
            code, location = await rest.call(
                "POST", "/v1/locations", {"name": "target", "timezone": "UTC"}
            )
            assert code == 200
            began = time.monotonic()
            answered: dict[int, int] = {}
            for n in range(60):
                code, _ = await rest.call(
                    "POST",
                    f"/v1/locations/{location['id']}/register_gateway",
                    {"registration_token": f"calm-haiku-{n}", "name": "guess"},
                )
                answered[code] = answered.get(code, 0) + 1
            elapsed = time.monotonic() - began
    finally:
        cloud.kill()
    tried = answered.get(404, 0)
    space = len(_ADJECTIVES) * len(_NOUNS) * 100
    table(
        "registration-token guessing",
        [
            "attempts sent",
            "in s",
            "looked up (404)",
            "refused (429)",
            "token space",
            "days to try every token",
        ],
        [
            [
                60,
                f"{elapsed:.1f}",
                tried,
                answered.get(429, 0),
                space,
                f"{space / tried / 60 / 24:.0f}",
            ]
        ],
    )
    print(f"attempts allowed per minute per API key and per address: {tried}")
    assert tried == 10  # the documented limit: 10 per 60 s window
    assert answered.get(429, 0) == 50


async def test_pins_and_credentials_never_reach_a_log_or_the_status_endpoint(
    tmp_path: Path,
) -> None:
    pins = ["80417293", "0062" + "5918"]
    leakscan.register(*pins)
    cloud = DevcloudProcess(tmp_path / "cloud.db", tmp_path / "cloud.log").start()
    gw = GatewayProcess(tmp_path / "gw", tmp_path / "gw.log", cloud.tunnel_url, locks=1).start()
    try:
        async with aiohttp.ClientSession() as http:
            rest = Rest(http, cloud.base)
            gateway_id = await claim(http, rest, gw, 1)
            credential = await credential_of(gw)
            door = (await get_json(http, gw.base + "/status"))["devices"][0]["id"]
            done = []
            for slot, pin in enumerate(pins, start=2):
                code, ar = await rest.call(
                    "POST",
                    f"/v1/devices/{door}/actions/set_code",
                    {"data": {"code": pin, "slot_id": slot}},
                )
                assert code == 200, ar

                async def ended(id_: str = ar["id"]) -> Any:
                    _c, body = await rest.call("GET", f"/v1/action_requests/{id_}")
                    return body if body["status"] in ("completed", "failed") else None

                done.append(await wait_for("set_code ends", ended))
            # A bad PIN (too long) must not be echoed in the validation error either.
            bad = "839206175543"  # distinctive: a sequence like 1234… is in library sources
            leakscan.register(bad)
            code, ar = await rest.call(
                "POST",
                f"/v1/devices/{door}/actions/set_code",
                {"data": {"code": bad, "slot_id": 4}},
            )
            surfaces = [
                await (await http.get(gw.base + "/status")).text(),
                await (await http.get(gw.base + "/metrics")).text(),
                await (await http.get(gw.base + "/")).text(),
                str(await rest.call("GET", "/v1/events")),
                str(await rest.call("GET", f"/v1/gateways/{gateway_id}")),
                str(ar),
                str(done),
            ]
    finally:
        gw.kill()
        cloud.kill()
    assert [d["status"] for d in done] == ["completed", "completed"]
    files, problems = leakscan.scan(tmp_path, [*pins, bad, credential])
    print(f"scanned {files} files and {len(surfaces)} HTTP surfaces for {len(pins) + 2} secrets")
    assert files >= 4
    assert problems == []
    for text in surfaces:
        for secret in (*pins, bad, credential):
            assert secret not in text
    # The stores that hold secrets are private to the service user.
    for path in [tmp_path / "gw" / "gatewayd.db", *(tmp_path / "gw").glob("gatewayd.db-*")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "gw").stat().st_mode) == 0o700
    assert os.environ.get("GATEWAYD_CREDENTIAL") is None


async def test_the_zigbee_network_key_stays_in_its_private_stores(tmp_path: Path) -> None:
    """zigpy forms the network with a fresh random key and keeps it in zigbee.db (and the radio
    keeps it in its memory): both 0600 with their -wal/-shm, the key in no log and no page,
    also after the radio was lost and reconnected (zigpy reads the settings again)."""
    state = tmp_path / "gw"
    gw = GatewayProcess(state, tmp_path / "gw.log", "", locks=0, extra=ZIGBEE_TOML).start()
    try:
        async with aiohttp.ClientSession() as http:
            await healthy(http, gw)

            async def ready() -> Any:
                st = await get_json(http, gw.base + "/status")
                zigbee = st["drivers"]["zigbee"]
                return st if zigbee["state"] == "ready" and zigbee["devices"] == 2 else None

            doors = [d["id"] for d in (await wait_for("zigbee locks", ready, 30))["devices"]]

            async def simulate(door: str, what: str, **params: Any) -> None:
                body = {"device_id": door, "what": what, "params": params}
                async with http.post(gw.base + "/simulate", json=body) as r:
                    assert r.status == 200, await r.text()

            for door in doors:
                await simulate(door, "manual_unlock")  # zigpy writes its attribute cache
            await simulate(doors[0], "fault", kind="radio_unplug")

            async def down() -> bool:
                st = await get_json(http, gw.base + "/status")
                return bool(st["drivers"]["zigbee"]["state"] == "down")

            await wait_for("zigbee radio down", down, 10)
            await simulate(doors[0], "fault", kind="radio_plug")
            st = await wait_for("zigbee radio back", ready, 30)
            assert st["drivers"]["zigbee"]["reconnects"] >= 1
            private = [
                state / name
                for name in ("zigbee.db", "zigbee.db-wal", "zigbee.db-shm", "zigbee.virtual.json")
            ]
            running_modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in private}
            keys = leakscan.register_zigbee_keys(state)
            surfaces = [
                await (await http.get(gw.base + page)).text()
                for page in ("/status", "/metrics", "/")
            ]
        gw.kill(signal.SIGTERM)  # a clean stop: its last log lines too
    finally:
        gw.kill()
    assert running_modes == {p.name: 0o600 for p in private}, running_modes
    for path in state.glob("zigbee*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert len(keys) == 1  # one network, formed once, the same after the reconnect
    forms = leakscan.key_forms(next(iter(keys)))
    files, problems = leakscan.scan(tmp_path, forms)
    print(f"zigbee network key: {len(forms)} forms, {files} files scanned, {len(problems)} leaks")
    assert files >= 5
    assert problems == []
    assert not [text for text in surfaces for form in forms if form in text]
