"""One socket write for a batch of websocket frames.

aiohttp's websocket writer hands every frame to the transport on its own, and an idle asyncio
transport sends each at once: one `send` syscall per frame, five per action under load. While
`coalesced_writes(ws)` is open, the frames aiohttp builds (header, mask and all) are collected
instead, and leave in one `writelines` when it closes: one `sendmsg` for the batch.

The frames and their order are unchanged; flow control still works per batch (aiohttp counts
what it wrote and waits for the transport to drain at its own limit). This reaches into
aiohttp's `ClientWebSocketResponse._writer.transport` (aiohttp is pinned); should that change,
frames go out one by one as before and tests/unit/test_coalesce.py says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class _Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def writelines(self, list_of_data: list[bytes]) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...


class _Collector:
    """Stands in for the transport inside aiohttp's writer while a batch is written."""

    def __init__(self, transport: _Transport) -> None:
        self.transport = transport
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)  # aiohttp builds each frame anew: nothing to copy

    def is_closing(self) -> bool:
        return self.transport.is_closing()


def writer_transport(ws: Any) -> _Transport | None:
    """The transport aiohttp's writer writes frames to, if this aiohttp has one where we look."""
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    if transport is None or not all(
        callable(getattr(transport, name, None)) for name in ("write", "writelines", "is_closing")
    ):
        return None
    return transport  # type: ignore[no-any-return]


@contextmanager
def coalesced_writes(ws: Any) -> Iterator[None]:
    """Frames sent on `ws` inside the block leave in one write when it ends (see module doc)."""
    transport = writer_transport(ws)
    if transport is None:
        yield
        return
    collector = _Collector(transport)
    ws._writer.transport = collector
    try:
        yield
    finally:
        ws._writer.transport = transport
        if collector.parts and not transport.is_closing():
            transport.writelines(collector.parts)
