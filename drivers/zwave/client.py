"""A lean zwave-js-server websocket client: the part of the protocol the driver uses.

zwave-js-server-python builds a pydantic model for every server event and pulls in the whole
zwave-js model tree; on a box that is about 12 MiB of resident memory for a daemon that reads a
handful of values. This client speaks the same messages (schema 49-50, as zwave-js-server-python
0.73) and keeps only what the driver reads: the controller's nodes, each node's state, values and
root-endpoint command classes, and the node and controller events, passed on as the server sends
them. Commands are answered by `result` messages matched on their message id; a closed websocket
cancels every pending command.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import msgspec
import structlog

from gatewayd import __version__

log = structlog.get_logger(__name__)

MIN_SCHEMA: Final = 49
MAX_SCHEMA: Final = 50


class CommandClass(enum.IntEnum):
    """The Z-Wave command classes the driver reads or commands."""

    DOOR_LOCK = 0x62
    USER_CODE = 0x63
    NOTIFICATION = 0x71
    BATTERY = 0x80


class NodeStatus(enum.IntEnum):
    UNKNOWN = 0
    ASLEEP = 1
    AWAKE = 2
    DEAD = 3
    ALIVE = 4


class InclusionStrategy(enum.IntEnum):
    DEFAULT = 0  # S2 when the joining node supports it


# ---------------------------------------------------------------------- errors


class ZWaveServerError(Exception):
    """Any failure talking to zwave-server."""


class CannotConnect(ZWaveServerError):
    pass


class InvalidServerVersion(ZWaveServerError):
    pass


class InvalidMessage(ZWaveServerError):
    pass


class ConnectionFailed(ZWaveServerError):
    pass


class NotConnected(ZWaveServerError):
    pass


class NotFound(ZWaveServerError):
    pass


class FailedCommand(ZWaveServerError):
    """The server answered a command with an error."""

    def __init__(self, error_code: str, message: str = "") -> None:
        super().__init__(f"{error_code}: {message}" if message else error_code)
        self.error_code = error_code


class FailedZWaveCommand(FailedCommand):
    """zwave-js itself failed the command (the node did not answer, refused, ...)."""

    def __init__(self, zwave_error_code: int, zwave_error_message: str) -> None:
        super().__init__("zwave_error", f"{zwave_error_code}: {zwave_error_message}")
        self.zwave_error_code = zwave_error_code
        self.zwave_error_message = zwave_error_message


# ---------------------------------------------------------------------- model


class _Emitter:
    """Listeners per event name; a listener that raises is logged, the others still run."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Callable[[dict[str, Any]], None]]] = {}

    def on(self, event: str, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        listeners = self._listeners.setdefault(event, [])
        listeners.append(callback)

        def unsubscribe() -> None:
            if callback in listeners:
                listeners.remove(callback)

        return unsubscribe

    def emit(self, event: str, data: dict[str, Any]) -> None:
        for listener in list(self._listeners.get(event, ())):
            try:
                listener(data)
            except Exception:  # one listener must not stop the event stream
                log.exception("zwave.listener_failed", zwave_event=event)


def _value_id(data: dict[str, Any]) -> str:
    key = data.get("propertyKey")
    base = f"{data['commandClass']}-{data.get('endpoint') or 0}-{data['property']}"
    return base if key is None else f"{base}-{key}"


class Value:
    """One value of a node as zwave-js reports it (its cached state, not a device read)."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.update({})

    def update(self, data: dict[str, Any]) -> None:
        self.data.update(data)
        self.data.pop("prevValue", None)
        if "newValue" in self.data:
            self.data["value"] = self.data.pop("newValue")

    @property
    def command_class(self) -> int:
        return int(self.data["commandClass"])

    @property
    def property_name(self) -> Any:
        return self.data.get("propertyName")

    @property
    def property_key(self) -> Any:
        return self.data.get("propertyKey")

    @property
    def endpoint(self) -> int | None:
        return self.data.get("endpoint")

    @property
    def value(self) -> Any:
        return self.data.get("value")


class Notification:
    """A Notification CC (0x71) report: `type_` and `event` as in the Z-Wave spec."""

    __slots__ = ("event", "event_label", "label", "parameters", "type_")

    def __init__(self, args: dict[str, Any]) -> None:
        self.type_: int = args["type"]
        self.event: int = args["event"]
        self.label: str = args.get("label", "")
        self.event_label: str = args.get("eventLabel", "")
        self.parameters: dict[str, Any] = args.get("parameters") or {}


class DeviceConfig:
    __slots__ = ("label", "manufacturer")

    def __init__(self, data: dict[str, Any]) -> None:
        self.manufacturer: str | None = data.get("manufacturer")
        self.label: str | None = data.get("label")


class Node(_Emitter):
    """A node of the network: its state dump, kept up to date by its events."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        super().__init__()
        self.client = client
        self.node_id: int = data["nodeId"]
        self.data: dict[str, Any] = {}
        self.values: dict[str, Value] = {}
        self._ccs: frozenset[int] = frozenset()
        self.update(data)

    def update(self, data: dict[str, Any]) -> None:
        """Take a full state dump (the start-up state, or a `ready` event's nodeState)."""
        values = data.pop("values", None) or []
        endpoints = data.pop("endpoints", None) or []
        self.data = data
        self.values = {_value_id(v): Value(v) for v in values}
        self._ccs = frozenset(
            cc["id"]
            for ep in endpoints
            if ep.get("index", 0) == 0
            for cc in ep.get("commandClasses", ())
        )

    @property
    def status(self) -> NodeStatus:
        return NodeStatus(self.data.get("status", NodeStatus.UNKNOWN))

    @property
    def ready(self) -> bool:
        return bool(self.data.get("ready"))

    @property
    def is_controller_node(self) -> bool:
        return bool(self.data.get("isControllerNode"))

    @property
    def name(self) -> str | None:
        return self.data.get("name")

    @property
    def label(self) -> str | None:
        return self.data.get("label")

    @property
    def manufacturer_id(self) -> int | None:
        return self.data.get("manufacturerId")

    @property
    def firmware_version(self) -> str | None:
        return self.data.get("firmwareVersion")

    @property
    def device_config(self) -> DeviceConfig:
        return DeviceConfig(self.data.get("deviceConfig") or {})

    def receive_event(self, event: str, data: dict[str, Any]) -> None:
        match event:
            case "wake up":
                self.data["status"] = NodeStatus.AWAKE
            case "sleep":
                self.data["status"] = NodeStatus.ASLEEP
            case "dead":
                self.data["status"] = NodeStatus.DEAD
            case "alive":
                self.data["status"] = NodeStatus.ALIVE
            case "interview started":
                self.data["ready"] = False
            case "interview completed":
                self.data["ready"] = True
            case "ready":
                self.update(data["nodeState"])
            case "value added" | "value updated" | "metadata updated":
                args = data["args"]
                vid = _value_id(args)
                value = self.values.get(vid)
                if value is None:
                    value = self.values[vid] = Value(dict(args))
                else:
                    value.update(args)
                data["value"] = value
            case "value removed":
                data["value"] = self.values.pop(_value_id(data["args"]), None)
            case "notification":
                if data.get("ccId") == CommandClass.NOTIFICATION:
                    data["notification"] = Notification(data["args"])
        data["node"] = self
        self.emit(event, data)

    async def _command(self, command: str, **fields: Any) -> dict[str, Any]:
        return await self.client.command({"command": command, "nodeId": self.node_id, **fields})

    async def async_invoke_cc_api(
        self, command_class: CommandClass, method: str, *args: Any, wait_for_result: bool = True
    ) -> Any:
        """The CC API `method` on the root endpoint; the device's answer (a report dict)."""
        if command_class not in self._ccs:
            raise NotFound(f"node {self.node_id} has no {command_class.name} command class")
        result = await self._command(
            "endpoint.invoke_cc_api",
            endpoint=0,
            commandClass=int(command_class),
            methodName=method,
            args=list(args),
        )
        return result.get("response") if result else None

    async def async_ping(self) -> bool:
        result = await self._command("node.ping")
        return bool(result.get("responded", False))


class Controller(_Emitter):
    """The controller and its nodes, by node id."""

    def __init__(self, client: Client, state: dict[str, Any]) -> None:
        super().__init__()
        self.client = client
        self.data: dict[str, Any] = state.get("controller") or {}
        self.nodes: dict[int, Node] = {}
        for data in state.get("nodes") or ():
            node = Node(client, data)
            self.nodes[node.node_id] = node

    @property
    def home_id(self) -> int | None:
        return self.data.get("homeId")

    def receive_event(self, event: str, data: dict[str, Any]) -> None:
        if event == "node added":
            node = data["node"] = Node(self.client, data["node"])
            self.nodes[node.node_id] = node
        elif event == "node removed":
            removed = self.nodes.pop(data["node"]["nodeId"], None)
            if removed is None:
                return
            data["node"] = removed
        data["controller"] = self
        self.emit(event, data)

    async def _ok(self, message: dict[str, Any]) -> bool:
        return bool((await self.client.command(message)).get("success"))

    async def async_begin_inclusion(self, strategy: InclusionStrategy) -> bool:
        return await self._ok(
            {"command": "controller.begin_inclusion", "options": {"strategy": int(strategy)}}
        )

    async def async_stop_inclusion(self) -> bool:
        return await self._ok({"command": "controller.stop_inclusion"})

    async def async_begin_exclusion(self) -> bool:
        return await self._ok({"command": "controller.begin_exclusion"})

    async def async_stop_exclusion(self) -> bool:
        return await self._ok({"command": "controller.stop_exclusion"})

    async def async_remove_failed_node(self, node: Node) -> None:
        await self.client.command(
            {"command": "controller.remove_failed_node", "nodeId": node.node_id}
        )


# ---------------------------------------------------------------------- connection


class Client:
    """One websocket to zwave-server: `connect()`, then `listen(ready)` until it closes."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self._session = session
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.controller: Controller | None = None
        self.server_version: str | None = None
        self.schema_version = MAX_SCHEMA
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._decode = msgspec.json.Decoder()

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self) -> None:
        """Open the websocket and agree on a schema from the server's version message."""
        try:
            self._ws = await self._session.ws_connect(
                self.url, heartbeat=55, compress=15, max_msg_size=0
            )
        except aiohttp.ClientError as exc:
            raise CannotConnect(f"{type(exc).__name__}: {exc}") from exc
        version = await self._receive()
        self.server_version = version.get("serverVersion")
        lo, hi = version.get("minSchemaVersion", 0), version.get("maxSchemaVersion", 0)
        if lo > MAX_SCHEMA or hi < MIN_SCHEMA:
            await self._ws.close()
            raise InvalidServerVersion(
                f"zwave-server {self.server_version} serves schema {lo}..{hi}, "
                f"not {MIN_SCHEMA}..{MAX_SCHEMA}"
            )
        self.schema_version = min(hi, MAX_SCHEMA)

    async def listen(self, ready: asyncio.Event) -> None:
        """Set the schema, take the network's state, set `ready`, then follow events until the
        websocket closes. Pending commands are cancelled when it does."""
        if self._ws is None or self._ws.closed:
            raise NotConnected("not connected")
        ws = self._ws
        try:
            await self._handshake(
                {
                    "command": "initialize",
                    "schemaVersion": self.schema_version,
                    "additionalUserAgentComponents": {"gatewayd": __version__},
                }
            )
            state = await self._handshake({"command": "start_listening"})
            self.controller = Controller(self, state["state"])
            ready.set()
            log.info("zwave.listening", nodes=len(self.controller.nodes))
            while not ws.closed:
                try:
                    msg = await self._receive()
                except _Closed:
                    return
                self._handle(msg)
        except _Closed:
            return
        finally:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            if not ws.closed:
                await ws.close()

    async def disconnect(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self.controller = None

    async def command(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a command and wait for its result (raises FailedCommand on an error result)."""
        if self._ws is None or self._ws.closed:
            raise NotConnected("not connected to zwave-server")
        message_id = message["messageId"] = str(next(self._ids))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            await self._ws.send_str(msgspec.json.encode(message).decode())
            return await future
        finally:
            self._pending.pop(message_id, None)

    async def _handshake(self, message: dict[str, Any]) -> dict[str, Any]:
        """A command answered before any event flows (initialize, start_listening)."""
        assert self._ws is not None
        message_id = message["messageId"] = str(message["command"])
        await self._ws.send_str(msgspec.json.encode(message).decode())
        answer = await self._receive()
        if answer.get("messageId") != message_id or not answer.get("success"):
            await self._ws.close()
            raise FailedCommand(
                str(answer.get("errorCode", "unexpected_message")), str(answer.get("message", ""))
            )
        result: dict[str, Any] = answer.get("result") or {}
        return result

    async def _receive(self) -> dict[str, Any]:
        assert self._ws is not None
        msg = await self._ws.receive()
        if msg.type in _CLOSING:
            raise _Closed
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise ConnectionFailed(str(msg.data))
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise InvalidMessage(f"non-text message: {msg.type.name}")
        try:
            data = self._decode.decode(msg.data)
        except msgspec.DecodeError as exc:
            raise InvalidMessage("invalid JSON from zwave-server") from exc
        if not isinstance(data, dict):
            raise InvalidMessage("a message that is not a JSON object")
        return data

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "result":
            future = self._pending.get(str(msg.get("messageId")))
            if future is None or future.done():
                return
            if msg.get("success"):
                future.set_result(msg.get("result") or {})
            elif msg.get("errorCode") == "zwave_error":
                future.set_exception(
                    FailedZWaveCommand(
                        int(msg.get("zwaveErrorCode", 0)), str(msg.get("zwaveErrorMessage", ""))
                    )
                )
            else:
                future.set_exception(
                    FailedCommand(str(msg.get("errorCode")), str(msg.get("message", "")))
                )
        elif kind == "event" and self.controller is not None:
            event = msg.get("event") or {}
            name = event.get("event", "")
            source = event.get("source")
            if source == "node":
                node = self.controller.nodes.get(event.get("nodeId", -1))
                if node is not None:
                    node.receive_event(name, event)
            elif source == "controller":
                self.controller.receive_event(name, event)


_CLOSING: Final = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


class _Closed(Exception):
    """The websocket closed (normally or not): the end of `listen`."""
