"""REST: gateways — list, get, rename, pair/unpair actions, credential rotation and revocation."""

from __future__ import annotations

import secrets
import time
from typing import Any

import structlog
from aiohttp import web

from devcloud.db import GatewayRow, secret_hash
from devcloud.errors import ApiError, not_found, read_json
from devcloud.state import STATE, State
from devcloud.validation import Problems, as_object, gateway_action_inputs, no_extra, take_str
from gatewayd import protocol

log = structlog.get_logger("devcloud.rest")
routes = web.RouteTableDef()


def gateway_view(st: State, gw: GatewayRow) -> dict[str, Any]:
    """A gateway as seed 001 shows it: id, devices (summaries), name, status."""
    devices = [
        {k: d.get(k) for k in ("id", "name", "manufacturer", "model")} for d in st.db.devices(gw.id)
    ]
    status = "online" if st.hub.online(gw.id) else "offline"
    return {"id": gw.id, "devices": devices, "name": gw.name, "status": status}


def _gateway(st: State, request: web.Request) -> GatewayRow:
    gw = st.db.gateway(request.match_info["gateway_id"])
    if gw is None:
        raise not_found("gateway")
    return gw


@routes.get("/v1/gateways")
async def list_gateways(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.json_response([gateway_view(st, gw) for gw in st.db.gateways()])


@routes.get("/v1/gateways/{gateway_id}")
async def get_gateway(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.json_response(gateway_view(st, _gateway(st, request)))


@routes.put("/v1/gateways/{gateway_id}")
async def update_gateway(request: web.Request) -> web.Response:
    st = request.app[STATE]
    gw = _gateway(st, request)
    problems = Problems()
    body = as_object(await read_json(request), problems)
    no_extra(body, {"name"}, problems)
    name = take_str(body, "name", problems)
    problems.check()
    assert name is not None
    st.db.rename_gateway(gw.id, name)
    renamed = st.db.gateway(gw.id)
    assert renamed is not None
    return web.json_response(gateway_view(st, renamed))


@routes.post(r"/v1/gateways/{gateway_id}/actions/{action:(pair_devices|unpair_devices)}")
async def gateway_action(request: web.Request) -> web.Response:
    st = request.app[STATE]
    gw = _gateway(st, request)
    action = request.match_info["action"]
    inputs = gateway_action_inputs(action, await read_json(request))
    device_id = inputs.get("device_id")
    if device_id is not None and st.db.device_owner(device_id) != gw.id:
        raise not_found("device")
    view = await st.actions.create(
        entity_type="Gateway",
        entity_id=gw.id,
        gateway_id=gw.id,
        location_id=gw.location_id,
        action=action,
        inputs=inputs,
    )
    return web.json_response(view)


@routes.post("/v1/gateways/{gateway_id}/actions/rotate_credential")
async def rotate_credential(request: web.Request) -> web.Response:
    """Issue a new credential over the live tunnel. The old one keeps working until the gateway
    has connected with the new one, so a `claimed` frame lost on a dying socket cannot lock the
    gateway out: it comes back with the old credential and is sent a fresh one. Until then a
    further rotation is refused (409): it would retire the credential the gateway may hold."""
    st = request.app[STATE]
    gw = _gateway(st, request)
    _no_body(await read_json(request))
    pending = ApiError(
        409,
        "credential_rotation_pending",
        "The gateway has not yet connected with the credential of the last rotation;"
        " try again once it has",
    )
    if gw.rotation_pending:
        raise pending  # at once: it is the gateway, not its session, that has to catch up
    # Right after a claim the gateway redials, reading nothing more on the session that sent
    # `claimed`: the rotation goes to the session that follows, as an action would.
    conn = await st.hub.live(gw.id, st.settings.handoff_timeout_s)
    if conn is None or conn.ws.closed:
        raise ApiError(
            400, "gateway_offline", "The gateway must be online to rotate its credential"
        )
    credential = secrets.token_urlsafe(32)
    if not st.db.start_rotation(gw.id, secret_hash(credential)):
        raise pending
    if not await conn.send(protocol.Claimed(gateway_id=gw.id, credential=credential)):
        raise ApiError(
            400, "gateway_offline", "The gateway went offline; it gets a new credential on return"
        )
    log.info("gateway.credential_rotated", gateway_id=gw.id)
    return web.json_response(gateway_view(st, gw))


@routes.post("/v1/gateways/{gateway_id}/actions/revoke_credential")
async def revoke_credential(request: web.Request) -> web.Response:
    """Revoke the credential and drop the gateway's tunnel; it must be registered again."""
    st = request.app[STATE]
    gw = _gateway(st, request)
    _no_body(await read_json(request))
    with st.db.transaction():
        st.db.set_credential(gw.id, None)
        # else a gateway that never used its credential would be claimed again by its token
        st.db.retire_tokens(gw.id, time.time())
        ended = st.actions.fail_in_flight(gw.id)
    conn = st.hub.claimed.get(gw.id)
    if conn is not None:
        st.hub.detach(conn)
        await conn.refuse("revoked", "the gateway credential was revoked")
    log.info("gateway.credential_revoked", gateway_id=gw.id, actions_failed=ended)
    return web.json_response(gateway_view(st, gw))


# after every gateway action above: aiohttp matches routes in the order they were added
@routes.post("/v1/gateways/{gateway_id}/actions/{action}")
async def unknown_gateway_action(request: web.Request) -> web.Response:
    """A gateway action this cloud does not have: typed, as for a device's."""
    _gateway(request.app[STATE], request)
    raise ApiError(400, "action_not_supported", "A gateway does not support that action")


def _no_body(body: Any) -> None:
    problems = Problems()
    no_extra(as_object(body, problems), set(), problems)
    problems.check()
