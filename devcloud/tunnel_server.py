"""The tunnel's cloud end: `GET /v1/gateway/tunnel` upgraded to a websocket.

Claimed gateways authenticate at the upgrade (`Authorization: Bearer <credential>`, 401 if
wrong or revoked); unclaimed ones present a registration token in `hello` and wait for
`claimed`. A bad frame gets an `error` frame and the socket is closed; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable
from typing import Final

import structlog
from aiohttp import WSMsgType, web

from devcloud import state
from devcloud.db import secret_hash
from devcloud.errors import error_response, request_id
from devcloud.hub import Connection
from devcloud.timeutil import iso
from gatewayd import protocol

log = structlog.get_logger("devcloud.tunnel")

_TOKEN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,99}")


async def tunnel_handler(request: web.Request) -> web.StreamResponse:
    app = request.app[state.STATE]
    gateway_id: str | None = None
    credential_hash: str | None = None
    stale_credential = False
    auth = request.headers.get("Authorization")
    if auth is not None:
        scheme, _, credential = auth.partition(" ")
        found = None
        if scheme.lower() == "bearer" and credential.strip():
            credential_hash = secret_hash(credential.strip())
            found = app.db.gateway_by_credential(credential_hash)
        if found is None:
            log.warning("tunnel.unauthorized", remote=request.remote)
            return error_response(
                401, "unauthorized", "Invalid gateway credential", request_id(request)
            )
        gateway, stale_credential = found
        gateway_id = gateway.id
        if not stale_credential:
            app.db.credential_confirmed(gateway.id, time.time())
    ws = web.WebSocketResponse(
        heartbeat=app.settings.heartbeat_s, max_msg_size=4 * protocol.MAX_FRAME_BYTES
    )
    if not ws.can_prepare(request).ok:
        return error_response(
            400, "invalid_request", "Expected a websocket upgrade", request_id(request)
        )
    await ws.prepare(request)
    conn = Connection(
        ws=ws,
        remote=request.remote or "",
        gateway_id=gateway_id,
        credential_hash=credential_hash,
        stale_credential=stale_credential,
    )
    try:
        await _session(app, conn)
    finally:
        app.hub.detach(conn)
        conn.ended()
        if not ws.closed:
            await ws.close()
        log.info("tunnel.closed", gateway_id=conn.gateway_id, remote=conn.remote)
    return ws


async def _session(app: state.State, conn: Connection) -> None:
    first = await _next_frame(conn, app.settings.hello_timeout_s)
    if first is None:
        return
    if not isinstance(first, protocol.Hello):
        await conn.refuse("invalid", "the first frame must be hello")
        return
    try:
        protocol.check_version(first.protocol)
    except protocol.ProtocolError as exc:
        await conn.refuse(exc.code, exc.message)
        return
    if conn.gateway_id is None:
        if not await _open_unclaimed(app, conn, first):
            return
    elif not _credential_holds(app, conn):
        # revoked while this connection waited for its hello: the REST call found no session
        # to close, so none may open now (nothing is awaited from here to attach)
        await conn.refuse("revoked", "the gateway credential was revoked")
        return
    replaced = app.hub.attach(conn)
    if replaced is not None:
        await replaced.refuse("replaced", "a newer connection took over")
    acked = 0 if conn.gateway_id is None else app.db.high_water(conn.gateway_id)
    cancelled = (
        []
        if conn.gateway_id is None
        else app.db.cancelled_actions(conn.gateway_id, iso(app.hub.clock()))
    )
    welcome = protocol.Welcome(
        protocol=protocol.PROTOCOL_VERSION,
        gateway_id=conn.gateway_id,
        acked_seq=acked,
        heartbeat_s=app.settings.heartbeat_s,
        cancelled=cancelled,
        server_time=iso(conn.session_time(app.hub.monotonic())),
    )
    if not await conn.send(welcome):
        return
    if conn.claim_for is not None and not await _claim_again(app, conn, conn.claim_for):
        return
    if (
        conn.stale_credential
        and conn.gateway_id is not None
        and app.hub.claimed.get(conn.gateway_id) is conn  # not revoked or replaced meanwhile
    ):
        # The gateway missed its rotated credential: issue another over this session.
        if await _send_credential(conn, conn.gateway_id, app.db.rotate_credential) is None:
            return
        log.info("tunnel.credential_reissued", gateway_id=conn.gateway_id)
    log.info(
        "tunnel.accepted",
        gateway_id=conn.gateway_id,
        remote=conn.remote,
        software_version=first.software_version[:40],
        acked_seq=acked,
    )
    expiry = None
    if conn.gateway_id is None and conn.token_expires is not None:
        expiry = asyncio.create_task(_expire_unclaimed(conn, conn.token_expires - time.time()))
    try:
        while True:
            msg = await _next_frame(conn, None)
            if msg is None:
                return
            if not await _handle(app, conn, msg):
                return
    finally:
        if expiry is not None:
            expiry.cancel()


def _credential_holds(app: state.State, conn: Connection) -> bool:
    """The credential this connection authenticated with still belongs to its gateway; notes
    whether it has become the one rotated away from."""
    if conn.credential_hash is None:
        return False
    found = app.db.gateway_by_credential(conn.credential_hash)
    if found is None or found[0].id != conn.gateway_id:
        return False
    conn.stale_credential = found[1]
    return True


async def _send_credential(
    conn: Connection, gateway_id: str, keep: Callable[[str, str], None]
) -> str | None:
    """A fresh credential for `gateway_id`: its hash kept with `keep(gateway_id, hash)`, the
    credential sent in `claimed`. Returns the hash, or None if the socket is gone."""
    fresh = secrets.token_urlsafe(32)
    kept = secret_hash(fresh)
    keep(gateway_id, kept)
    if not await conn.send(protocol.Claimed(gateway_id=gateway_id, credential=fresh)):
        return None
    return kept


async def _expire_unclaimed(conn: Connection, after_s: float) -> None:
    """Close a session still unclaimed when its token expires: the gateway then redials, is
    refused `registration_token_expired`, and shows a new token to claim it with."""
    await asyncio.sleep(max(after_s, 0.0))
    if conn.gateway_id is None:
        await conn.refuse("registration_token_expired", "this registration token has expired")


async def _open_unclaimed(app: state.State, conn: Connection, hello: protocol.Hello) -> bool:
    token = hello.registration_token
    if token is None or not _TOKEN.fullmatch(token):
        await conn.refuse("unauthorized", "a credential or a registration token is required")
        return False
    token_hash = secret_hash(token)
    if app.db.token(token_hash) is None and not app.new_tokens.allow(conn.remote):
        # each new token is a stored row and a held session: an unauthenticated client
        # inventing tokens would grow both without bound
        log.warning("tunnel.new_tokens_limited", remote=conn.remote)
        await conn.refuse("rate_limited", "too many new registration tokens; try again later")
        return False
    now = time.time()
    seen = app.db.token_seen(token_hash, now)
    if now - seen.first_seen > app.settings.token_ttl_s:
        await conn.refuse("registration_token_expired", "this registration token has expired")
        return False
    if seen.claimed and (seen.confirmed or seen.gateway_id is None):
        await conn.refuse("registration_token_used", "this registration token was already used")
        return False
    # Claimed, but the gateway never connected with its credential: the `claimed` frame was
    # lost (the socket died under it, or the gateway could not store it). It is sent again,
    # with a fresh credential, until the gateway uses one or the token expires.
    conn.claim_for = seen.gateway_id
    conn.token_hash = token_hash
    conn.token_expires = seen.first_seen + app.settings.token_ttl_s
    return True


async def _claim_again(app: state.State, conn: Connection, gateway_id: str) -> bool:
    """Send `claimed` again to the holder of the token that claimed `gateway_id`."""
    token = None if conn.token_hash is None else app.db.token(conn.token_hash)
    if token is not None and not token.claimed:
        # the claim was undone (its `claimed` frame could not be sent) while the welcome was on
        # its way: this session waits to be registered like any unclaimed one
        conn.claim_for = None
        return True
    if token is None or token.confirmed or token.gateway_id != gateway_id:
        # revoked (or used) while the welcome was on its way
        await conn.refuse("registration_token_used", "this registration token was already used")
        return False
    kept = await _send_credential(conn, gateway_id, app.db.set_credential)
    if kept is None:
        return False
    found = app.db.gateway_by_credential(kept)
    if found is None or found[0].id != gateway_id:
        # revoked, or sent again to a newer session, while the frame was on its way: this
        # session may not speak for the gateway
        gateway = app.db.gateway(gateway_id)
        if gateway is None or not gateway.has_credential:
            await conn.refuse("revoked", "the gateway credential was revoked")
        else:
            await conn.refuse("replaced", "a newer connection took over")
        return False
    replaced = app.hub.promote(conn, gateway_id)
    if replaced is not None:
        await replaced.refuse("replaced", "a newer connection took over")
    log.info("tunnel.claim_resent", gateway_id=gateway_id)
    return True


async def _next_frame(conn: Connection, wait_s: float | None) -> protocol.Message | None:
    """The next decoded frame, or None once the session is over (after refusing a bad one)."""
    try:
        raw = await conn.ws.receive(timeout=wait_s)
    except TimeoutError:
        await conn.refuse("invalid", "no hello received in time")
        return None
    if raw.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        return None
    if raw.type == WSMsgType.ERROR:
        # a frame over the socket's limit included: aiohttp has closed it with 1009 (message
        # too big) already, so no `error` frame can follow
        log.info("tunnel.socket_error", gateway_id=conn.gateway_id)
        return None
    if raw.type != WSMsgType.TEXT:
        await conn.refuse("malformed", "frames are JSON text")
        return None
    try:
        return protocol.decode(raw.data)
    except protocol.ProtocolError as exc:
        log.warning("tunnel.bad_frame", gateway_id=conn.gateway_id, error_code=exc.code)
        await conn.refuse(exc.code, exc.message)
        return None


async def _handle(app: state.State, conn: Connection, msg: protocol.Message) -> bool:
    """Act on one frame after hello; False ends the session."""
    match msg:
        case (
            protocol.ActionStatusMsg()
            | protocol.EventMsg()
            | protocol.DeviceMsg()
            | protocol.DeviceRemovedMsg()
        ):
            if conn.gateway_id is None:
                await conn.refuse("unauthorized", "an unclaimed gateway may only wait for claimed")
                return False
            if app.hub.claimed.get(conn.gateway_id) is not conn:
                # revoked or replaced (the revoker or the newer session refuses it): a frame
                # still on its way is neither stored nor acked
                log.info("tunnel.frame_dropped", gateway_id=conn.gateway_id, seq=msg.seq)
                return False
            acked, cancel = app.ingest.apply(conn.gateway_id, msg)
            if cancel is not None and not await conn.send(cancel):
                return False
            return await conn.send(protocol.Ack(seq=acked))
        case protocol.ErrorMsg():
            log.warning("tunnel.peer_error", gateway_id=conn.gateway_id, error_code=msg.code[:40])
            return False
        case _:
            kind = type(msg).__struct_config__.tag
            await conn.refuse("invalid", f"a gateway does not send {kind}")
            return False
