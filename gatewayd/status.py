"""The local status endpoint: /healthz, /status (JSON), /metrics (Prometheus), / (HTML).

Loopback only unless configured otherwise. Two optional development routes, off by default:
`POST /actions` (local action requests) and `POST /simulate` (a person at a simulated door).

Web pages in a browser on the same machine can reach it too. A request is answered only when
its Host is an IP address, `localhost` or a name in `status.allowed_hosts` (a page whose DNS
name was rebound to 127.0.0.1 would otherwise read /status, registration token included), and
a POST only without an Origin or with the endpoint's own (another site's page cannot send
actions). The registration token is shown only to a client on this machine, and never through a
reverse proxy (a request with forwarding headers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import uuid
from datetime import timedelta
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import structlog
from aiohttp import web

from gatewayd.config import is_loopback_ws_host
from gatewayd.driver import Simulation
from gatewayd.model import ActionRequest, GatewayError, utcnow

if TYPE_CHECKING:
    from gatewayd.daemon import Daemon

log = structlog.get_logger(__name__)

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")
HOSTS_KEY: web.AppKey[frozenset[str]] = web.AppKey("allowed_hosts")
MAX_BODY = 16 * 1024
# /status is about 270 KB with 200 locks. Encoded into a buffer that starts at glibc's mmap
# threshold (pinned at 128 KiB by the daemon), every step of its growth is a mapping of its own;
# grown from a small buffer, its 55, 82 and 124 KB steps came out of the heap, which then had to
# be extended on every poll once it was fragmented.
STATUS_BUFFER_BYTES = 128 * 1024
_ENCODER = msgspec.json.Encoder()


class ListenError(Exception):
    """The endpoint could not bind its address; the message is one line naming status.listen."""


def find_raised[E: BaseException](exc: BaseException, kind: type[E]) -> E | None:
    """The first `kind` in `exc` or, for a task group's, in its members (depth first)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := find_raised(inner, kind)) is not None:
                return found
        return None
    return exc if isinstance(exc, kind) else None


def find_listen_error(exc: BaseException) -> ListenError | None:
    """The ListenError in `exc` or, for a task group's, in its members."""
    return find_raised(exc, ListenError)


class _LocalAction(msgspec.Struct, forbid_unknown_fields=True):
    device_id: str
    action: str
    inputs: dict[str, Any] = {}
    # 0: actions.default_timeout_s; bounded like it (a huge one overflowed the deadline: a 500)
    timeout_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 0
    id: str = ""


class _Simulate(msgspec.Struct, forbid_unknown_fields=True):
    device_id: str
    what: str
    params: dict[str, Any] = {}


def _json(data: Any, status: int = 200, *, buffer_bytes: int = 0) -> web.Response:
    """`buffer_bytes`: encode into a buffer of this starting size (see STATUS_BUFFER_BYTES)."""
    body: bytes | bytearray
    if buffer_bytes:
        body = bytearray(buffer_bytes)
        _ENCODER.encode_into(data, body)  # truncates the buffer to what was written
    else:
        body = _ENCODER.encode(data)
    return web.Response(body=body, status=status, content_type="application/json")


def _error(status: int, type_: str, message: str) -> web.Response:
    return _json({"error": {"type": type_, "message": message}, "ok": False}, status)


