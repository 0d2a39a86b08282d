"""The websocket to zwave-server without permessage-deflate.

zwave-js-server-python opens its websocket with `compress=15`, fixed in the library, and
zwave-server accepts: every message, the full state dump at start included, is deflated by one
side and inflated by the other. To a zwave-server on the same box (the install's unit listens on
127.0.0.1) that saves nothing and costs CPU for each message on both sides, and a zlib
compressor and decompressor (about 0.3 MiB) in the daemon. The Client is given this session in
place of aiohttp's; it only calls `ws_connect`.
"""

from __future__ import annotations

from typing import Any

import aiohttp


class UncompressedSession:
    """An aiohttp ClientSession's `ws_connect`, always without compression, and with websocket
    pings every `heartbeat_s`: the library sets none, so a zwave-server that froze (or a link
    that died without a close) left the driver "ready" and every command waiting for an
    answer until its deadline. aiohttp closes the socket when a pong is late, and the driver
    goes down and reconnects as on any lost connection."""

    def __init__(self, session: aiohttp.ClientSession, heartbeat_s: float) -> None:
        self.session = session
        self.heartbeat_s = heartbeat_s

    def ws_connect(self, url: str, **kwargs: Any) -> Any:
        kwargs["compress"] = 0
        kwargs["heartbeat"] = self.heartbeat_s
        return self.session.ws_connect(url, **kwargs)
