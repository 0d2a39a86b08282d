"""REST: locations, and claiming a connected gateway into one (`register_gateway`)."""

from __future__ import annotations

import functools
import math
import re
import secrets
import time
import uuid
import zoneinfo
from typing import Final

import structlog
from aiohttp import web

from devcloud.db import secret_hash
from devcloud.errors import ApiError, not_found, read_json
from devcloud.rest_gateways import gateway_view
from devcloud.state import STATE
from devcloud.timeutil import iso, utcnow
from devcloud.validation import Problems, as_object, no_extra, take_str
from gatewayd import protocol

log = structlog.get_logger("devcloud.rest")
routes = web.RouteTableDef()

_TIMEZONE: Final = re.compile(r"[A-Za-z0-9_+\-/]{1,64}")


@functools.cache
def _known_timezones() -> frozenset[str]:
    """The IANA names this machine knows (its tz database, else the tzdata package); empty
    when it has neither: then any name of the right shape is taken."""
    return frozenset(zoneinfo.available_timezones())


def _is_timezone(name: str) -> bool:
    known = _known_timezones()
    return name in known if known else _TIMEZONE.fullmatch(name) is not None


@routes.get("/v1/locations")
@routes.get("/v1/groups")  # seed 001's authentication example: the older name of locations
async def list_locations(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].db.locations())


@routes.post("/v1/locations")
async def create_location(request: web.Request) -> web.Response:
    st = request.app[STATE]
    problems = Problems()
    body = as_object(await read_json(request), problems)
    no_extra(body, {"name", "timezone"}, problems)
    name = take_str(body, "name", problems)
    # seed 001: "When creating a new location, you must specify the timezone"
    timezone = take_str(body, "timezone", problems, max_len=64)
    if timezone is not None and not _is_timezone(timezone):
        problems.add("timezone", "Expected an IANA time zone name, e.g. America/New_York")
    problems.check()
    assert name is not None
    assert timezone is not None
    location = {"id": str(uuid.uuid4()), "name": name}
    st.db.add_location(location["id"], name, timezone, iso(utcnow()))
    log.info("location.created", location_id=location["id"])
    return web.json_response(location)


@routes.post("/v1/locations/{location_id}/register_gateway")
async def register_gateway(request: web.Request) -> web.Response:
    """Claim the connected, unclaimed gateway that presented this registration token."""
    st = request.app[STATE]
    location_id = request.match_info["location_id"]
    keys = ("api_key", ("remote", request.remote))
    if not st.claims.allow(*keys):
        wait = math.ceil(st.claims.retry_after(*keys)) or 1
        raise ApiError(
            429,
            "rate_limited",
            "Too many gateway registrations; try again later",
            headers={"Retry-After": str(wait)},
        )
    if not st.db.location_exists(location_id):
        raise not_found("location")
    problems = Problems()
    body = as_object(await read_json(request), problems)
    no_extra(body, {"registration_token", "name"}, problems)
    token = take_str(body, "registration_token", problems, max_len=100)
    name = take_str(body, "name", problems)
    problems.check()
    assert token is not None
    assert name is not None
    token_hash = secret_hash(token)
    conn = st.hub.unclaimed.get(token_hash)
    known = st.db.token(token_hash)
    if conn is None or conn.ws.closed or known is None or known.claimed:
        raise ApiError(
            404,
            "gateway_not_found",
            "No connected, unclaimed gateway presented this registration token",
        )
    if time.time() - known.first_seen > st.settings.token_ttl_s:
        raise ApiError(400, "registration_token_expired", "This registration token has expired")
    gateway_id = str(uuid.uuid4())
    credential = secrets.token_urlsafe(32)
    cred_hash = secret_hash(credential)
    with st.db.transaction():
        st.db.add_gateway(gateway_id, location_id, name, cred_hash, iso(utcnow()))
        st.db.claim_token(token_hash, gateway_id, time.time())
    if await conn.send(protocol.Claimed(gateway_id=gateway_id, credential=credential)):
        found = st.db.gateway_by_credential(cred_hash)
        if found is None or found[0].id != gateway_id:
            # revoked, or sent again on a redial, while the frame was on its way: this
            # connection speaks for nobody (the gateway dials again on `claimed`)
            log.info("gateway.registration_superseded", gateway_id=gateway_id)
        else:
            replaced = st.hub.promote(conn, gateway_id)
            if replaced is not None:
                await replaced.refuse("replaced", "a newer connection took over")
    elif st.db.undo_claim(gateway_id, token_hash, cred_hash):
        # the answer is 404, so nothing may be claimed: not even when the gateway redials
        log.info("gateway.registration_undone", location_id=location_id)
        raise ApiError(404, "gateway_not_found", "The gateway disconnected before it was claimed")
    else:
        # the gateway redialed meanwhile and was sent a credential again: the claim stands
        log.info("gateway.registration_completed_on_redial", gateway_id=gateway_id)
    log.info("gateway.registered", gateway_id=gateway_id, location_id=location_id)
    gw = st.db.gateway(gateway_id)
    assert gw is not None
    return web.json_response(gateway_view(st, gw))
