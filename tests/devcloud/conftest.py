"""Fixtures of the devcloud tests: devcloud on a real loopback socket (see tests/cloudkit.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cloudkit import (
    API_KEY,
    DEVICE_ID,
    SET_CODE,
    Cloud,
    CloudFactory,
    TunnelClient,
    clouds,
    device_body,
)

__all__ = [
    "API_KEY",
    "DEVICE_ID",
    "SET_CODE",
    "Cloud",
    "CloudFactory",
    "TunnelClient",
    "device_body",
]


@pytest.fixture
async def make_cloud(tmp_path: Path) -> AsyncIterator[CloudFactory]:
    async with clouds(tmp_path) as start:
        yield start


@pytest.fixture
async def cloud(make_cloud: CloudFactory) -> Cloud:
    return await make_cloud()
