"""Assemble one devcloud: REST v1, the tunnel server, webhooks, on one aiohttp application."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from devcloud import rest_devices, rest_gateways, rest_locations
from devcloud.actions import ActionService
from devcloud.db import Database
from devcloud.errors import MAX_BODY_BYTES, make_middleware
from devcloud.hub import Hub
from devcloud.ingest import Ingest
from devcloud.openapi import openapi_handler
from devcloud.ratelimit import RateLimiter
from devcloud.settings import Settings
from devcloud.state import STATE, State
from devcloud.timeutil import WallClock, utcnow
from devcloud.tunnel_server import tunnel_handler
from devcloud.webhooks import Webhooks


def create_app(settings: Settings, clock: WallClock = utcnow) -> web.Application:
    """A ready-to-run application; the database is opened at start-up and closed at clean-up.
    `clock`: the wall clock its timestamps are read from."""
    app = web.Application(
        middlewares=[make_middleware(settings.api_key)], client_max_size=MAX_BODY_BYTES
    )
    app.router.add_get("/v1/openapi.json", openapi_handler)
    app.router.add_get("/v1/gateway/tunnel", tunnel_handler)
    app.add_routes(rest_locations.routes)
    app.add_routes(rest_gateways.routes)
    app.add_routes(rest_devices.routes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        db = Database(settings.db_path)
        hub = Hub(clock)
        actions = ActionService(db, hub, settings)
        webhooks = Webhooks(settings, db)
        app[STATE] = State(
            settings=settings,
            db=db,
            hub=hub,
            actions=actions,
            ingest=Ingest(db, actions, webhooks),
            webhooks=webhooks,
            claims=RateLimiter(settings.claim_limit, settings.claim_window_s),
            # no address needs more new tokens than the registrations it may make
            new_tokens=RateLimiter(settings.claim_limit, settings.claim_window_s),
        )
        await webhooks.start()
        actions.resume()
        actions.start_sweep()
        try:
            yield
        finally:
            actions.close()
            await hub.close_all()
            await webhooks.stop()
            db.close()

    app.cleanup_ctx.append(lifecycle)
    return app
