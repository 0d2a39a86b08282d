"""The OpenAPI 3.1 description of REST v1, served at `/v1/openapi.json`."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

JSON: Final = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid input",
        401: "Missing or wrong API key",
        404: "Not found",
        409: "Conflicts with a change still in progress",
        413: "Request body over 64 KiB",
        429: "Rate limited",
    }
    return {str(c): _ok(_ref("Error"), text[c]) for c in codes}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    }


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _object(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


_NAME: Final = {"type": "string", "minLength": 1, "maxLength": 200}
# query values bounded so that a request with all of them stays within aiohttp's 8 KiB line
_TIMESTAMP: Final = {"type": "string", "maxLength": 64}
_EVENT_ID: Final = {"type": "string", "minLength": 1, "maxLength": 128}
_DEVICE_ID: Final = {"type": "string", "minLength": 1, "maxLength": 100}
_SLOT: Final = {"type": "integer", "minimum": 0, "maximum": 10000}
_DURATION: Final = {"type": "integer", "minimum": 1, "maximum": 255}

SCHEMAS: Final[dict[str, Any]] = {
    "Error": _object(
        {
            "error": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "message": {"type": "string"},
                    "validation_errors": {"type": "object"},
                    "request_id": {"type": "string"},
                },
                "required": ["type", "message", "request_id"],
            },
            "ok": {"type": "boolean", "const": False},
        },
        ["error", "ok"],
    ),
    "Location": _object(
        {"id": {"type": "string", "format": "uuid"}, "name": {"type": "string"}}, ["id", "name"]
    ),
    "DeviceSummary": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "manufacturer": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
        },
        "required": ["id", "name", "manufacturer", "model"],
    },
    "Gateway": _object(
        {
            "id": {"type": "string", "format": "uuid"},
            "devices": {"type": "array", "items": _ref("DeviceSummary")},
            "name": {"type": "string"},
            "status": {"type": "string", "enum": ["online", "offline"]},
        },
        ["id", "devices", "name", "status"],
    ),
    "ActionDescriptor": {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "inputs": {"type": ["object", "null"]},
        },
        "required": ["title", "description", "inputs"],
    },
    "Device": {
        "type": "object",
        "description": "The device as its gateway reported it.",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "manufacturer": {"type": "string"},
            "model": {"type": "string"},
            "protocol": {"type": "string"},
            "actions": {"type": "object", "additionalProperties": _ref("ActionDescriptor")},
            "properties": {"type": "object"},
        },
        "required": ["id"],
    },
    "ActionRequest": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "device_id": {"type": "string"},
            "entity_id": {"type": "string"},
            "entity_type": {"type": "string", "enum": ["Device", "Gateway"]},
            "location_id": {"type": "string"},
            "data": {"type": "object", "minProperties": 1, "maxProperties": 1},
            "status": {
                "type": "string",
                "enum": [
                    "pending",
                    "gateway_received",
                    "gateway_failure",
                    "processing",
                    "completed",
                    "failed",
                ],
            },
            "error": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                "required": ["type", "message"],
            },
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
        "required": ["id", "location_id", "data", "status", "created_at", "updated_at"],
        "additionalProperties": False,
    },
    "Event": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string", "const": "device_event"},
            "device_id": {"type": "string"},
            "event_name": {"type": "string"},
            "details": {"type": "object"},
            "date_created": {"type": "string"},
        },
        "required": ["type", "device_id", "event_name", "details", "date_created"],
    },
}

_DEVICE_INPUTS: Final[dict[str, Any]] = {
    "lock": _object({}, []),
    "unlock": _object({}, []),
    "set_code": _object(
        {"code": {"type": "string", "pattern": "^[0-9]{1,32}$"}, "slot_id": _SLOT}, ["code"]
    ),
    "clear_code": _object({"slot_id": _SLOT}, ["slot_id"]),
}


def _device_action(action: str) -> dict[str, Any]:
    data = _DEVICE_INPUTS[action]
    required = action in ("set_code", "clear_code")
    return {
        "post": {
            "summary": f"Request `{action}` on a door lock",
            "operationId": f"device_{action}",
            "parameters": [_path_param("device_id", "The device")],
            "requestBody": _body(_object({"data": data}, ["data"] if required else []), required),
            "responses": {"200": _ok(_ref("ActionRequest")), **_errors(400, 401, 404)},
        }
    }


def build() -> dict[str, Any]:
    gateway_id = _path_param("gateway_id", "The gateway")
    paths: dict[str, Any] = {
        "/v1/locations": {
            "get": {
                "summary": "List locations",
                "operationId": "list_locations",
                "responses": {
                    "200": _ok({"type": "array", "items": _ref("Location")}),
                    **_errors(401),
                },
            },
            "post": {
                "summary": "Create a location",
                "operationId": "create_location",
                "requestBody": _body(
                    _object(
                        {
                            "name": _NAME,
                            "timezone": {
                                "type": "string",
                                "pattern": "^[A-Za-z0-9_+/-]{1,64}$",
                                "description": "IANA time zone name, e.g. America/New_York",
                            },
                        },
                        ["name", "timezone"],
                    )
                ),
                "responses": {"200": _ok(_ref("Location")), **_errors(400, 401)},
            },
        },
        "/v1/groups": {
            "get": {
                "summary": "List locations (the older name seed 001 uses in its auth example)",
                "operationId": "list_groups",
                "responses": {
                    "200": _ok({"type": "array", "items": _ref("Location")}),
                    **_errors(401),
                },
            }
        },
        "/v1/locations/{location_id}/register_gateway": {
            "post": {
                "summary": "Claim the connected gateway that shows this registration token",
                "operationId": "register_gateway",
                "parameters": [_path_param("location_id", "The location")],
                "requestBody": _body(
                    _object(
                        {
                            "registration_token": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 100,
                            },
                            "name": _NAME,
                        },
                        ["registration_token", "name"],
                    )
                ),
                "responses": {"200": _ok(_ref("Gateway")), **_errors(400, 401, 404, 429)},
            }
        },
        "/v1/gateways": {
            "get": {
                "summary": "List gateways",
                "operationId": "list_gateways",
                "responses": {
                    "200": _ok({"type": "array", "items": _ref("Gateway")}),
                    **_errors(401),
                },
            }
        },
        "/v1/gateways/{gateway_id}": {
            "get": {
                "summary": "Get a gateway",
                "operationId": "get_gateway",
                "parameters": [gateway_id],
                "responses": {"200": _ok(_ref("Gateway")), **_errors(401, 404)},
            },
            "put": {
                "summary": "Rename a gateway",
                "operationId": "update_gateway",
                "parameters": [gateway_id],
                "requestBody": _body(_object({"name": _NAME}, ["name"])),
                "responses": {"200": _ok(_ref("Gateway")), **_errors(400, 401, 404)},
            },
        },
        "/v1/gateways/{gateway_id}/actions/pair_devices": {
            "post": {
                "summary": "Open the gateway's pairing window",
                "operationId": "pair_devices",
                "parameters": [gateway_id],
                "description": (
                    "Opens the inclusion window of every radio (Z-Wave, Zigbee) for `duration`"
                    " seconds. A Z-Wave lock that joins with Security S2 Access Control or S2"
                    " Authenticated needs the 5-digit PIN printed on its label or box (the first"
                    " block of its DSK) as `dsk_pin`; without it the gateway grants such a lock"
                    " only the classes that need no PIN (S2 Unauthenticated, S0), or none. The"
                    " PIN is never stored or shown: the action request's `data` has `****`."
                ),
                "requestBody": _body(
                    _object(
                        {
                            "data": _object(
                                {
                                    "duration": _DURATION,
                                    "dsk_pin": {
                                        "type": "string",
                                        "pattern": "^[0-9]{5}$",
                                        "description": "The S2 DSK PIN on the device's label",
                                    },
                                },
                                ["duration"],
                            )
                        },
                        ["data"],
                    )
                ),
                "responses": {"200": _ok(_ref("ActionRequest")), **_errors(400, 401, 404)},
            }
        },
        "/v1/gateways/{gateway_id}/actions/unpair_devices": {
            "post": {
                "summary": "Open the unpairing window, or remove one device",
                "operationId": "unpair_devices",
                "parameters": [gateway_id],
                "requestBody": _body(
                    _object(
                        {
                            "data": _object(
                                {"duration": _DURATION, "device_id": _DEVICE_ID}, ["duration"]
                            )
                        },
                        ["data"],
                    )
                ),
                "responses": {"200": _ok(_ref("ActionRequest")), **_errors(400, 401, 404)},
            }
        },
        "/v1/gateways/{gateway_id}/actions/rotate_credential": {
            "post": {
                "summary": "Send the online gateway a new credential; the old one stops working",
                "operationId": "rotate_credential",
                "parameters": [gateway_id],
                "responses": {"200": _ok(_ref("Gateway")), **_errors(400, 401, 404, 409)},
            }
        },
        "/v1/gateways/{gateway_id}/actions/revoke_credential": {
            "post": {
                "summary": "Revoke the gateway's credential and close its tunnel",
                "operationId": "revoke_credential",
                "parameters": [gateway_id],
                "responses": {"200": _ok(_ref("Gateway")), **_errors(400, 401, 404)},
            }
        },
        "/v1/devices": {
            "get": {
                "summary": "List devices",
                "operationId": "list_devices",
                "responses": {
                    "200": _ok({"type": "array", "items": _ref("Device")}),
                    **_errors(401),
                },
            }
        },
        "/v1/devices/{device_id}": {
            "get": {
                "summary": "Get a device",
                "operationId": "get_device",
                "parameters": [_path_param("device_id", "The device")],
                "responses": {"200": _ok(_ref("Device")), **_errors(401, 404)},
            }
        },
        **{f"/v1/devices/{{device_id}}/actions/{a}": _device_action(a) for a in _DEVICE_INPUTS},
        "/v1/action_requests/{action_request_id}": {
            "get": {
                "summary": "Get an action request",
                "operationId": "get_action_request",
                "parameters": [_path_param("action_request_id", "The action request")],
                "responses": {"200": _ok(_ref("ActionRequest")), **_errors(401, 404)},
            }
        },
        "/v1/events": {
            "get": {
                "summary": "List door events, oldest first",
                "description": "At most `limit` (default and maximum 1000): the latest ones, "
                "or, with `since` or `after`, the first ones from there on. To page forward, "
                "pass the last event's `id` as `after` (a `date_created` as `since` repeats the "
                "events of that time).",
                "operationId": "list_events",
                "parameters": [
                    {"name": "device_id", "in": "query", "schema": _NAME},
                    {"name": "since", "in": "query", "schema": _TIMESTAMP},
                    {"name": "until", "in": "query", "schema": _TIMESTAMP},
                    {
                        "name": "after",
                        "in": "query",
                        "description": "Only the events listed after this one (an event id)",
                        "schema": _EVENT_ID,
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {
                    "200": _ok({"type": "array", "items": _ref("Event")}),
                    **_errors(400, 401),
                },
            }
        },
    }
    for operations in paths.values():
        if "post" in operations:  # every POST reads its body, if only to refuse one
            operations["post"]["responses"].update(_errors(413))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "devcloud REST API",
            "version": "1.0.0",
            "description": "The cloud API v1 for door-lock gateways. Gateways connect to the "
            "websocket tunnel at /v1/gateway/tunnel (not described here).",
        },
        "servers": [{"url": "/"}],
        "security": [{"basicAuth": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "basicAuth": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "The API key as user name, no password.",
                }
            },
        },
    }


SPEC: Final = build()


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(SPEC)
