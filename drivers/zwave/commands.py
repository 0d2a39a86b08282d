"""Commands to one lock through zwave-js-server, each confirmed by the lock itself.

zwave-js updates its value cache optimistically when a command is sent, so a cache value is
never taken as proof: bolt state and user codes are read back from the device.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from zwave_js_server.const import CommandClass, NodeStatus
from zwave_js_server.exceptions import (
    BaseZwaveJSServerError,
    FailedZWaveCommand,
    NotConnected,
)
from zwave_js_server.model.node import Node

from gatewayd.model import ActionTimeout, DeviceError, DeviceOffline

SECURED = 0xFF
UNSECURED = 0x00
USER_ENABLED = 1
USER_AVAILABLE = 0
USER_NOT_AVAILABLE = 0xFE

# zwave-js error codes that mean "the node did not answer in time".
_TIMEOUT_CODES = frozenset({200, 201, 215})  # Controller_Timeout, _NodeTimeout, _MessageExpired


class _NoSecrets(logging.Filter):
    """zwave_js_server logs whole websocket messages at DEBUG; they carry user codes."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not (msg.startswith("Publishing message") or msg.startswith("Received message"))


def install_log_filter() -> None:
    lg = logging.getLogger("zwave_js_server")
    if not any(isinstance(f, _NoSecrets) for f in lg.filters):
        lg.addFilter(_NoSecrets())


def mode_locked(mode: Any) -> bool | None:
    """Door Lock CC mode -> locked? (None when unknown)."""
    if not isinstance(mode, int) or mode == 0xFE:
        return None
    return mode == SECURED


def check_reachable(node: Node) -> None:
    status = node.status
    if status == NodeStatus.DEAD:
        raise DeviceOffline(f"node {node.node_id} is dead (not answering)")
    if status == NodeStatus.ASLEEP:
        raise DeviceOffline(f"node {node.node_id} is asleep")


async def call[T](what: str, aw: Awaitable[T], *, secret: bool = False) -> T:
    """Await a zwave_js_server call; translate its failures into typed GatewayErrors.

    The client cancels pending futures when the websocket drops, which would look like our own
    cancellation: the call runs in its own task so the two can be told apart.
    `secret`: the command carried a PIN, so zwave-js's error text is not passed on.
    """

    async def run() -> T:
        return await aw

    task = asyncio.ensure_future(run())
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if task.cancelled() and current is not None and current.cancelling() == 0:
            raise DeviceError(f"{what}: connection to zwave-server lost") from None
        raise
    except FailedZWaveCommand as exc:
        detail = "" if secret else f": {exc.zwave_error_message}"
        if exc.zwave_error_code in _TIMEOUT_CODES:
            raise ActionTimeout(f"{what}: the lock did not answer{detail}") from None
        raise DeviceError(f"{what} failed (zwave error {exc.zwave_error_code}){detail}") from None
    except NotConnected:
        raise DeviceError(f"{what}: zwave-server is not connected") from None
    except BaseZwaveJSServerError as exc:
        detail = "" if secret else f": {type(exc).__name__}"
        raise DeviceError(f"{what} failed{detail}") from None


def _supervision_failed(result: Any) -> bool:
    # SupervisionResult status: 0 NoSupport, 1 Working, 2 Fail, 255 Success
    return isinstance(result, dict) and result.get("status") == 2


async def set_bolt(node: Node, locked: bool) -> bool:
    """Send Door Lock Operation Set, then read the bolt state back from the lock."""
    target = SECURED if locked else UNSECURED
    what = "lock" if locked else "unlock"
    result = await call(
        what,
        node.async_invoke_cc_api(CommandClass.DOOR_LOCK, "set", target, wait_for_result=True),
    )
    if _supervision_failed(result):
        raise DeviceError(f"{what}: the lock refused the command")
    report = await call(
        f"{what} (read back)",
        node.async_invoke_cc_api(CommandClass.DOOR_LOCK, "get", wait_for_result=True),
    )
    if not isinstance(report, dict):
        raise ActionTimeout(f"{what}: the lock did not report its bolt state")
    now = mode_locked(report.get("currentMode"))
    if now != locked:
        state = {True: "locked", False: "unlocked", None: "unknown"}[now]
        raise DeviceError(f"{what}: the lock reports it is {state}")
    return locked


async def read_slot(node: Node, slot: int) -> tuple[int, str]:
    """(userIdStatus, code-or-mask) of one slot, from the device, not the cache."""
    report = await call(
        f"read slot {slot}",
        node.async_invoke_cc_api(CommandClass.USER_CODE, "get", slot, wait_for_result=True),
        secret=True,
    )
    if not isinstance(report, dict):
        raise ActionTimeout(f"slot {slot}: the lock did not report the slot")
    status = report.get("userIdStatus")
    code = report.get("userCode") or ""
    if not isinstance(code, str):
        code = ""
    return (int(status) if isinstance(status, int) else USER_NOT_AVAILABLE), code


async def write_code(node: Node, slot: int, digits: str) -> None:
    await call(
        f"set code in slot {slot}",
        node.async_invoke_cc_api(
            CommandClass.USER_CODE, "set", slot, USER_ENABLED, digits, wait_for_result=True
        ),
        secret=True,
    )


async def clear_slot(node: Node, slot: int) -> None:
    await call(
        f"clear slot {slot}",
        node.async_invoke_cc_api(CommandClass.USER_CODE, "clear", slot, wait_for_result=True),
    )


def is_masked(code: str) -> bool:
    return bool(code) and set(code) == {"*"}
