"""REST: devices and their actions, action requests, and the event list."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from devcloud.actions import action_view
from devcloud.errors import ApiError, not_found, read_json
from devcloud.state import STATE
from devcloud.timeutil import iso, parse_iso
from devcloud.validation import Problems, device_action_inputs

routes = web.RouteTableDef()

DEVICE_ACTIONS: Final = ("lock", "unlock", "set_code", "clear_code")
_EVENT_QUERY: Final = frozenset({"device_id", "since", "until", "limit", "after"})


@routes.get("/v1/devices")
async def list_devices(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].db.devices())


@routes.get("/v1/devices/{device_id}")
async def get_device(request: web.Request) -> web.Response:
    device = request.app[STATE].db.device(request.match_info["device_id"])
    if device is None:
        raise not_found("device")
    return web.json_response(device)


@routes.post("/v1/devices/{device_id}/actions/{action}")
async def device_action(request: web.Request) -> web.Response:
    st = request.app[STATE]
    device_id = request.match_info["device_id"]
    device = st.db.device(device_id)
    owner = st.db.device_owner(device_id)
    if device is None or owner is None:
        raise not_found("device")
    gateway = st.db.gateway(owner)
    if gateway is None:
        raise not_found("device")
    action = request.match_info["action"]
    listed = device.get("actions")
    if action not in DEVICE_ACTIONS or (isinstance(listed, dict) and action not in listed):
        raise ApiError(400, "action_not_supported", "This device does not support that action")
    inputs = device_action_inputs(action, device, await read_json(request))
    view = await st.actions.create(
        entity_type="Device",
        entity_id=device_id,
        gateway_id=gateway.id,
        location_id=gateway.location_id,
        action=action,
        inputs=inputs,
    )
    return web.json_response(view)


@routes.get("/v1/action_requests/{action_request_id}")
async def get_action_request(request: web.Request) -> web.Response:
    row = request.app[STATE].db.action(request.match_info["action_request_id"])
    if row is None:
        raise not_found("action_request")
    return web.json_response(action_view(row))


@routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    """Events, oldest first; filter by `device_id` and by `since` / `until` (ISO-8601). At
    most `limit` (1000): the latest ones, or with `since` or `after` the first ones from it (to
    page forward, pass the last event's id as `after`: a `date_created` as the next `since`
    repeats the events of that time, and more of them than `limit` would end the paging)."""
    query = request.query
    problems = Problems()
    for key in query:
        if key not in _EVENT_QUERY:
            problems.add(key[:64], "Unrecognized parameter")
    bounds: dict[str, str | None] = {"since": None, "until": None}
    for key in bounds:
        if key in query:
            ts = parse_iso(query[key]) if len(query[key]) <= 64 else None
            if ts is None:
                problems.add(key, "Expected an ISO-8601 timestamp")
            else:
                bounds[key] = iso(ts)
    limit = 1000
    if "limit" in query:
        raw = query["limit"]
        # the length first: int() refuses strings of over 4300 digits with a ValueError
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and 1 <= int(raw) <= 1000):
            problems.add("limit", "Must be an integer between 1 and 1000")
        else:
            limit = int(raw)
    device_id = query.get("device_id")
    if device_id is not None and not 1 <= len(device_id) <= 200:
        problems.add("device_id", "Must be between 1 and 200 characters")
    db = request.app[STATE].db
    after = None
    if "after" in query:
        after = db.event_position(query["after"]) if len(query["after"]) <= 128 else None
        if after is None:
            problems.add("after", "Expected the id of a listed event")
    problems.check()
    events = db.events(device_id, bounds["since"], bounds["until"], limit, after)
    return web.json_response(events)
