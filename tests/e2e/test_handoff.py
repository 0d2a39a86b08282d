"""A slow link delays an action past the cloud's hand-off timeout: the cloud has told its user
`gateway_failure`, so the gateway must never run it late. Real devcloud, real daemon, a real
TCP proxy that delays every byte both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import CloudFactory, claim, transitions, tunnel_url, wait_action
from tests.proxy import FaultProxy
from tests.support import running_daemon, wait_until

pytestmark = pytest.mark.stack

HANDOFF_S = 1.0
LINK_DELAY_S = 1.5  # each way: the receipt reaches the cloud ~3 s after the request left


async def test_an_action_the_cloud_gave_up_on_is_never_run_late(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    cloud = await cloud_factory(handoff_timeout_s=HANDOFF_S)
    proxy = await FaultProxy(cloud.server.port).start()
    try:
        async with running_daemon(
            tmp_path / "gw", cloud_url=tunnel_url(proxy.port), latency_ms=1
        ) as daemon:
            await claim(cloud, daemon)
            await wait_until(lambda: len(cloud.state.db.devices()) == 2)
            device = (await cloud.get("/v1/devices"))[0]
            locked_before = daemon.registry.device(device["id"]).properties.locked  # type: ignore[union-attr]
            assert locked_before is not None
            action = "lock" if not locked_before else "unlock"

            proxy.delay_s = LINK_DELAY_S
            status, late = await cloud.post(f"/v1/devices/{device['id']}/actions/{action}", {})
            assert status == 200, late
            shown = await wait_action(cloud, late["id"], timeout=10)
            assert shown["status"] == "gateway_failure"
            assert shown["error"]["type"] == "gateway_timeout"

            # The request still reaches the gateway; its receipt reaches the cloud late and
            # is answered with action_cancel: the gateway reports it failed, never runs it.
            dispatcher = daemon.dispatcher
            assert dispatcher is not None
            await wait_until(lambda: dispatcher.counts.get("failed", 0) >= 1, 15)
            recent = dispatcher.recent_snapshots(5)
            mine = next(a for a in recent if a["id"] == late["id"])
            assert mine["status"] == "failed"
            assert mine["error"]["type"] == "cancelled"
            assert [t["status"] for t in mine["transitions"]] == ["gateway_received", "failed"]
            assert dispatcher.counts.get("processing", 0) == 0
            assert daemon.registry.device(device["id"]).properties.locked == locked_before  # type: ignore[union-attr]

            # Once the link is back to normal, actions run as before.
            proxy.delay_s = 0.0
            await wait_until(lambda: daemon.store.outbox_backlog() == 0, 15)  # type: ignore[union-attr]
            status, ok = await cloud.post(f"/v1/devices/{device['id']}/actions/{action}", {})
            assert (await wait_action(cloud, ok["id"]))["status"] == "completed"
            assert daemon.registry.device(device["id"]).properties.locked != locked_before  # type: ignore[union-attr]
    finally:
        await proxy.close()
    shown = await cloud.get(f"/v1/action_requests/{late['id']}")
    assert shown["status"] == "gateway_failure"  # the late `failed` report did not rewrite it
    assert transitions(cloud, late["id"]) == ["pending", "gateway_failure"]
    names = [
        r[0]
        for r in cloud.state.db._conn.execute(
            "SELECT json_extract(body, '$.details.action_request_id') FROM events"
        )
    ]
    assert late["id"] not in names  # no door event answers the cancelled action


async def test_a_receipt_resent_after_a_revoke_and_a_new_claim_does_not_run_the_action(
    tmp_path: Path, cloud_factory: CloudFactory
) -> None:
    """The gateway received an unlock, and its receipt was still on the wire when the operator
    revoked it; the cloud told its user `gateway_failure`. Claimed again, the box is a new
    gateway and resends the receipt from its outbox: the cloud acked it without a cancel (the
    request is another gateway's), that ack was the go-ahead, and the lock moved."""
    cloud = await cloud_factory(handoff_timeout_s=HANDOFF_S)
    proxy = await FaultProxy(cloud.server.port).start()
    try:
        async with running_daemon(
            tmp_path / "gw", cloud_url=tunnel_url(proxy.port), latency_ms=1
        ) as daemon:
            store, registry, dispatcher = daemon.store, daemon.registry, daemon.dispatcher
            assert store is not None
            assert registry is not None
            assert dispatcher is not None
            _, old_id = await claim(cloud, daemon)
            await wait_until(lambda: len(cloud.state.db.devices()) == 2)
            await wait_until(lambda: store.outbox_backlog() == 0, 15)
            device = (await cloud.get("/v1/devices"))[0]
            locked_before = registry.device(device["id"]).properties.locked  # type: ignore[union-attr]
            assert locked_before is not None
            action = "lock" if not locked_before else "unlock"

            proxy.delay_s = LINK_DELAY_S
            status, late = await cloud.post(f"/v1/devices/{device['id']}/actions/{action}", {})
            assert status == 200, late
            # the box holds the request, waiting for the ack of its receipt: revoke now
            await wait_until(lambda: dispatcher.queued() == 1 and store.outbox_backlog() == 1, 10)
            status, _ = await cloud.post(f"/v1/gateways/{old_id}/actions/revoke_credential")
            assert status == 200
            shown = await wait_action(cloud, late["id"], timeout=10)
            assert shown["status"] == "gateway_failure"

            proxy.delay_s = 0.0
            await wait_until(lambda: not store.identity().claimed, 15)
            _, new_id = await claim(cloud, daemon)
            assert new_id != old_id
            await wait_until(lambda: store.outbox_backlog() == 0, 15)  # the receipt was acked

            def ended() -> dict[str, Any] | None:
                mine = [a for a in dispatcher.recent_snapshots(10) if a["id"] == late["id"]]
                return mine[0] if mine and mine[0]["status"] in ("completed", "failed") else None

            await wait_until(lambda: ended() is not None, 15)
            assert registry.device(device["id"]).properties.locked == locked_before  # type: ignore[union-attr]
            mine = ended()
            assert mine is not None
            assert (mine["status"], mine["error"]["type"]) == ("failed", "cancelled")
            assert dispatcher.counts.get("processing", 0) == 0
    finally:
        await proxy.close()
    assert (await cloud.get(f"/v1/action_requests/{late['id']}"))["status"] == "gateway_failure"