async def _body(request: web.Request) -> bytes:
    """The request's body, up to MAX_BODY + 1 bytes (one more: too big then fails to decode).
    One read returns only what has arrived: a body in two TCP segments was cut at the first
    and refused as malformed JSON."""
    body = bytearray()
    while len(body) <= MAX_BODY:
        chunk = await request.content.read(MAX_BODY + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _commit(daemon: Daemon) -> None:
    """An answer means durable: what the request produced is committed before we reply."""
    if daemon.store is not None:
        daemon.store.flush()


async def healthz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    if not daemon.ready:
        return _json({"ok": False, "reason": "starting"}, 503)
    return _json({"ok": True, "status": daemon.status_line()})


async def status_json(request: web.Request) -> web.Response:
    snapshot = request.app[DAEMON_KEY].snapshot()
    gateway = snapshot["gateway"]
    if gateway["registration_token"] is not None and not _from_this_machine(request):
        # Whoever holds it claims the box, and then its locks: with `allow_remote` (set to
        # scrape /metrics), anyone on the LAN could read it. Shown on the box itself only.
        gateway["registration_token"] = None
    return _json(snapshot, buffer_bytes=STATUS_BUFFER_BYTES)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[DAEMON_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def page(request: web.Request) -> web.Response:
    html = resources.files("gatewayd").joinpath("status_page.html").read_text("utf-8")
    return web.Response(
        text=html,
        content_type="text/html",
        headers={
            "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; img-src data:"
        },
    )


async def local_action(request: web.Request) -> web.Response:
    """Development only: submit an action as the cloud would (`status.local_actions`)."""
    daemon = request.app[DAEMON_KEY]
    try:
        body = msgspec.json.decode(await _body(request), type=_LocalAction)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _error(400, "invalid_input", " ".join(str(exc).split()))
    except RecursionError:  # 16 KiB of nested `inputs`: a 500 and a traceback
        return _error(400, "invalid_input", "JSON nested too deeply")
    now = utcnow()
    timeout = body.timeout_s or daemon.config.actions.default_timeout_s
    req = ActionRequest(
        id=body.id or str(uuid.uuid4()),
        entity_type="Device",
        entity_id=body.device_id,
        action=body.action,
        inputs=body.inputs,
        created_at=now,
        deadline=now + timedelta(seconds=timeout),
    )
    accepted = daemon.submit(req)
    _commit(daemon)
    return _json({"action_request_id": req.id, "accepted": accepted}, 202 if accepted else 409)


async def simulate(request: web.Request) -> web.Response:
    """Development only: tell a simulated lock what a person at the door did."""
    daemon = request.app[DAEMON_KEY]
    try:
        body = msgspec.json.decode(await _body(request), type=_Simulate)
        what = Simulation(body.what)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        return _error(400, "invalid_input", " ".join(str(exc).split()))
    except RecursionError:
        return _error(400, "invalid_input", "JSON nested too deeply")
    assert daemon.registry is not None
    owner = daemon.registry.driver_of(body.device_id)
    if owner is None:
        return _error(404, "device_not_found", f"device {body.device_id} not found")
    try:
        await daemon.registry.drivers[owner].simulate(body.device_id, what, body.params)
    except GatewayError as exc:
        return _error(400, exc.type, exc.message)
    _commit(daemon)
    return _json({"ok": True})


# Set by a reverse proxy (nginx, caddy, ...) on what it passes on: a client the proxy serves
# is taken to be elsewhere, whatever address the proxy itself connects from.
_FORWARDING_HEADERS = (
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Real-IP",
    "Via",
)


def _from_this_machine(request: web.Request) -> bool:
    """A client on this machine: from a loopback address, or from the very address it reached
    us on (`gatewayd status` with `status.listen` on the LAN address), and not through a
    reverse proxy. A proxy on the box connects from loopback for every LAN client it serves;
    its forwarding headers can only deny (anyone may send them), never grant."""
    if any(name in request.headers for name in _FORWARDING_HEADERS):
        return False
    peer = request.remote or ""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    own = sockname[0] if isinstance(sockname, tuple) and sockname else None
    return is_loopback_ws_host(peer) or peer == own


def _host_allowed(host: str, names: frozenset[str]) -> bool:
    """True if a Host header (with or without a port) names an IP address, localhost or one
    of `names`."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    name = name.lower().removesuffix(".")  # "box.lan." is box.lan written in full
    if name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@web.middleware
async def _same_machine_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse DNS-rebound and cross-site requests (see the module doc)."""
    # aiohttp serves one connection's pipelined requests back to back without giving other
    # tasks a turn while the socket takes the answers: a local client flooding this port
    # held the loop that moves the locks for tens of seconds (unlocks failed, the watchdog
    # fired). One turn of the loop per request keeps the locks first.
    await asyncio.sleep(0)
    host = request.headers.get("Host", "")
    if not _host_allowed(host, request.app[HOSTS_KEY]):
        return _error(
            403,
            "forbidden_host",
            "address this endpoint by IP (e.g. 127.0.0.1), or list the name in"
            " status.allowed_hosts",
        )
    origin = request.headers.get("Origin")
    if (
        request.method != "GET"
        and origin is not None
        and origin.lower() != f"http://{host}".lower()
    ):
        return _error(403, "forbidden_origin", "requests from other sites are refused")
    response: web.StreamResponse = await handler(request)
    return response


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_same_machine_only])
    app[DAEMON_KEY] = daemon
    app[HOSTS_KEY] = frozenset(
        [
            "localhost",
            *(name.lower().removesuffix(".") for name in daemon.config.status.allowed_hosts),
        ]
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status_json)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", page)
    if daemon.config.status.local_actions:
        app.router.add_post("/actions", local_action)
        app.router.add_post("/simulate", simulate)
    return app


async def start_status_server(daemon: Daemon) -> tuple[web.AppRunner, int]:
    """Start the endpoint on the configured address; returns the runner and the bound port."""
    host, port = daemon.config.status_address()
    runner = web.AppRunner(make_app(daemon), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:  # in use, or an address this box does not have
        await runner.cleanup()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # not asyncio's long form
        raise ListenError(
            f"status.listen: cannot listen on {daemon.config.status.listen}: {reason}"
        ) from None
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    log.info("status.listening", host=host, port=bound)
    return runner, bound
