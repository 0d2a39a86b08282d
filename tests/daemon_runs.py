"""A daemon run in-process from start to a clean stop, and what it left in its store."""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from gatewayd.config import parse_config
from gatewayd.daemon import DB_NAME, Daemon
from gatewayd.driver import Driver
from gatewayd.store import Store


async def run_once(
    config: str, *, timeout: float = 30, driver_classes: dict[str, type[Driver]] | None = None
) -> Daemon:
    """Start a daemon on this config text and stop it once it has started."""
    daemon = Daemon(parse_config(config), driver_classes=driver_classes or {})
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await daemon.wait_started()
            daemon.stop()
    return daemon


def stored(state: Path) -> tuple[dict[str, str], list[str]]:
    """The store's devices (native id -> device id), and the devices removed in its outbox."""
    store = Store.open(state / DB_NAME)
    try:
        devices = {row.native_id: row.device_id for row in store.devices()}
        frames = [json.loads(frame) for _, frame in store.outbox_after(0, limit=10_000)]
    finally:
        store.close()
    return devices, [f["device_id"] for f in frames if f["type"] == "device_removed"]
