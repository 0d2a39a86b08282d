"""REST errors in the seed's shape, the error/auth middleware, and strict JSON body reading.

`{"error": {"type", "message", "validation_errors"?, "request_id"}, "ok": false}`. Messages name
fields and rules, never the submitted values (a value may be a PIN).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

log = structlog.get_logger("devcloud.rest")

REQUEST_ID: Final = web.RequestKey("request_id", str)
_PUBLIC_PATHS: Final = frozenset({"/v1/openapi.json", "/v1/gateway/tunnel"})
MAX_BODY_BYTES: Final = 64 * 1024


class ApiError(Exception):
    """An error response: HTTP status, seed error `type`, and a message free of input values."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        validation_errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.validation_errors = validation_errors
        self.headers = headers or {}


def not_found(kind: str) -> ApiError:
    return ApiError(404, f"{kind}_not_found", f"{kind.replace('_', ' ').capitalize()} not found")


def error_response(
    status: int,
    type_: str,
    message: str,
    request_id: str,
    validation_errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"type": type_, "message": message}
    if validation_errors is not None:
        error["validation_errors"] = validation_errors
    error["request_id"] = request_id
    return web.json_response({"error": error, "ok": False}, status=status, headers=headers)


def request_id(request: web.Request) -> str:
    return request.get(REQUEST_ID) or str(uuid.uuid4())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_middleware(api_key: str) -> Middleware:
    """Request ids, Basic auth with the API key as user name, and seed-shaped errors."""
    key = api_key.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = str(uuid.uuid4())
        request[REQUEST_ID] = rid
        try:
            if request.path not in _PUBLIC_PATHS and not _authorized(request, key):
                return error_response(
                    401,
                    "unauthorized",
                    "Couldn't authenticate your request",
                    rid,
                    headers={"WWW-Authenticate": 'Basic realm="devcloud"'},
                )
            return await handler(request)
        except ApiError as exc:
            return error_response(
                exc.status, exc.type, exc.message, rid, exc.validation_errors, exc.headers
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            kind = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(
                exc.status, kind.get(exc.status, "invalid_request"), exc.reason, rid, headers=allow
            )
        except Exception as exc:  # noqa: BLE001 - bad input must never become a bare 500
            log.error("rest.internal_error", path=request.path, error_type=type(exc).__name__)
            return error_response(500, "internal_error", "Internal server error", rid)

    return middleware


def _authorized(request: web.Request, key: bytes) -> bool:
    """Basic auth whose user name is the API key (any password)."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    login = decoded.partition(b":")[0]
    return hmac.compare_digest(login, key)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or None when empty. 400 on bad JSON or a non-JSON content type."""
    try:
        body = await request.read()
    except (web.RequestPayloadError, HttpProcessingError):
        # e.g. a Content-Encoding the body is not in: a 500 before (gzip, deflate)
        raise ApiError(400, "invalid_input", "Request body could not be decoded") from None
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", "Request body is too large")
    if not body.strip():
        return None
    if request.content_type != "application/json":
        raise ApiError(400, "invalid_input", "Content-Type must be application/json")
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError, ValueError):
        raise ApiError(400, "invalid_input", "Request body is not valid JSON") from None
