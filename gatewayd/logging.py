"""structlog set-up: JSON lines for the journal, console on a TTY, and the redaction processor.

Redaction is the last line of defence: PINs and credentials are never passed to a logger in
the first place. Library logs (aiohttp, zigpy, zwave-js-server-python) go through the same
pipeline, so they are redacted and formatted the same way. After redaction, the flood guard
(gatewayd/logguard.py) limits each kind of line to a steady rate.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import structlog
from structlog._config import BoundLoggerLazyProxy
from structlog.typing import EventDict, Processor, WrappedLogger

from gatewayd.logguard import LogFloodGuard

MASK: Final = "****"

# Keys whose values are secrets wherever they appear, also nested. Compared with case, `_` and
# `-` dropped (see _NORM), so `pinCode`, `user-code`, `networkKey` and `X-Api-Key` match too.
SECRET_KEYS: Final = frozenset(
    {
        "code",
        "codes",
        "pin",
        "pins",
        "pincode",
        "pincodes",
        "usercode",
        "usercodes",
        "credential",
        "credentials",
        "password",
        "passwd",
        "secret",
        "secrets",
        "apikey",
        "xapikey",
        "authorization",
        "proxyauthorization",
        "auth",
        "accesstoken",
        "refreshtoken",
        "networkkey",
        "tclinkkey",
        "linkkey",
        "key",
        "keys",
        "securitykeys",
        "s0legacy",
        "s2unauthenticated",
        "s2authenticated",
        "s2accesscontrol",
        "dskpin",
        "cookie",
        "setcookie",
    }
)
_NORM: Final = re.compile(r"[-_]")
# Secrets inside free text: "Bearer abc", "Basic abc", "ws://user:pw@host", "code=1234",
# "'code': '1234'", "pin_code=b'1234'" (a zigpy command's repr), "userCode\":\"1234" (JSON
# quoted in a repr).
_TEXT_PATTERNS: Final = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + MASK),
    # a URL's user and password: "ws://admin:s3cret@10.0.0.2:3000" in a connection error
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s'\"]+@"), r"\1" + MASK + "@"),
    (
        re.compile(
            r"(?i)((?:\\*['\"])?\b(?:(?:user|pin)_?code|code|(?:dsk_?)?pin|credentials?|password|passwd"
            r"|secret|api_?key|network_?key)\b\\*['\"]?\s*[:=]\s*(?:b?\\*['\"])?)"
            r"[^'\"\\\s,;}&)\]]+"
        ),
        r"\1" + MASK,
    ),
    (
        re.compile(
            r"(?i)(\b(?:proxy-)?authorization\b\\*['\"]?\s*[:=]\s*(?:\\*['\"])?)"
            r"(?:[A-Za-z-]+ +)?[^'\"\\\s,;}&)\]]+"
        ),
        r"\1" + MASK,
    ),
)
_DEPTH_LIMIT: Final = 6


def redact_value(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with secrets under known keys and in free text masked."""
    if depth > _DEPTH_LIMIT:
        return MASK
    if isinstance(value, str):
        for pattern, repl in _TEXT_PATTERNS:
            value = pattern.sub(repl, value)
        return value
    if isinstance(value, Mapping):
        return {
            k: (MASK if _is_secret_key(k) else redact_value(v, depth + 1)) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return redact_value(value.decode("utf-8", "replace"), depth + 1)
    if value is None or isinstance(value, bool | int | float):
        return value
    # Any other object (an exception, a request) is rendered by its repr, after this processor
    # has run: mask what that text quotes.
    return redact_value(repr(value), depth + 1)


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and _NORM.sub("", key.lower()) in SECRET_KEYS


# ProcessorFormatter's own keys on a stdlib record's way through; it removes them itself.
_META_KEYS: Final = frozenset({"_record", "_from_structlog"})


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every key-value and in rendered exceptions."""
    for key in list(event_dict):
        if key in _META_KEYS:
            continue
        if _is_secret_key(key):
            event_dict[key] = MASK
        else:
            event_dict[key] = redact_value(event_dict[key])
    return event_dict


def _redact_rendered(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Run after format_exc_info: tracebacks are text, mask what they may quote."""
    exc = event_dict.get("exception")
    if isinstance(exc, str):
        event_dict["exception"] = redact_value(exc)
    return event_dict


_LOG_METHODS: Final = frozenset(
    {"debug", "info", "warning", "warn", "error", "critical", "exception", "fatal", "msg", "log"}
)


class _CachingProxy(BoundLoggerLazyProxy):
    """structlog's lazy logger proxy, which also keeps the logging methods it looked up.

    The plain proxy caches the assembled logger on first use (`cache_logger_on_first_use`) but
    still resolves `log.info` through `__getattr__` and `bind()` on every call. Once structlog
    has cached the logger, this proxy stores the method itself, so a line at a filtered-out
    level costs one call to a no-op. Like the cached logger, the methods keep the
    configuration that was in force at first use.
    """

    def __getattr__(self, name: str) -> Any:
        value = super().__getattr__(name)
        if name in _LOG_METHODS and "bind" in self.__dict__:  # structlog cached the logger
            self.__dict__[name] = value
        return value


def get_logger(name: str) -> Any:
    """A module's logger, as `structlog.get_logger(name)`, with its methods cached on first
    use (see `_CachingProxy`)."""
    return _CachingProxy(None, logger_factory_args=(name,))


def want_json(fmt: str, stream: TextIO) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    return bool(os.environ.get("JOURNAL_STREAM")) or not stream.isatty()


_flood_guard: LogFloodGuard | None = None


def lines_suppressed() -> dict[str, int]:
    """Log lines the flood guard has dropped since `configure`, by event name."""
    return {} if _flood_guard is None else _flood_guard.suppressed()


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    flood_guard: LogFloodGuard | None = None,
) -> None:
    """Configure structlog and stdlib logging once for the process."""
    global _flood_guard  # one logging pipeline per process, as there is one root handler
    guard = _flood_guard = flood_guard or LogFloodGuard()
    stream = stream or sys.stderr
    json_lines = want_json(fmt, stream)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_rendered,
        redact,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(guard.filter)  # library lines: a formatter cannot drop a line
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    root.setLevel(numeric)
    # Chatty libraries stay at warning unless we debug.
    for name in ("aiohttp.access", "aiosqlite", "zigpy", "zwave_js_server", "bellows", "zigpy_znp"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[*shared, guard, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
