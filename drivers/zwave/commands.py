"""Commands to one lock through zwave-js-server, each confirmed by the lock itself.

zwave-js updates its value cache optimistically when a command is sent, so a cache value is
never taken as proof: bolt state and user codes are read back from the device.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
from zwave_js_server.const import CommandClass, NodeStatus, SupervisionStatus
from zwave_js_server.exceptions import (
    BaseZwaveJSServerError,
    FailedZWaveCommand,
    NotConnected,
)
from zwave_js_server.model.node import Node

from drivers.zwave.events import bolt_from_mode
from gatewayd.model import ActionTimeout, DeviceError, DeviceOffline

SECURED = 0xFF
UNSECURED = 0x00
SETTLE_S = 1.0  # how long a lock may keep reporting the old bolt state after a command
USER_ENABLED = 1
USER_AVAILABLE = 0
USER_NOT_AVAILABLE = 0xFE

# zwave-js error codes that mean "the node did not answer in time".
_TIMEOUT_CODES = frozenset({200, 201, 215})  # Controller_Timeout, _NodeTimeout, _MessageExpired


class LinkLost(DeviceError):
    """The websocket to zwave-server dropped with the command sent, or about to be, or was down
    when it was to go: the lock may still carry out it or the command before it (a Set whose
    read-back found the link gone), and its word come only after the reconnect."""


class _NoSecrets(logging.Filter):
    """zwave_js_server logs whole websocket messages at DEBUG; they carry user codes."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not msg.startswith(("Publishing message", "Received message"))


def install_log_filter() -> None:
    lg = logging.getLogger("zwave_js_server")
    if not any(isinstance(f, _NoSecrets) for f in lg.filters):
        lg.addFilter(_NoSecrets())


def check_reachable(node: Node) -> None:
    status = node.status
    if status == NodeStatus.DEAD:
        raise DeviceOffline(f"node {node.node_id} is dead (not answering)")
    if status == NodeStatus.ASLEEP:
        raise DeviceOffline(f"node {node.node_id} is asleep")


async def reach(node: Node) -> None:
    """Refuse a sleeping node at once; ping a dead one first, and refuse it only if the ping
    goes unanswered. zwave-js marks a node dead on a missed frame, common on a real mesh, and
    only a frame from the node marks it alive again: refused unpinged, a lock that had missed
    one frame refused every command until it happened to send something on its own."""
    if node.status == NodeStatus.DEAD and await call("ping", node.async_ping()):
        return  # it answered: zwave-js marks it alive
    check_reachable(node)


async def call[T](what: str, aw: Awaitable[T], *, secret: bool = False) -> T:
    """Await a zwave_js_server call; translate its failures into typed GatewayErrors.

    The client cancels pending futures when the websocket drops, which would look like our own
    cancellation: the call runs in its own task, and only our own cancellation reaches us as
    one. (Awaiting the task itself would hand us the client's CancelledError even when our
    cancel scope fired in the same loop step, and anyio does not catch that one.)
    `secret`: the command carried a PIN, so zwave-js's error text is not passed on.
    """

    async def run() -> T:
        return await aw

    task = asyncio.ensure_future(run())
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.cancelled():
        raise LinkLost(f"{what}: connection to zwave-server lost")
    try:
        return task.result()
    except FailedZWaveCommand as exc:
        detail = "" if secret else f": {exc.zwave_error_message}"
        if exc.zwave_error_code in _TIMEOUT_CODES:
            raise ActionTimeout(f"{what}: the lock did not answer{detail}") from None
        raise DeviceError(f"{what} failed (zwave error {exc.zwave_error_code}){detail}") from None
    except NotConnected:
        raise LinkLost(f"{what}: zwave-server is not connected") from None
    except (aiohttp.ClientError, ConnectionError):
        # sent as the socket reset, before the client saw it close: aiohttp refuses the write
        raise LinkLost(f"{what}: connection to zwave-server lost") from None
    except BaseZwaveJSServerError as exc:
        detail = "" if secret else f": {type(exc).__name__}"
        raise DeviceError(f"{what} failed{detail}") from None


def supervision_failed(result: Any) -> bool:
    """Whether a Set's result is the lock's Supervision Report "Fail": it did not carry it out.

    zwave-js supervises a Set when the node supports Supervision CC; invoke_cc_api then answers
    its SupervisionResult, e.g. {"status": 2} (0 NoSupport, 1 Working, 2 Fail, 255 Success),
    and None when the Set went unsupervised (the lock cannot say).
    """
    return isinstance(result, dict) and result.get("status") == SupervisionStatus.FAIL


async def set_bolt(node: Node, locked: bool, give_up_s: float) -> bool:
    """Send Door Lock Operation Set, then ask the lock until it reports the new bolt state.

    A lock that does not answer is asked again (the caller's deadline cancels); one that
    reports the other state without moving towards the target refused the command.
    """
    target = SECURED if locked else UNSECURED
    what = "lock" if locked else "unlock"
    result = await call(
        what,
        node.async_invoke_cc_api(CommandClass.DOOR_LOCK, "set", target, wait_for_result=True),
    )
    if supervision_failed(result):
        raise DeviceError(f"{what}: the lock refused the command")
    give_up = time.monotonic() + give_up_s
    refused_at: float | None = None
    while True:
        try:
            report = await call(
                f"{what} (read back)",
                node.async_invoke_cc_api(CommandClass.DOOR_LOCK, "get", wait_for_result=True),
            )
        except ActionTimeout:
            report = None
        if isinstance(report, dict):
            now = bolt_from_mode(report.get("currentMode"))  # 0x42: unknown, not unlocked
            if now == locked:
                return locked
            moving = report.get("targetMode") == target and _remaining(report) > 0
            # a bolt motor takes a moment: only a state that persists means the lock refused
            refused_at = refused_at or time.monotonic() + SETTLE_S
            if not moving and time.monotonic() >= refused_at:
                state = {True: "locked", False: "unlocked", None: "unknown"}[now]
                raise DeviceError(f"{what}: the lock reports it is {state}")
        if time.monotonic() > give_up:
            raise ActionTimeout(f"{what}: the lock did not report its bolt state")
        await asyncio.sleep(0.2)


def _remaining(report: dict[str, Any]) -> float:
    duration = report.get("duration")
    if isinstance(duration, dict) and isinstance(duration.get("value"), int | float):
        return float(duration["value"])
    return 0.0


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


async def write_code(node: Node, slot: int, digits: str) -> bool:
    """User Code Set; False when the lock answered it with Supervision Fail (not stored)."""
    result = await call(
        f"set code in slot {slot}",
        node.async_invoke_cc_api(
            CommandClass.USER_CODE, "set", slot, USER_ENABLED, digits, wait_for_result=True
        ),
        secret=True,
    )
    return not supervision_failed(result)


async def clear_slot(node: Node, slot: int) -> None:
    await call(
        f"clear slot {slot}",
        node.async_invoke_cc_api(CommandClass.USER_CODE, "clear", slot, wait_for_result=True),
    )


def is_masked(code: str) -> bool:
    return bool(code) and set(code) == {"*"}
