"""Plugins and fixtures shared by every suite."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import structlog
from structlog._config import BoundLoggerLazyProxy

from gatewayd.logging import _LOG_METHODS

pytest_plugins = ["tests.reliability.leakscan"]

_OURS = ("gatewayd", "drivers", "devcloud", "tests")


def _uncache_loggers() -> None:
    """Module loggers keep the configuration in force at their first use (structlog's
    `cache_logger_on_first_use`, and `gatewayd.logging`'s method cache): one test that
    configured logging would otherwise hide every later test's `capture_logs()` lines."""
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(_OURS):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, BoundLoggerLazyProxy):
                for key in [k for k in vars(value) if k == "bind" or k in _LOG_METHODS]:
                    del value.__dict__[key]


@pytest.fixture(autouse=True)
def _structlog_as_each_test_found_it() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    _uncache_loggers()
