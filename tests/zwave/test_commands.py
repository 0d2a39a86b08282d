"""commands.call: a zwave_js_server call ends in a typed error or in our own cancellation."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from drivers.zwave import commands
from gatewayd.model import DeviceError


async def test_a_link_drop_as_the_session_is_cancelled_stays_inside_the_session() -> None:
    """The websocket drops while a call is pending: zwave_js_server cancels the call's future
    and, in the same loop step, the session's task group is cancelled. The call must end in
    that cancellation, which the task group absorbs. Before, the client's CancelledError came
    out instead; anyio let it through, and it ended the connection task: the driver stayed
    READY with no client and never reconnected."""
    client_future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    outcomes: list[str] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def listen() -> None:
                await anyio.sleep(0.05)
                client_future.cancel()  # zwave_js_server's listen() teardown
                tg.cancel_scope.cancel()  # the driver's session sees the listener end

            tg.start_soon(listen)
            try:
                await commands.call("read bolt state", client_future)
            except DeviceError:
                outcomes.append("device_error")
            await anyio.sleep_forever()
    assert outcomes == []
    assert tg.cancel_scope.cancelled_caught


async def test_a_link_drop_alone_is_a_device_error() -> None:
    """The client cancels the call's future and nothing cancels us: the link is lost, typed."""
    client_future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, client_future.cancel)
    with anyio.fail_after(5), pytest.raises(DeviceError, match="connection to zwave-server lost"):
        await commands.call("read bolt state", client_future)


class _LockAnswering:
    """A node double whose Door Lock Get answers with the modes given, one per read."""

    def __init__(self, *modes: int) -> None:
        self.modes = list(modes)
        self.node_id = 2

    async def async_invoke_cc_api(
        self, cc: object, method: str, *args: object, **kw: object
    ) -> object:
        if method == "set":
            return None
        mode = self.modes.pop(0) if len(self.modes) > 1 else self.modes[0]
        return {"currentMode": mode, "targetMode": mode}


@pytest.mark.parametrize("mode", [0x42, 0xFE, 0x80])
async def test_a_read_back_outside_the_door_lock_modes_is_no_confirmed_unlock(mode: int) -> None:
    """Every mode but 0xFF and 0xFE was read as unlocked: a lock answering 0x42 (no mode of the
    CC) made an unlock `completed` that the lock never confirmed."""
    node = _LockAnswering(mode)
    with anyio.fail_after(10), pytest.raises(DeviceError, match="reports it is unknown"):
        await commands.set_bolt(node, False, give_up_s=5)  # type: ignore[arg-type]


async def test_an_unlocked_mode_after_an_odd_one_confirms_the_unlock() -> None:
    node = _LockAnswering(0x42, 0x00)
    with anyio.fail_after(10):
        assert await commands.set_bolt(node, False, give_up_s=5) is False  # type: ignore[arg-type]
