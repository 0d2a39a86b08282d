"""Who is connected: claimed gateways by id, unclaimed ones by the hash of their token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from aiohttp import web

from devcloud.timeutil import WallClock, utcnow
from gatewayd import protocol

log = structlog.get_logger("devcloud.tunnel")

# Websocket close codes used after an `error` frame.
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_PROTOCOL = 1002


@dataclass(eq=False)
class Connection:
    """One gateway's websocket; sends are serialized so frames never interleave."""

    ws: web.WebSocketResponse
    remote: str
    gateway_id: str | None = None
    token_hash: str | None = None
    credential_hash: str | None = None  # what it authenticated with at the upgrade
    stale_credential: bool = False  # authenticated with a credential rotated away from
    claim_for: str | None = None  # unclaimed, with a token that claimed this gateway already
    # sent `claimed`: the gateway stores the credential and redials, reading nothing more here
    retiring: bool = False
    token_expires: float | None = None  # unclaimed: when its registration token expires
    # the cloud's wall clock and the monotonic one when the session began: its session clock
    started: tuple[datetime, float] | None = None
    # claimed: requests it reported received or processing and has not finished
    in_flight: set[str] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _welcomed: asyncio.Event = field(default_factory=asyncio.Event)  # or the session is over
    _welcome_sent: bool = False

    async def send(self, msg: protocol.Message) -> bool:
        """Send one frame; False if the socket is gone. Only `welcome` and `error` go out
        before the welcome: a gateway reads nothing else until it has one."""
        if not isinstance(msg, protocol.Welcome | protocol.ErrorMsg):
            await self._welcomed.wait()
            if not self._welcome_sent:
                return False
        if self.ws.closed:
            return False
        try:
            frame = protocol.encode(msg).decode()
            async with self._lock:
                if self.retiring and isinstance(msg, protocol.ActionRequestMsg):
                    return False  # after `claimed` the gateway redials, reading nothing here
                await self.ws.send_str(frame)
                if isinstance(msg, protocol.Welcome):
                    self._welcome_sent = True
                    self._welcomed.set()
                elif isinstance(msg, protocol.Claimed):
                    self.retiring = True
        except (ConnectionError, RuntimeError, protocol.ProtocolError) as exc:
            log.warning("tunnel.send_failed", gateway_id=self.gateway_id, error=type(exc).__name__)
            return False
        return True

    def session_time(self, mono: float) -> datetime:
        """The session clock at monotonic time `mono`: the wall clock at its start carried on
        the monotonic clock. The welcome's `server_time` is read on it, and so are the stamps
        of the requests sent after: the gateway reads their deadlines on the welcome's time
        carried on its own monotonic clock, so a step of the cloud's wall clock since (NTP)
        must not move them, or every request is past its deadline (stepped back) or late."""
        assert self.started is not None
        wall, mono_then = self.started
        return wall + timedelta(seconds=mono - mono_then)

    def ended(self) -> None:
        """The session is over: senders waiting for its welcome go on (and find it closed)."""
        self._welcomed.set()

    async def refuse(self, code: str, message: str) -> None:
        """Send an `error` frame, then close."""
        await self.send(protocol.ErrorMsg(code=code, message=message))
        close = {"too_large": CLOSE_TOO_BIG, "malformed": CLOSE_PROTOCOL}.get(code, CLOSE_POLICY)
        await self.ws.close(code=close, message=code.encode()[:100])


class Hub:
    """The live connections. A newer connection for the same gateway or token replaces the older."""

    def __init__(
        self, clock: WallClock = utcnow, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock  # timestamps
        self.monotonic = monotonic  # session clocks
        self.claimed: dict[str, Connection] = {}
        self.unclaimed: dict[str, Connection] = {}
        # gateways whose retiring session closed: when (monotonic), until the next one attaches
        self._redialling: dict[str, float] = {}
        self._change = asyncio.Event()  # set (and replaced) whenever a session comes or goes

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def live(self, gateway_id: str, wait_s: float) -> Connection | None:
        """The session to send a request on. While the gateway redials after `claimed` (a
        rotation, its registration), the session that follows, waited for up to `wait_s`: the
        gateway reads nothing after `claimed`, so a request sent on the old one was never read
        and ended `gateway_timeout`. None if the gateway is offline."""
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_s
        while True:
            conn = self.claimed.get(gateway_id)
            if conn is not None and not conn.retiring:
                return conn
            since = self._redialling.get(gateway_id)
            if conn is None and (since is None or loop.time() - since >= wait_s):
                return None
            change = self._change
            try:
                await asyncio.wait_for(change.wait(), until - loop.time())
            except TimeoutError:
                return None

    def online(self, gateway_id: str) -> bool:
        conn = self.claimed.get(gateway_id)
        return conn is not None and not conn.ws.closed

    def attach(self, conn: Connection) -> Connection | None:
        """Register a connection; return the one it replaces, if any."""
        self._changed()
        if conn.started is None:  # a promoted session keeps its clock
            conn.started = (self.clock(), self.monotonic())
        if conn.gateway_id is not None:
            old = self.claimed.get(conn.gateway_id)
            self.claimed[conn.gateway_id] = conn
            self._redialling.pop(conn.gateway_id, None)
        else:
            assert conn.token_hash is not None
            old = self.unclaimed.get(conn.token_hash)
            self.unclaimed[conn.token_hash] = conn
        return old if old is not conn else None

    def promote(self, conn: Connection, gateway_id: str) -> Connection | None:
        """An unclaimed connection was just claimed: it now speaks for `gateway_id`."""
        if conn.token_hash is not None and self.unclaimed.get(conn.token_hash) is conn:
            del self.unclaimed[conn.token_hash]
        conn.token_hash = None
        conn.gateway_id = gateway_id
        return self.attach(conn)

    def detach(self, conn: Connection) -> None:
        self._changed()
        if conn.gateway_id is not None and self.claimed.get(conn.gateway_id) is conn:
            del self.claimed[conn.gateway_id]
            if conn.retiring:
                self._redialling[conn.gateway_id] = asyncio.get_running_loop().time()
        if conn.token_hash is not None and self.unclaimed.get(conn.token_hash) is conn:
            del self.unclaimed[conn.token_hash]

    async def close_all(self) -> None:
        for conn in [*self.claimed.values(), *self.unclaimed.values()]:
            await conn.ws.close(code=1001, message=b"server shutdown")
        self.claimed.clear()
        self.unclaimed.clear()
