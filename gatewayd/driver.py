"""The driver contract: the one seam between the core and the radios, and the lazy registry."""

from __future__ import annotations

import enum
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from gatewayd.config import SimConfig, ZigbeeConfig, ZWaveConfig
from gatewayd.model import Action, ActionNotSupported, ActionResult, Device, DoorEvent, PinCode

__all__ = [
    "DRIVERS",
    "NO_PAIR_OPTIONS",
    "Driver",
    "DriverContext",
    "DriverHealth",
    "DriverSink",
    "DriverState",
    "Inventory",
    "PairOptions",
    "SimConfig",
    "Simulation",
    "Spawn",
    "ZWaveConfig",
    "ZigbeeConfig",
    "load_driver",
]


class DriverSink(Protocol):
    """How a driver reports upward. Calls are synchronous and cheap; the core queues the work."""

    def device_id(self, native_id: str) -> str:
        """The stable gateway-scoped UUID for this driver's native id (created on first sight)."""
        ...

    def device_added(self, device: Device) -> None: ...

    def device_updated(self, device: Device) -> None: ...

    def device_removed(self, device_id: str) -> None: ...

    def door_event(self, event: DoorEvent) -> None: ...


Spawn = Callable[[str, Callable[[], Coroutine[Any, Any, None]]], None]
"""Start a named long-lived task in the daemon's task group: spawn("zwave.reconnect", fn)."""


@dataclass(frozen=True, slots=True)
class DriverContext:
    """What the core hands a driver: where to keep files and how to run background tasks."""

    state_dir: Path
    spawn: Spawn


class Simulation(enum.StrEnum):
    """What a simulated or mock lock can be told to do, as a person at the door would.

    Parameters: KEYPAD_UNLOCK {slot_id}; BATTERY {level: 0..1}; FAULT {kind, delay_s?} where
    kind is one of "none", "no_reply", "delay", "drop_code", "refuse".
    """

    KEYPAD_UNLOCK = "keypad_unlock"  # a valid code typed at the keypad -> door unlocked, pin_code
    KEYPAD_LOCK = "keypad_lock"  # the keypad's lock button -> door locked, keypad
    MANUAL_LOCK = "manual_lock"  # thumb turn -> door locked, manual
    MANUAL_UNLOCK = "manual_unlock"
    WRONG_CODE = "wrong_code"  # -> keypad invalid code
    JAM = "jam"  # -> door jammed
    BATTERY = "battery"  # -> device updated; low battery below 20 %
    OFFLINE = "offline"  # -> device disconnected; actions fail
    ONLINE = "online"  # -> device connected
    DOOR_OPEN = "door_open"
    DOOR_CLOSE = "door_close"
    TAMPER = "tamper"
    FAULT = "fault"  # inject a radio fault for the next actions


class DriverState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"  # running, but something is wrong (a node dead, a retry going on)
    DOWN = "down"  # the radio or its server is unreachable; reconnecting
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class DriverHealth:
    state: DriverState
    radio: str
    last_error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Inventory:
    """A driver's complete inventory of one network: every device on it has been reported.

    It speaks only for the stored devices whose native id starts with `prefix` (the network's
    part of a native id, e.g. a Z-Wave home id and "-"); "" speaks for all of the driver's.
    `network` names the network inventoried in logs.
    """

    prefix: str
    network: str

    def covers(self, native_id: str) -> bool:
        return native_id.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class PairOptions:
    """What a pair_devices request carries besides its duration; a driver uses what applies.

    `dsk_pin`: the 5-digit PIN printed on the device (the first block of its S2 DSK), validated
    by the core; Z-Wave uses it for S2 Authenticated / Access Control, others ignore it.
    """

    dsk_pin: PinCode | None = None


NO_PAIR_OPTIONS: PairOptions = PairOptions()


class Driver(ABC):
    """A radio driver. It only translates: the core owns queues, deadlines, store and tunnel.

    Radio-library objects never leave the driver. `execute` is called at most once at a time per
    device and is cancelled when the action's deadline passes, so it must be cancellation-safe.
    It returns when the device confirmed the action and raises a `GatewayError` otherwise.
    `start` must not raise because the radio is unreachable: it reports DOWN in `health` and
    reconnects in a task started with `ctx.spawn`.

    Constructed as `DriverClass(config_section, ctx)` with its own section of the config.
    """

    name: ClassVar[str]

    def __init__(self, config: Any, ctx: DriverContext) -> None:
        self.ctx = ctx

    @abstractmethod
    async def start(self, sink: DriverSink) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    def devices(self) -> Sequence[Device]: ...

    @abstractmethod
    async def execute(self, device_id: str, action: Action) -> ActionResult: ...

    @abstractmethod
    async def pair(self, duration_s: int, options: PairOptions = NO_PAIR_OPTIONS) -> None: ...

    @abstractmethod
    async def unpair(self, duration_s: int, device_id: str | None) -> None: ...

    @abstractmethod
    def health(self) -> DriverHealth: ...

    def hold_s(self, device_id: str, action: Action) -> float:
        """How long `execute(device_id, action)` would first wait inside the driver, sending
        nothing (a code change waiting out a failed set's late word); the dispatcher lets the
        device's other actions go first meanwhile. 0: it would start at once."""
        return 0.0

    def inventory(self) -> Inventory | None:
        """The network whose devices `devices()` now all holds: the radio is up and each device
        on it has been reported. Asked once `start` has returned, then every few seconds for as
        long as the daemon runs (a radio down at start-up may come up later); for each network
        the first time it is named, the core removes the stored devices of this driver that
        the inventory covers and that were not reported in this run (a lock excluded while the
        gateway was off), and keeps those of other networks (a radio or server pointed at
        another network must not remove this one's). It must be cheap and must not block.
        None by default: a driver that cannot tell, or whose radio is down, never has a device
        removed for it."""
        return None

    async def simulate(self, device_id: str, what: Simulation, params: Mapping[str, Any]) -> None:
        """Act like a person at the door (keypad, manual turn, jam...). Simulated radios only."""
        raise ActionNotSupported(f"driver {self.name} cannot simulate {what!r}")


# name -> "module:Class"; imported only when enabled, so a Z-Wave-only box never imports zigpy.
DRIVERS: Mapping[str, str] = {
    "sim": "drivers.sim:SimDriver",
    "zwave": "drivers.zwave:ZWaveDriver",
    "zigbee": "drivers.zigbee:ZigbeeDriver",
}


def load_driver(name: str) -> type[Driver]:
    """Import and return the driver class registered under `name`."""
    try:
        target = DRIVERS[name]
    except KeyError:
        raise ValueError(f"unknown driver {name!r}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"{target} is not a Driver")
    return cls
