"""An anyio task group living in a task of its own, so one fixture can span setup and teardown.

pytest-asyncio runs a fixture's setup and teardown in different tasks, and an anyio cancel
scope must be exited by the task that entered it. `hosted` therefore enters the task group (and
whatever context is built on it) inside a dedicated host task and hands the value out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

from gatewayd.driver import Spawn

TEARDOWN_TIMEOUT_S = 60.0


@asynccontextmanager
async def hosted[T](
    body: Callable[[Spawn], AbstractAsyncContextManager[T]],
) -> AsyncIterator[T]:
    """Enter `body(spawn)` in a host task whose task group backs `spawn`; yield its value.

    On exit the body's context is left, then the task group is cancelled, all in the host task.
    A crash of a spawned task or of the body surfaces here, at setup or at teardown.
    """
    loop = asyncio.get_running_loop()
    handed: asyncio.Future[T] = loop.create_future()
    release = asyncio.Event()

    async def host() -> None:
        async with anyio.create_task_group() as tg:

            def spawn(name: str, fn: Callable[[], Awaitable[None]]) -> None:
                async def run() -> None:
                    await fn()

                tg.start_soon(run, name=name)

            async with body(spawn) as value:
                handed.set_result(value)
                await release.wait()
            tg.cancel_scope.cancel()

    task = asyncio.create_task(host(), name="contract.host")
    first: set[asyncio.Future[Any]] = {handed, task}
    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    if not handed.done():
        task.result()  # the host ended before handing a value: raise its error
        raise RuntimeError("the hosted context ended before yielding a value")
    try:
        yield handed.result()
    finally:
        release.set()
        await asyncio.wait_for(task, TEARDOWN_TIMEOUT_S)
