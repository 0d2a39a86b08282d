"""`devcloud serve --port --db --api-key [--host] [--webhook URL ...]`: run the reference cloud."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import ssl
import sys
from pathlib import Path

import structlog
from aiohttp import web
from yarl import URL

from devcloud.app import create_app
from devcloud.settings import Settings

log = structlog.get_logger("devcloud")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devcloud", description="Reference cloud for gatewayd")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve REST v1 and the gateway tunnel")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, required=True, help="0 picks a free port")
    serve.add_argument("--db", required=True, help="SQLite file")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("DEVCLOUD_API_KEY"),
        help="the REST API key (required); or DEVCLOUD_API_KEY, which keeps it out of `ps`",
    )
    serve.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="POST every event to this URL (repeatable); user:password@ in it: Basic auth",
    )
    serve.add_argument(
        "--webhook-secret",
        default=os.environ.get("DEVCLOUD_WEBHOOK_SECRET"),
        help="HMAC key for Seam-Signature (or DEVCLOUD_WEBHOOK_SECRET); default: generated "
        "and written next to the database as <db>.webhook_secret",
    )
    serve.add_argument(
        "--action-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="an action request's deadline after its creation (60)",
    )
    serve.add_argument(
        "--handoff-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="an action the gateway has not acknowledged by then is gateway_failure (10)",
    )
    serve.add_argument(
        "--heartbeat",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="the heartbeat_s sent in welcome: the gateway pings after half of it (60)",
    )
    serve.add_argument(
        "--claim-limit",
        type=int,
        default=10,
        metavar="N",
        help="gateway registrations allowed per API key and per address in --claim-window; "
        "also the new registration tokens an address may present to the tunnel",
    )
    serve.add_argument(
        "--claim-window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="the window of --claim-limit (60)",
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS/WSS with this certificate")
    serve.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    serve.add_argument(
        "--log-format", choices=("console", "json"), default="console", help="(console)"
    )
    serve.add_argument(
        "--stop-at-stdin-eof",
        action="store_true",
        help="stop when stdin is closed: a parent holding the other end of that pipe stops "
        "this however it ends, killed included (gatewayd demo)",
    )
    return parser


def _configure_logging(fmt: str) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def _webhook_secret(given: str | None, db: str) -> str:
    if given:
        return given
    path = Path(f"{db}.webhook_secret")
    if path.exists():
        return path.read_text().strip()
    secret = "whsec_" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


def _is_webhook_url(url: str) -> bool:
    """An http(s) URL with a host that yarl takes (a bad port or host: a traceback at start)."""
    try:
        parsed = URL(url)
        return parsed.scheme in ("http", "https") and bool(parsed.host) and parsed.port is not None
    except ValueError:
        return False


class ListenFailed(Exception):
    """The port is taken (or not ours to bind): a one-line message, not a traceback."""


async def serve(
    settings: Settings,
    host: str,
    port: int,
    tls: ssl.SSLContext | None = None,
    stop_at_stdin_eof: bool = False,
) -> None:
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    scheme = "https" if tls is not None else "http"
    log.info("devcloud.listening", host=host, port=bound, scheme=scheme)
    print(f"devcloud listening on {scheme}://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if stop_at_stdin_eof:
        stdin = sys.stdin.fileno()

        def readable() -> None:
            if not os.read(stdin, 4096):  # the parent, and its end of the pipe, are gone
                loop.remove_reader(stdin)
                log.info("devcloud.stdin_closed")
                stop.set()

        loop.add_reader(stdin, readable)
    try:
        await stop.wait()
    finally:
        log.info("devcloud.stopping")
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_format)
    if not args.api_key:
        print("devcloud: --api-key (or DEVCLOUD_API_KEY) is required", file=sys.stderr)
        return 2
    for url in args.webhook:
        if not _is_webhook_url(url):
            print("devcloud: --webhook expects an http:// or https:// URL", file=sys.stderr)
            return 2
    tls = None
    if bool(args.tls_cert) != bool(args.tls_key):
        print("devcloud: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    settings = Settings(
        api_key=args.api_key,
        db_path=args.db,
        webhook_urls=tuple(args.webhook),
        webhook_secret=_webhook_secret(args.webhook_secret, args.db) if args.webhook else "",
        action_timeout_s=args.action_timeout,
        handoff_timeout_s=args.handoff_timeout,
        heartbeat_s=args.heartbeat,
        claim_limit=args.claim_limit,
        claim_window_s=args.claim_window,
    )
    try:
        asyncio.run(serve(settings, args.host, args.port, tls, args.stop_at_stdin_eof))
    except ListenFailed as exc:
        print(f"devcloud: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
