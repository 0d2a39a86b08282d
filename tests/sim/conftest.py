"""Fixtures for the sim driver's own tests: a recording sink and a task-group-backed spawn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from gatewayd.driver import Spawn
from tests.contract.hosting import hosted
from tests.contract.sink import RecordingSink


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """`spawn(name, fn)` backed by an anyio task group that is cancelled at teardown."""

    def body(spawn: Spawn) -> AbstractAsyncContextManager[Spawn]:
        return _value(spawn)

    async with hosted(body) as fn:
        yield fn


@asynccontextmanager
async def _value(value: Spawn) -> AsyncIterator[Spawn]:
    yield value
