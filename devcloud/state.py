"""Everything one devcloud instance holds, reachable from a request as `request.app[STATE]`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web

from devcloud.actions import ActionService
from devcloud.db import Database
from devcloud.hub import Hub
from devcloud.ingest import Ingest
from devcloud.ratelimit import RateLimiter
from devcloud.settings import Settings
from devcloud.webhooks import Webhooks


@dataclass(frozen=True, slots=True)
class State:
    settings: Settings
    db: Database
    hub: Hub
    actions: ActionService
    ingest: Ingest
    webhooks: Webhooks
    claims: RateLimiter
    new_tokens: RateLimiter  # registration tokens first presented, per source address


STATE: Final = web.AppKey("devcloud_state", State)
