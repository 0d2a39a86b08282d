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
    """An aiohttp ClientSession's `ws_connect`, always without compression."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    def ws_connect(self, url: str, **kwargs: Any) -> Any:
        kwargs["compress"] = 0
        return self.session.ws_connect(url, **kwargs)
