"""The cloud tunnel: one outbound websocket, hello/welcome, durable outbox drain, acks,
heartbeats, and reconnects with full-jitter backoff (policy kept apart in `Backoff`)."""

from __future__ import annotations

import random
import re
import sqlite3
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import anyio
import structlog

from gatewayd import protocol
from gatewayd.coalesce import coalesced_writes
from gatewayd.config import CloudConfig, is_loopback_ws_host
from gatewayd.model import ActionRequest, iso, utcnow
from gatewayd.store import Store
from gatewayd.upstream import CLOCK_SKEW_S

log = structlog.get_logger(__name__)

SEND_BATCH: Final = 500
_BEARER: Final = re.compile(protocol.BEARER_SYNTAX)
MAX_INBOUND_BYTES: Final = 1024 * 1024  # bigger frames are read whole, then refused and skipped
DEFAULT_HEARTBEAT_S: Final = 60.0
MIN_HEARTBEAT_S: Final = 1.0
MAX_HEARTBEAT_S: Final = 3600.0
MAX_CLOUD_SEQ: Final = 2**53  # a welcome.acked_seq past this (and ours) is refused
STABLE_SESSION_S: Final = 10.0  # a session up this long after its welcome resets the backoff


class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(cap, base * 2**n)].

    Never gives up; `reset()` after a session that stayed up (a link that flaps right after
    `welcome` keeps backing off).
    """

    def __init__(
        self, base: float = 0.5, cap: float = 60.0, rand: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self._rand = rand
        self.attempt = 0

    def ceiling(self) -> float:
        return min(self.cap, self.base * 2.0 ** min(self.attempt, 32))

    def next_delay(self) -> float:
        delay = self._rand() * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class Unauthorized(Exception):
    """The cloud refused our credential at the upgrade (HTTP 401)."""


class CloudRefused(aiohttp.ClientConnectionError):
    """The cloud answered the hello with an `error` frame."""

    def __init__(self, code: str, message: str) -> None:
        # clipped as an error frame after the welcome is: it goes to /status and each dial's log
        super().__init__(f"cloud refused: {_clip(code, 64)}: {_clip(message)}")
        self.code = code


# The cloud will never claim a gateway with this token again: it needs a new one.
_SPENT_TOKEN: Final = frozenset({"registration_token_expired", "registration_token_used"})


class _Reconnect(Exception):
    """End this session and dial again at once (e.g. after being claimed)."""


def _heartbeat(announced: float) -> float:
    """The cloud's heartbeat, within bounds: a tiny one would have the link called dead at
    once, again and again; a huge one would never call a dead link dead."""
    if not announced > 0:
        return DEFAULT_HEARTBEAT_S
    return min(max(announced, MIN_HEARTBEAT_S), MAX_HEARTBEAT_S)


def _parse_ts(value: str) -> datetime | None:
    """An ISO-8601 time, in UTC; None if it is not one, or is one UTC cannot hold (an offset
    at an end of the calendar: `9999-12-31T23:59:59-05:00` is in the year 10000 in UTC)."""
    if value[10:11] == "t":  # RFC 3339 allows a lower-case `t` and `z`
        value = f"{value[:10]}T{value[11:]}"
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        return ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


# OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED: on a box these
# mostly mean its own clock is wrong (no battery-backed clock, NTP not reached yet)
_CLOCK_CERT_ERRORS: Final = {9: "is not valid yet", 10: "has expired"}


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    verify_code = getattr(getattr(exc, "certificate_error", exc), "verify_code", None)
    if verify_code in _CLOCK_CERT_ERRORS:
        text += (
            f" (the cloud's certificate {_CLOCK_CERT_ERRORS[verify_code]} by this box's clock,"
            f" {iso(utcnow())}: check the clock and NTP)"
        )
    return text


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _is_loopback_url(url: str) -> bool:
    return is_loopback_ws_host(urlsplit(url).hostname or "")


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception that ended a session's task group (the first, if several did)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return leaves[0]


class Tunnel:
    """Keeps the tunnel up forever; everything upstream comes from the store's outbox."""

    def __init__(
        self,
        config: CloudConfig,
        store: Store,
        on_action: Callable[[ActionRequest], None],
        hello: Callable[[], dict[str, Any]],
        *,
        on_reject: Callable[[ActionRequest, str], None] | None = None,
        on_cancel: Callable[[str, str], object] | None = None,
        on_clock: Callable[[float | None], object] | None = None,
        on_rebase: Callable[[int, int], object] | None = None,
        on_claimed: Callable[[], object] | None = None,
        on_unclaimed: Callable[[str], object] | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Any] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # schemes are case-insensitive, as check-config reads them: "WSS://" is wss
        self._scheme = urlsplit(config.url).scheme
        if self._scheme == "ws" and not (config.insecure or _is_loopback_url(config.url)):
            raise ValueError("ws:// is allowed only to loopback or with cloud.insecure = true")
        self._cfg = config
        self._store = store
        self._on_action = on_action
        self._on_reject = on_reject
        self._on_cancel = on_cancel
        self._on_clock = on_clock
        self._on_rebase = on_rebase
        self._on_claimed = on_claimed
        self._on_unclaimed = on_unclaimed
        self._hello = hello
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self._clock = clock
        self.state = "idle"
        self.connected_since: datetime | None = None
        self._welcomed_at: float | None = None  # on `clock`, when this session's welcome came
        self._quick_redial_at: float | None = None  # on `clock`: the last redial without backoff
        # A rotation's previous (gateway id, credential), until the new credential has opened a
        # session: a cloud that sent a credential it then refuses (a rotation it lost or rolled
        # back) gets the previous one again rather than the gateway unclaiming itself. Kept in
        # memory: a restart in between leaves the new credential alone.
        self._before_rotation: tuple[str, str] | None = None
        self.sessions = 0
        self.last_error: str | None = None
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self.sent_seq = 0
        self._sent_high = 0  # the highest seq sent in this run, over every session
        self.frames_in = 0
        self.frames_skipped = 0
        # this session's `error` frame (code, message): why the cloud is about to close it
        self._refusal: tuple[str, str] | None = None
        self.clock_skew_s: float | None = None  # the cloud's clock minus ours, at the welcome
        self._cloud_anchor: tuple[datetime, float] | None = None
        self._ssl = self._ssl_context()

    # ------------------------------------------------------------------ public

    @property
    def up(self) -> bool:
        """Connected to the cloud (claimed and serving, or unclaimed and waiting for a claim)."""
        return self.state in ("connected", "unclaimed")

    def snapshot(self) -> dict[str, Any]:
        parts = urlsplit(self._cfg.url)
        return {
            "state": self.state,
            "url": f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"
            f"{parts.path}",
            "connected_since": iso(self.connected_since) if self.connected_since else None,
            "reconnects": max(0, self.sessions - 1),
            "last_error": self.last_error,
            "acked_seq": self._store.acked_seq,
            "sent_seq": self.sent_seq,
            "heartbeat_s": self.heartbeat_s,
            "frames_skipped": self.frames_skipped,
            "clock_skew_s": self.current_skew_s(),
        }

    def current_skew_s(self) -> float | None:
        """The cloud's clock minus ours now: the welcome's measure, carried on the monotonic
        clock, so a step of our wall clock since (NTP) shows at once."""
        if self._cloud_anchor is None:
            return None
        cloud, hello_sent = self._cloud_anchor
        try:
            cloud_now = cloud + timedelta(seconds=self._clock() - hello_sent)
            return round((cloud_now - utcnow()).total_seconds(), 3)
        except OverflowError:
            return self.clock_skew_s

    async def run(self) -> None:
        """Dial, serve, and dial again, forever."""
        while True:
            self.sessions += 1
            self.state = "connecting"
            self._welcomed_at = None
            try:
                await self._session()
            except _Reconnect:
                now = self._clock()
                last = self._quick_redial_at
                if last is None or now - last >= STABLE_SESSION_S:
                    self._quick_redial_at = now
                    continue
                # a cloud that sends `claimed` in every session must not get a redial loop
                self._fail("the cloud sent `claimed` again soon after the last one")
            except Unauthorized as exc:
                self._fail(str(exc))
                if not self._undo_rotation():
                    self._handle_unauthorized()
            except CloudRefused as exc:
                self._fail(_describe(exc))
                if exc.code in _SPENT_TOKEN:
                    self._renew_token()
            except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as exc:
                self._fail(_describe(exc))
            except protocol.ProtocolError as exc:
                self._fail(f"protocol: {exc.message}")
            except sqlite3.Error as exc:
                # a store call failed (a failing disk, a damaged file), e.g. the identity read
                # before dialling: this session fails, not the daemon; the next dial tries again
                self._fail(f"store: {type(exc).__name__}: {exc}")
            finally:
                self.connected_since = None
            if self._stayed_up():
                self.backoff.reset()
            self.state = "backoff"
            delay = self.backoff.next_delay()
            log.info("tunnel.reconnect_in", seconds=round(delay, 2), attempt=self.backoff.attempt)
            await self._sleep(delay)

    def _stayed_up(self) -> bool:
        """Whether the session that just ended was welcomed and then up STABLE_SESSION_S. Timed
        from the dial, a dial that only timed out (no answer to the connect, the upgrade or the
        hello) took as long, and reset the backoff of every gateway in an outage to its first
        step: they all redialled every 10 s instead of backing off to a minute."""
        welcomed = self._welcomed_at
        return welcomed is not None and self._clock() - welcomed >= STABLE_SESSION_S

    # ------------------------------------------------------------------ session

    def _rebase(self, cloud_acked: int) -> None:
        """The cloud holds seqs this store never committed (it lost its last commits, or was
        restored from a backup): renumber what is unacknowledged to follow them, and let the
        dispatcher move the hand-offs it waits for along (Store.rebase)."""
        if cloud_acked > MAX_CLOUD_SEQ and cloud_acked > self._store.committed_seq:
            # no gateway gets there; following it would soon run seqs out of range
            raise ConnectionError(f"the cloud acked seq {cloud_acked}, beyond any gateway's")
        # What the cloud can hold if nothing was lost: frames committed before this run (sent
        # then, perhaps) and those this run sent. Frames committed since, before any welcome
        # (start-up failures, the device inventory, door events), never left the box.
        self._sent_high = max(self._sent_high, self.sent_seq)
        may_hold = max(self._store.opened_seq, self._sent_high)
        try:
            moved = self._store.rebase(cloud_acked, protocol.renumber, cloud_may_hold=may_hold)
        except (sqlite3.Error, protocol.ProtocolError) as exc:
            raise ConnectionError(f"outbox rebase failed ({type(exc).__name__})") from None
        if moved.shift and self._on_rebase is not None:
            # the frames up to `moved.after` are the cloud's (acked): only those after them moved
            self._on_rebase(moved.after, moved.shift)

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if self._scheme != "wss":
            return False
        ctx = ssl.create_default_context(cafile=self._cfg.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def _fail(self, message: str) -> None:
        if message != self.last_error:
            log.warning("tunnel.disconnected", error=message)
        self.last_error = message

    def _undo_rotation(self) -> bool:
        """The cloud refused a rotated credential that never opened a session: go back to the
        one before it (True), if the store takes it."""
        before, self._before_rotation = self._before_rotation, None
        if before is None:
            return False
        try:
            self._store.set_claimed(*before)
        except sqlite3.Error as exc:
            log.error("tunnel.rotation_not_undone", error=type(exc).__name__)
            return False
        log.error(
            "tunnel.rotated_credential_rejected",
            hint="the cloud refused the credential it rotated to; using the previous one",
        )
        return True

    def _handle_unauthorized(self) -> None:
        self._take_new_token(
            log.error,
            "tunnel.credential_rejected",
            "the cloud refused this gateway's credential (revoked?); it is unclaimed now",
            if_claimed=True,
        )

    def _renew_token(self) -> None:
        """The cloud refused our registration token as expired or used: an unclaimed gateway
        would otherwise stay unclaimable. Issue a new one (shown on /status, in the journal)."""
        self._take_new_token(
            log.warning,
            "tunnel.registration_token_renewed",
            "the cloud no longer takes the old token; claim the gateway with this one",
            if_claimed=False,
        )

    def _take_new_token(
        self, emit: Callable[..., Any], event: str, hint: str, *, if_claimed: bool
    ) -> None:
        """Unclaimed, with a fresh registration token, if the gateway's claim state is
        `if_claimed`; kept as it is if the store refuses (the cloud's next refusal tries
        again, and /status says why meanwhile)."""
        try:
            if self._store.identity().claimed is not if_claimed:
                return
            fresh = self._store.reset_claim()
        except sqlite3.Error as exc:
            log.error("tunnel.new_token_not_stored", error=type(exc).__name__)
            self.last_error = (
                f"{self.last_error}; a new registration token could not be stored"
                f" ({type(exc).__name__}), tried again at the next refusal"
            )
            return
        emit(event, hint=hint, registration_token=fresh.registration_token)
        if if_claimed and self._on_unclaimed is not None:
            self._on_unclaimed("the cloud refused this gateway's credential")

    async def _session(self) -> None:
        ident = self._store.identity()
        if ident.claimed and not _BEARER.fullmatch(ident.credential or ""):
            # not one the cloud could have sent (protocol.Claimed checks it): unusable, and
            # aiohttp would refuse it in a header
            raise Unauthorized("the stored credential is not a bearer token")
        headers = {"Authorization": f"Bearer {ident.credential}"} if ident.claimed else {}
        timeout = aiohttp.ClientTimeout(total=None, connect=self._cfg.connect_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            # ClientTimeout's `connect` bounds the TCP/TLS connection only: a cloud (or a proxy
            # before it) that took the upgrade request and never answered held the tunnel in
            # "connecting" for good, with no error and no redial
            with anyio.move_on_after(self._cfg.connect_timeout_s) as upgrade:
                try:
                    ws = await http.ws_connect(
                        self._cfg.url,
                        headers=headers,
                        ssl=self._ssl,
                        autoping=False,
                        max_msg_size=MAX_INBOUND_BYTES,
                        timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status == 401:
                        raise Unauthorized("the cloud answered 401 to our credential") from None
                    raise
            if upgrade.cancelled_caught:
                raise ConnectionError(
                    f"no answer to the websocket upgrade within {self._cfg.connect_timeout_s:g} s"
                )
            async with ws:
                await self._serve(
                    ws, registration_token=None if ident.claimed else ident.registration_token
                )

    async def _serve(
        self, ws: aiohttp.ClientWebSocketResponse, registration_token: str | None
    ) -> None:
        self._refusal = None
        info = self._hello()
        hello = protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            software_version=str(info["software_version"]),
            hardware=str(info["hardware"]),
            drivers=list(info["drivers"]),
            registration_token=registration_token,
        )
        hello_sent = self._clock()
        await ws.send_frame(protocol.encode(hello), aiohttp.WSMsgType.TEXT)
        welcome = await self._await_welcome(ws)
        protocol.check_version(welcome.protocol)
        self._anchor_cloud_clock(welcome.server_time, hello_sent)
        self.heartbeat_s = _heartbeat(welcome.heartbeat_s)
        if registration_token is None:
            for action_id in welcome.cancelled:  # before the ack: it may be their go-ahead
                self._cancel(action_id, "the cloud reported it failed while the tunnel was down")
            self._rebase(welcome.acked_seq)
            self._store.outbox_ack(welcome.acked_seq)
            self.sent_seq = max(welcome.acked_seq, self._store.acked_seq)
        else:
            # The cloud knows no gateway for an unclaimed session: it holds none of our frames
            # and sent us no actions. Its ack or cancels would drop frames (door events) that no
            # cloud has, so they are not taken.
            if welcome.acked_seq or welcome.cancelled:
                log.warning(
                    "tunnel.unclaimed_welcome_ignored",
                    acked_seq=welcome.acked_seq,
                    cancelled=len(welcome.cancelled),
                )
            self.sent_seq = self._store.acked_seq
        self.state = "connected" if registration_token is None else "unclaimed"
        self.connected_since = utcnow()
        self._welcomed_at = self._clock()
        self.last_error = None
        self._before_rotation = None  # the credential in use opened a session
        log.info(
            "tunnel.connected",
            gateway_id=welcome.gateway_id,
            acked_seq=welcome.acked_seq,
            backlog=self._store.outbox_backlog(),
        )
        self._last_rx = self._clock()
        try:
            async with anyio.create_task_group() as tg:
                if registration_token is None:  # unclaimed: wait for `claimed`, send nothing
                    tg.start_soon(self._send_loop, ws, name="tunnel.send")
                tg.start_soon(self._heartbeat, ws, name="tunnel.heartbeat")
                await self._receive_loop(ws)
        except BaseExceptionGroup as group:
            raise _sole(group) from None

    async def _await_welcome(self, ws: aiohttp.ClientWebSocketResponse) -> protocol.Welcome:
        with anyio.fail_after(self._cfg.connect_timeout_s):
            while True:
                msg = await ws.receive()
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.ERROR,
                ):
                    raise aiohttp.ClientConnectionError(f"closed before welcome ({ws.close_code})")
                if msg.type == aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = protocol.decode(msg.data)
                except protocol.ProtocolError as exc:
                    if exc.code != "unknown_type":
                        raise  # a welcome that cannot be read ends the session, named
                    # a newer cloud's frame: skipped, as after the welcome
                    self._skip(exc.message)
                    continue
                if isinstance(frame, protocol.Welcome):
                    return frame
                if isinstance(frame, protocol.ErrorMsg):
                    raise CloudRefused(frame.code, frame.message)
                # the cloud sends nothing else before `welcome`: dropped, but not unseen
                self._skip(f"{type(frame).__name__} before welcome")

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            rows = self._store.outbox_after(self.sent_seq, SEND_BATCH)
            if not rows:
                await self._store.wait_outbox(self.sent_seq)
                continue
            with coalesced_writes(ws):  # the batch leaves in one syscall, not one per frame
                for seq, frame in rows:
                    self.sent_seq = seq  # first: the cloud may ack it as soon as it leaves
                    await ws.send_frame(frame, aiohttp.WSMsgType.TEXT)

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """One ping after half a heartbeat of silence; a link silent for 7/8 of it is dead, so
        a dead link is detected within heartbeat_s while an idle one costs one ping per ~h/2."""
        pinged_at = -1.0
        while True:
            await anyio.sleep(self.heartbeat_s / 8)
            now = self._clock()
            silent = now - self._last_rx
            if silent >= self.heartbeat_s * 7 / 8:
                log.warning("tunnel.heartbeat_lost", silent_s=round(silent, 1))
                await ws.close()
                return
            if silent >= self.heartbeat_s / 2 and pinged_at < self._last_rx:
                pinged_at = now
                await ws.ping()

    async def _receive_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            self._last_rx = self._clock()
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._handle_frame(msg.data)
            elif msg.type == aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == aiohttp.WSMsgType.PONG:
                continue
            elif msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                if self._refusal is not None:
                    # what the cloud said, rather than only the close code that followed it
                    raise CloudRefused(*self._refusal)
                raise aiohttp.ClientConnectionError(
                    f"tunnel closed (code {ws.close_code})"
                    + (f": {ws.exception()}" if ws.exception() else "")
                )
            else:
                self._skip("binary frames are not part of the protocol")

    def _skip(self, reason: str, *, frame_type: str | None = None, **ids: str) -> None:
        self.frames_skipped += 1
        log.warning("tunnel.frame_skipped", reason=reason, frame_type=frame_type, **ids)

    def _handle_frame(self, data: str) -> None:
        self.frames_in += 1
        try:
            # over 64 KiB too: an action_request is still answered, by the id it can be read for
            frame = protocol.decode(data)
        except protocol.ProtocolError as exc:
            reason = f"{exc.code}: {exc.message}"
            readable = protocol.readable_action_request(data)
            if readable is None:
                self._skip(reason, frame_type=exc.frame_type)
                return
            self._skip(reason, frame_type=exc.frame_type, action_request_id=readable["id"])
            if self.state == "connected" and self._on_reject is not None:
                now = utcnow()
                request = ActionRequest(
                    readable["id"],
                    readable["entity_type"],
                    readable["entity_id"],
                    readable["action"],
                    {},
                    now,
                    now,
                )
                self._on_reject(request, f"malformed action_request: {exc.message}")
            return
        try:
            self._dispatch(frame)
        except (_Reconnect, ConnectionError, sqlite3.Error):
            raise  # the session ends, as each of these means
        except Exception as exc:  # noqa: BLE001 - one frame must not take the tunnel down
            # A bug met by a frame nobody foresaw: the frame is lost, the daemon is not, and the
            # next frame is read. Only the type is logged: the message could quote the frame.
            self.frames_skipped += 1
            log.error(
                "tunnel.frame_failed", frame_type=type(frame).__name__, error=type(exc).__name__
            )

    def _dispatch(self, frame: protocol.Message) -> None:
        if isinstance(frame, protocol.Ack):
            self._ack(frame.seq)
        elif isinstance(frame, protocol.ActionRequestMsg):
            if self.state == "unclaimed":
                self._skip("an unclaimed gateway executes no action requests")
                return
            self._action(frame)
        elif isinstance(frame, protocol.ActionCancel):
            self._cancel(frame.action_request_id, frame.reason)
        elif isinstance(frame, protocol.Claimed):
            ident = self._store.identity()
            if ident.claimed and frame.gateway_id != ident.gateway_id:
                self._skip("a credential rotation cannot change the gateway id")
                return
            if ident.claimed and frame.credential == ident.credential:
                return  # nothing changes: no write, no redial
            if ident.claimed and ident.gateway_id and ident.credential:
                self._before_rotation = (ident.gateway_id, ident.credential)
            try:
                self._store.set_claimed(frame.gateway_id, frame.credential)
            except sqlite3.Error as exc:
                # Not stored: dial again, still unclaimed. The cloud sends `claimed` again to
                # the token's holder until a credential of it is used.
                log.error("tunnel.claim_not_stored", error=type(exc).__name__)
                raise ConnectionError(f"could not store the claim ({type(exc).__name__})") from None
            log.info("tunnel.claimed", gateway_id=frame.gateway_id)
            if self.state == "unclaimed" and self._on_claimed is not None:
                # A claim, not a rotation: the cloud may know this gateway under a new id (a
                # claim after a revoke), and the frames that reported its devices were acked
                # under the old one. They are reported again, after the claim is stored.
                self._on_claimed()
            raise _Reconnect
        elif isinstance(frame, protocol.ErrorMsg):
            # shown on /status, the page and `gatewayd status`: a frame may hold 64 KiB of it
            message = _clip(frame.message)
            self.last_error = f"cloud error {_clip(frame.code, 64)}: {message}"
            self._refusal = (frame.code, frame.message)
            log.error("tunnel.cloud_error", error_code=_clip(frame.code, 64), message=message)
        else:
            self._skip(f"unexpected {type(frame).__name__} from the cloud")

    def _ack(self, seq: int) -> None:
        """A cumulative ack, taken only up to what this session has sent: the cloud cannot
        hold a frame it was never sent, and acking past the last sent would drop committed
        frames from the outbox unsent."""
        if seq > self.sent_seq:
            log.warning("tunnel.ack_beyond_sent", seq=seq, sent_seq=self.sent_seq)
            seq = self.sent_seq
        self._store.outbox_ack(seq)

    def _anchor_cloud_clock(self, server_time: str | None, hello_sent: float) -> None:
        """Tie the cloud's clock to our monotonic one. The cloud stamped `server_time` after
        our hello left, so `server_time + (clock() - hello_sent)` is the latest the cloud's
        clock can read now: deadlines read with it are never later than the cloud meant (early
        by at most the hello/welcome round trip), however wrong or stepped our wall clock is."""
        cloud = _parse_ts(server_time) if server_time else None
        self._cloud_anchor = None if cloud is None else (cloud, hello_sent)
        self.clock_skew_s = None if cloud is None else round((cloud - utcnow()).total_seconds(), 3)
        if self._on_clock is not None:
            self._on_clock(self.clock_skew_s)
        skew = self.clock_skew_s
        if skew is not None and abs(skew) >= CLOCK_SKEW_S:
            log.warning(
                "tunnel.clock_skew",
                skew_s=round(skew, 1),
                note="this box's clock is off; deadlines and upstream times follow the cloud's",
            )

    def _to_local(self, created: datetime) -> timedelta:
        """Add to a cloud timestamp to get the same instant on our wall clock. `created`, the
        request's own stamp, is a floor for the cloud's time now: over a session of days an
        undisciplined monotonic clock can fall seconds behind the cloud's, and the floor keeps
        that from ever reading a deadline later than the cloud meant."""
        if self._cloud_anchor is None:
            return timedelta(0)  # a cloud that does not send its time: trust our clock
        cloud, hello_sent = self._cloud_anchor
        cloud_now = max(cloud + timedelta(seconds=self._clock() - hello_sent), created)
        return utcnow() - cloud_now

    def _cancel(self, action_id: str, reason: str) -> None:
        # the dispatcher logs the ones it held; welcome.cancelled may name many it never saw
        if self._on_cancel is not None:
            self._on_cancel(action_id, reason[:200])

    def _action(self, frame: protocol.ActionRequestMsg) -> None:
        created = _parse_ts(frame.created_at)
        deadline = _parse_ts(frame.deadline)
        problem = "created_at and deadline must be ISO-8601 timestamps"
        if created is not None and deadline is not None and deadline < created:
            # read with `created` as a floor for the cloud's clock, it was "already past"
            created = deadline = None
            problem = "deadline is before created_at"
        if created is not None and deadline is not None:
            try:
                shift = self._to_local(created)
                created, deadline = created + shift, deadline + shift
            except OverflowError:  # a date (or the cloud's clock) at the end of the calendar
                created = deadline = None
                problem = "created_at or deadline is too near the end of the calendar"
        request = ActionRequest(
            id=frame.id,
            entity_type=frame.entity_type,
            entity_id=frame.entity_id,
            action=frame.action,
            inputs=frame.inputs,
            created_at=created or utcnow(),
            deadline=deadline or utcnow(),
        )
        if (created is None or deadline is None) and self._on_reject is not None:
            self._on_reject(request, problem)
            return
        self._on_action(request)
