"""A request the gateway received and never finished ends `failed` once the gateway is gone."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from gatewayd import protocol as p
from tests.cloudkit import SteppedClock, TunnelClient
from tests.devcloud.conftest import DEVICE_ID, Cloud, CloudFactory

FAST = {"action_timeout_s": 0.5, "report_grace_s": 0.3, "overdue_check_s": 0.05}


async def _report(tunnel: TunnelClient, action_id: str, *statuses: str) -> None:
    for status in statuses:
        seq = tunnel.next_seq()
        await tunnel.send(
            p.ActionStatusMsg(
                seq=seq, action_request_id=action_id, status=status, error=None, at="x"
            )
        )
        assert await tunnel.recv() == p.Ack(seq=seq)


async def _processing(cloud: Cloud, tunnel: TunnelClient) -> str:
    status, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock", {})
    assert status == 200, created
    sent = await tunnel.recv()
    assert isinstance(sent, p.ActionRequestMsg)
    await _report(tunnel, sent.id, "gateway_received", "processing")
    return sent.id


async def _status_after(cloud: Cloud, action_id: str, seconds: float) -> dict[str, object]:
    await asyncio.sleep(seconds)
    shown: dict[str, object] = await cloud.get(f"/v1/action_requests/{action_id}")
    return shown


async def test_a_request_left_processing_by_a_gateway_gone_offline_ends_failed(
    make_cloud: CloudFactory,
) -> None:
    """killed mid-unlock, a gateway that never came back left the request `processing` for
    good, long past its deadline: a client polling it waited forever."""
    cloud = await make_cloud(**FAST)
    tunnel, _, credential = await cloud.claimed_gateway()
    action_id = await _processing(cloud, tunnel)
    # connected, the gateway fails the request itself at the deadline: the cloud waits for it
    assert (await _status_after(cloud, action_id, 1.2))["status"] == "processing"
    await tunnel.ws.close()
    shown = await _status_after(cloud, action_id, 1.2)
    assert shown["status"] == "failed"
    assert shown["error"] == {
        "type": "gateway_lost",
        "message": "The gateway went offline before it reported the outcome;"
        " the lock may have moved",
    }
    history = cloud.state.db.transitions(action_id)
    assert [(s, src) for s, _, src in history][-1] == ("failed", "cloud")
    # the gateway's own word, when it comes back, cannot change a final status
    back = await cloud.tunnel(credential)
    back.seq = tunnel.seq  # the gateway's seqs go on
    assert isinstance(await back.hello(), p.Welcome)
    await _report(back, action_id, "completed")
    assert (await cloud.get(f"/v1/action_requests/{action_id}"))["status"] == "failed"


async def test_a_request_whose_deadline_has_not_passed_is_left_to_the_gateway(
    make_cloud: CloudFactory,
) -> None:
    cloud = await make_cloud(action_timeout_s=60.0, report_grace_s=0.0, overdue_check_s=0.05)
    tunnel, _, _ = await cloud.claimed_gateway()
    action_id = await _processing(cloud, tunnel)
    await tunnel.ws.close()
    assert (await _status_after(cloud, action_id, 0.5))["status"] == "processing"


async def test_a_request_a_gateway_came_back_without_is_failed_though_it_is_connected(
    make_cloud: CloudFactory,
) -> None:
    """A gateway reported an unlock `processing`, then restarted with a store that had lost it
    (a power cut took its last commits, or a backup was restored): it came back at once and
    stayed connected, so the cloud left the request to it, and it was `processing` for good.
    Reported in a session that has ended, it is failed as for a gateway that stayed away."""
    cloud = await make_cloud(**FAST)
    tunnel, gateway_id, credential = await cloud.claimed_gateway()
    action_id = await _processing(cloud, tunnel)
    await tunnel.ws.close()
    back = await cloud.tunnel(credential)
    assert isinstance(await back.hello(), p.Welcome)  # back before the deadline, and stays
    shown = await _status_after(cloud, action_id, 1.2)
    assert shown["status"] == "failed"
    assert shown["error"]["type"] == "gateway_lost"  # type: ignore[index]
    assert cloud.state.hub.online(gateway_id)


async def test_a_request_the_gateway_still_reports_after_a_reconnect_is_left_to_it(
    make_cloud: CloudFactory,
) -> None:
    """A link that flapped: the gateway, back, reports the request in its new session; the
    cloud waits for the outcome, as for a gateway that never left."""
    cloud = await make_cloud(**FAST)
    tunnel, _, credential = await cloud.claimed_gateway()
    status, created = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/unlock", {})
    assert status == 200, created
    sent = await tunnel.recv()
    assert isinstance(sent, p.ActionRequestMsg)
    await _report(tunnel, sent.id, "gateway_received")
    await tunnel.ws.close()
    back = await cloud.tunnel(credential)
    back.seq = tunnel.seq
    assert isinstance(await back.hello(), p.Welcome)
    await _report(back, sent.id, "processing")
    assert (await _status_after(cloud, sent.id, 1.2))["status"] == "processing"


async def test_a_request_reported_after_the_clouds_clock_stepped_back_is_left_to_the_gateway(
    make_cloud: CloudFactory,
) -> None:
    """The cloud's clock stepped back (NTP) after the gateway connected: every report in the
    session was stamped before the session began, so a connected gateway's `processing`
    request was failed `gateway_lost` as one reported in a session that had ended."""
    clock = SteppedClock()
    cloud = await make_cloud(clock=clock, **FAST)
    tunnel, _, _ = await cloud.claimed_gateway()
    clock.step = timedelta(hours=-1)
    action_id = await _processing(cloud, tunnel)
    assert (await _status_after(cloud, action_id, 1.2))["status"] == "processing"
    await tunnel.ws.close()  # gone, it is failed as before
    assert (await _status_after(cloud, action_id, 1.2))["status"] == "failed"
