"""One simulated lock: bolt, code slots, battery, door and the radio faults injected into it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gatewayd.model import CodeConstraints, DeviceProperties, PinCode, utcnow

LOW_BATTERY = 0.2
"""Crossing below this level makes the lock report `low battery`."""


class Fault(enum.StrEnum):
    """A radio fault injected with Simulation.FAULT.

    `delay` lasts until cleared with `none`; the others hit the next command only:
    `no_reply` and `refuse` the next action of any kind, `drop_code` the next set_code.
    """

    NONE = "none"
    NO_REPLY = "no_reply"
    DELAY = "delay"
    DROP_CODE = "drop_code"
    REFUSE = "refuse"


@dataclass(slots=True)
class SimLock:
    """The lock's own state, as the hardware would hold it. Synchronous; the driver adds time."""

    native_id: str
    device_id: str
    codes: CodeConstraints
    locked: bool = True
    online: bool = True
    jammed: bool = False
    door_open: bool = False
    battery: float = 1.0
    firmware: str = "sim-1.0"
    delay_s: float = 0.0
    one_shot: Fault = Fault.NONE
    drop_next_code: bool = False
    _slots: dict[int, PinCode] = field(default_factory=dict, repr=False)

    # -- the code table: writing and reading are separate steps, as on a real lock
    def write_slot(self, slot_id: int, code: PinCode) -> None:
        """Store a code; a pending `drop_code` fault swallows the write without a word."""
        if self.drop_next_code:
            self.drop_next_code = False
            return
        self._slots[slot_id] = code

    def holds_elsewhere(self, slot_id: int, code: PinCode) -> bool:
        """Whether another slot holds this code: the lock refuses it then, as real locks do."""
        return any(other != slot_id and held == code for other, held in self._slots.items())

    def read_slot(self, slot_id: int) -> PinCode | None:
        return self._slots.get(slot_id)

    def clear_slot(self, slot_id: int) -> None:
        self._slots.pop(slot_id, None)

    def occupied_slots(self) -> list[int]:
        return sorted(self._slots)

    # -- faults
    def set_fault(self, kind: Fault, delay_s: float = 0.0) -> None:
        if kind is Fault.NONE:
            self.delay_s = 0.0
            self.one_shot = Fault.NONE
            self.drop_next_code = False
        elif kind is Fault.DELAY:
            self.delay_s = delay_s
        elif kind is Fault.DROP_CODE:
            self.drop_next_code = True
        else:
            self.one_shot = kind

    def take_fault(self) -> Fault:
        """The one-shot fault that hits the command being sent now, consumed."""
        kind, self.one_shot = self.one_shot, Fault.NONE
        return kind

    # -- battery
    def drain(self, amount: float) -> bool:
        """Use some battery; True when this crossed below the low-battery level."""
        return self.set_battery(self.battery - amount)

    def set_battery(self, level: float) -> bool:
        """Set the level (clamped to 0..1); True when this crossed below the low-battery level."""
        before = self.battery
        self.battery = round(min(1.0, max(0.0, level)), 4)
        return before >= LOW_BATTERY > self.battery

    def properties(self) -> DeviceProperties:
        return DeviceProperties(
            locked=self.locked,
            online=self.online,
            door_open=self.door_open,
            battery_level=self.battery,
            jammed=self.jammed,
            firmware=self.firmware,
            last_seen=utcnow(),
        )
