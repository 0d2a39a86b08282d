"""/metrics after real actions and door events, read with Prometheus's own text parser, and
the README's metrics table kept true to what the endpoint serves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.driver import Simulation
from gatewayd.model import ActionStatus
from tests.support import ROOT, free_port, running_daemon, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, port: int) -> tuple[Samples, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def act(
    http: aiohttp.ClientSession, port: int, device: str, action: str, **inputs: Any
) -> str:
    body = {"device_id": device, "action": action, "inputs": inputs}
    async with http.post(f"http://127.0.0.1:{port}/actions", json=body) as resp:
        return str((await resp.json())["action_request_id"])


async def test_metrics_count_what_happened(tmp_path: Path) -> None:
    closed = free_port()  # a cloud that is not there: the tunnel retries, the outbox fills
    async with (
        running_daemon(
            tmp_path / "state",
            latency_ms=5,
            cloud_url=f"ws://127.0.0.1:{closed}/v1/gateway/tunnel",
        ) as daemon,
        aiohttp.ClientSession() as http,
    ):
        port = daemon.status_port
        assert port is not None
        assert daemon.registry is not None
        assert daemon.dispatcher is not None
        first, second = (d.id for d in daemon.registry.devices())
        done: dict[str, ActionStatus] = {}
        daemon.status_listeners.append(
            lambda u: done.__setitem__(u.action_request_id, u.status) if u.status.terminal else None
        )
        ids = [
            await act(http, port, first, "unlock"),
            await act(http, port, first, "lock"),
            await act(http, port, second, "unlock"),
            await act(http, port, second, "set_code", code="12", slot_id=2),  # too short
        ]
        await wait_until(lambda: all(i in done for i in ids))
        sim = daemon.registry.drivers["sim"]
        await sim.simulate(second, Simulation.BATTERY, {"level": 0.12})
        await sim.simulate(first, Simulation.OFFLINE, {})
        await wait_until(
            lambda: daemon.tunnel is not None and daemon.tunnel.snapshot()["reconnects"] >= 1
        )

        samples, families = await scrape(http, port)

    assert value(samples, "gatewayd_actions_total", action="unlock", status="completed") == 2
    assert value(samples, "gatewayd_actions_total", action="lock", status="completed") == 1
    assert value(samples, "gatewayd_actions_total", action="set_code", status="failed") == 1
    assert value(samples, "gatewayd_actions_total", action="unlock", status="gateway_received") == 2
    assert families["gatewayd_action_duration_seconds"].type == "histogram"
    assert value(samples, "gatewayd_action_duration_seconds_count", action="unlock") == 2
    assert value(samples, "gatewayd_action_duration_seconds_sum", action="unlock") > 0
    assert (
        value(samples, "gatewayd_action_duration_seconds_bucket", action="unlock", le="+Inf") == 2
    )

    assert value(samples, "gatewayd_tunnel_up") == 0
    assert value(samples, "gatewayd_tunnel_reconnects_total") >= 1
    assert value(samples, "gatewayd_outbox_backlog") > 0  # nothing could be sent
    assert value(samples, "gatewayd_claimed") == 0
    assert value(samples, "gatewayd_info", version=__import__("gatewayd").__version__) == 1

    assert value(samples, "gatewayd_devices", protocol="sim", online="true") == 1
    assert value(samples, "gatewayd_devices", protocol="sim", online="false") == 1
    assert value(samples, "gatewayd_battery_level", device_id=second) == 0.12
    assert value(samples, "gatewayd_events_total", event_name="door unlocked") == 2
    assert value(samples, "gatewayd_events_total", event_name="door locked") == 1
    assert value(samples, "gatewayd_events_total", event_name="low battery") == 1
    assert value(samples, "gatewayd_events_total", event_name="device disconnected") == 1
    assert value(samples, "gatewayd_driver_up", driver="sim") == 1

    # Every family the endpoint serves is in the README's table, with its type.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Metrics", 1)[1]
    documented = dict(re.findall(r"^\| `(gatewayd_\w+)` \| (\w+) \|", section, re.M))
    served = {
        name + ("_total" if family.type == "counter" else ""): family.type
        for name, family in families.items()
        if not name.endswith("_created")  # the client's start-time series of counters
    }
    assert documented == served
