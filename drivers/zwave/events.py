"""Translate a lock's Notification CC events and bolt reports into door events, exactly once.

A Z-Wave lock usually says one thing twice: an Access Control notification (who or what moved
the bolt) and a Door Lock report (the new bolt state); zwave-js also derives the bolt state from
the notification. `BoltTracker` merges them: a bolt change seen first as a value waits
`merge_s` for the notification that names the method, and a notification that repeats an
event just emitted is dropped. A notification later than `merge_s` (a busy mesh, a lock that
sends it seconds after its report) that matches the move reported without the lock's word (a
bare report, or our own command's `remote`), with no bolt change since, is that move: no second
event, up to `LATE_NOTICE_S` after it. One that names such a move turned back since may be its
late word, from which zwave-js made a bolt state the lock is not in, or a new move: the lock is
read to tell (`verify`), and if no read answers, the word is reported all the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gatewayd.model import EventName, Method

ACCESS_CONTROL = 6
HOME_SECURITY = 7
POWER_MANAGEMENT = 8

# Access Control events that move the bolt: event -> (locked, method)
BOLT_EVENTS: Mapping[int, tuple[bool, Method]] = {
    1: (True, Method.MANUAL),
    2: (False, Method.MANUAL),
    3: (True, Method.RF),
    4: (False, Method.RF),
    5: (True, Method.KEYPAD),
    6: (False, Method.PIN_CODE),
    9: (True, Method.AUTO),
    # Notification v8 "lock / unlock operation with User Code": the user as "user ID"
    33: (True, Method.PIN_CODE),
    34: (False, Method.PIN_CODE),
    # Notification v9 "credential lock/open, unlock/close operation" (User Credential CC: a PIN,
    # a card, a fingerprint at the lock); its user is no User Code slot, so none is named
    35: (True, Method.KEYPAD),
    36: (False, Method.KEYPAD),
}
AC_CREDENTIAL = frozenset({35, 36})
AC_JAMMED = 11
# "not fully locked" (manual, RF, auto): the bolt stuck part way, as Kwikset's alarm types 23
# and 26 say through zwave-js's alarm mapping
AC_NOT_FULLY_LOCKED = (7, 8, 10)
AC_ALL_CODES_DELETED = 12
AC_CODE_DELETED = 13
AC_CODE_ADDED = 14
AC_CODE_DUPLICATE = 15  # "new user code not added due to duplicate code"
# too many wrong codes at the keypad: "keypad temporary disabled" (a state; Schlage alarm type
# 96) and "user access code exceeds code limit" (Yale alarm type 161)
AC_KEYPAD_DISABLED = 16
AC_CODE_LIMIT = 19
# "unlock / locked by RF with invalid user code": a remote (a Z-Wave command, a fob) that gave a
# wrong code; the bolt did not move
AC_RF_INVALID_CODE = frozenset({20, 21})
# "valid credential access denied: schedule inactive": a code the lock holds, refused at a time
# its schedule does not allow (Yale / Kwikset alarm type 162, as Keymaster reads it)
AC_OUTSIDE_SCHEDULE = 48
# "valid credential access denied: User Active State set to Occupied Disabled" / "schedule
# inactive" / "not enough credentials entered", "invalid credential used": a credential refused
# at the lock (User Credential CC). Their parameters are Credential Usage Data, whose user is no
# User Code slot; zwave-js may even read a User Code Report out of its bytes (a user id whose
# high byte is 0x63), so they name no slot. Only the Alarm CC v1 mapping to 48 names one.
AC_CREDENTIAL_DENIED = frozenset({47, AC_OUTSIDE_SCHEDULE, 49, 50})
AC_DOOR_OPEN = 22
AC_DOOR_CLOSED = 23
HS_TAMPER_COVER = 3
HS_INVALID_CODE = 4
# replace battery soon / now, charge battery soon / now: zwave-js maps the low and critical
# battery alarms (types 167, 168) of Yale and Kwikset locks to the latter two
PM_BATTERY_LOW = (10, 11, 14, 15)

# Alarm CC v1 (a lock of Notification CC version 1 says only alarmType and alarmLevel) in
# Notification terms, as Keymaster reads Kwikset and Yale locks; for the types in
# ALARM_V1_USER, alarmLevel is the user slot
ALARM_V1: Mapping[int, tuple[int, int]] = {
    9: (ACCESS_CONTROL, AC_JAMMED),
    16: (ACCESS_CONTROL, 6),  # keypad unlock, as 19 (Keymaster)
    17: (ACCESS_CONTROL, AC_JAMMED),  # keypad lock jammed
    18: (ACCESS_CONTROL, 5),
    19: (ACCESS_CONTROL, 6),
    21: (ACCESS_CONTROL, 1),
    22: (ACCESS_CONTROL, 2),
    23: (ACCESS_CONTROL, 8),
    24: (ACCESS_CONTROL, 3),
    25: (ACCESS_CONTROL, 4),
    26: (ACCESS_CONTROL, 10),
    27: (ACCESS_CONTROL, 9),
    32: (ACCESS_CONTROL, AC_ALL_CODES_DELETED),
    33: (ACCESS_CONTROL, AC_CODE_DELETED),
    112: (ACCESS_CONTROL, AC_CODE_ADDED),
    113: (ACCESS_CONTROL, AC_CODE_DUPLICATE),
    132: (ACCESS_CONTROL, AC_OUTSIDE_SCHEDULE),  # Yale: "valid user but outside of schedule"
    161: (ACCESS_CONTROL, AC_CODE_LIMIT),
    162: (ACCESS_CONTROL, AC_OUTSIDE_SCHEDULE),
    167: (POWER_MANAGEMENT, 10),
    168: (POWER_MANAGEMENT, 11),
    169: (POWER_MANAGEMENT, 11),  # too low to operate the lock
}
ALARM_V1_USER = frozenset({16, 18, 19, 33, 112, 113, 132, 162})

LOW_BATTERY = 0.2
LATE_NOTICE_S = 5.0  # how late a notification may name the method of a move already reported

# Door Lock CC modes: unsecured (with or without timeout, for inside / outside handles) and
# secured; 0xFE is "unknown" (bolt neither thrown nor retracted)
_UNSECURED_MODES = frozenset({0x00, 0x01, 0x10, 0x11, 0x20, 0x21})
_SECURED_MODE = 0xFF


def bolt_from_mode(mode: Any) -> bool | None:
    """Door Lock CC currentMode -> locked; None when unknown or not a mode of the CC."""
    if not isinstance(mode, int) or isinstance(mode, bool):
        return None
    if mode == _SECURED_MODE:
        return True
    return False if mode in _UNSECURED_MODES else None


@dataclass(frozen=True, slots=True)
class Notice:
    """A lock notification in driver terms (no zwave_js_server object)."""

    # "bolt" | "jammed" | "door" | "invalid_code" | "tampered" | "battery_low" | "code"
    # | "code_duplicate" | "codes_deleted"
    kind: str
    locked: bool | None = None
    method: Method = Method.UNKNOWN
    slot_id: int | None = None
    door_open: bool | None = None
    code_present: bool | None = None


def parse_notification(type_: int, event: int, parameters: Any) -> Notice | None:
    """What a Notification CC report means for a door, or None when it means nothing here.
    `parameters` is what zwave-js made of the event's parameters: a mapping, a number, bytes."""
    slot = _user_slot(parameters)
    if type_ == ACCESS_CONTROL:
        if event in BOLT_EVENTS:
            locked, method = BOLT_EVENTS[event]
            if event in AC_CREDENTIAL:
                slot = None
            if method is Method.PIN_CODE and slot is None:
                method = Method.KEYPAD
            elif event == 5 and slot is not None:
                method = Method.PIN_CODE  # locked with a code, as the Zigbee driver says it
            return Notice("bolt", locked=locked, method=method, slot_id=slot)
        if event == AC_JAMMED or event in AC_NOT_FULLY_LOCKED:
            return Notice("jammed")
        if event in (AC_KEYPAD_DISABLED, AC_CODE_LIMIT) or event in AC_CREDENTIAL_DENIED:
            return Notice("invalid_code")
        if event in AC_RF_INVALID_CODE:
            return Notice("invalid_code", method=Method.RF)
        if event in (AC_DOOR_OPEN, AC_DOOR_CLOSED):
            return Notice("door", door_open=event == AC_DOOR_OPEN)
        if event in (AC_CODE_ADDED, AC_CODE_DELETED) and slot is not None:
            return Notice("code", slot_id=slot, code_present=event == AC_CODE_ADDED)
        if event == AC_CODE_DUPLICATE:
            return Notice("code_duplicate", slot_id=slot)
        if event == AC_ALL_CODES_DELETED:
            return Notice("codes_deleted")
    elif type_ == HOME_SECURITY:
        if event == HS_INVALID_CODE:
            return Notice("invalid_code")
        if event == HS_TAMPER_COVER:
            return Notice("tampered")
    elif type_ == POWER_MANAGEMENT and event in PM_BATTERY_LOW:
        return Notice("battery_low")
    return None


def parse_alarm_v1(alarm_type: Any, alarm_level: Any) -> Notice | None:
    """What an Alarm CC v1 report (alarmType, alarmLevel) means for a door, or None."""
    if not isinstance(alarm_type, int) or alarm_type not in ALARM_V1:
        return None
    type_, event = ALARM_V1[alarm_type]
    params = {"userId": alarm_level} if alarm_type in ALARM_V1_USER else None
    if (type_, event) == (ACCESS_CONTROL, AC_OUTSIDE_SCHEDULE):
        return Notice("invalid_code", slot_id=_user_slot(params))  # alarmLevel: a User Code slot
    return parse_notification(type_, event, params)


def _user_slot(parameters: Any) -> int | None:
    """The User Code slot zwave-js read out of a notification's parameters, if a positive int."""
    user = None
    if isinstance(parameters, Mapping):
        user = parameters.get("userId", parameters.get("user ID"))
    return user if isinstance(user, int) and not isinstance(user, bool) and user > 0 else None


def parse_state_value(variable: Any, key: Any, value: Any) -> Notice | None:
    """zwave-js turns notifications of state variables (jam, cover, door, battery) into values."""
    if not isinstance(value, int) or value == 0:
        return None
    if (variable, key) == ("Access Control", "Lock state") and value == AC_JAMMED:
        return Notice("jammed")
    if (variable, key) == ("Access Control", "Keypad state") and value == AC_KEYPAD_DISABLED:
        return Notice("invalid_code")
    if variable == "Access Control" and key in ("Door state", "Door state (simple)"):
        state = value >> 8 if value > 0xFF else value  # "Door state" may carry its parameter
        if state in (AC_DOOR_OPEN, AC_DOOR_CLOSED):
            return Notice("door", door_open=state == AC_DOOR_OPEN)
    if (variable, key) == ("Home Security", "Cover status") and value == HS_TAMPER_COVER:
        return Notice("tampered")
    if variable == "Power Management" and value in PM_BATTERY_LOW:
        return Notice("battery_low")
    return None


Emit = Callable[[EventName, dict[str, Any]], None]


class BoltTracker:
    """The last bolt state of one lock and the merge of its reports into single events."""

    def __init__(
        self,
        emit: Emit,
        merge_s: float,
        on_change: Callable[[], None],
        verify: Callable[[], None] = lambda: None,
    ) -> None:
        self._emit = emit
        self._merge_s = merge_s
        self._on_change = on_change
        self._verify = verify  # read the bolt from the lock, answered through `on_read`
        self.locked: bool | None = None
        self._command: tuple[bool | None, float] | None = None  # (bolt state, time) at its start
        self._echo: bool | None = None  # the state an RF notification gave during our command
        self._pending: asyncio.TimerHandle | None = None
        self._pending_locked: bool | None = None
        self._last: tuple[bool, float] | None = None
        # the last event, if it went up without the lock's own word for it (without a method,
        # or our own command's `remote`, which the lock may name seconds later, even as a
        # keypad move): (state, time, `_changes` after it)
        self._unnamed: tuple[bool, float, int] | None = None
        # the last move to each state that went up without the lock's word (as `_unnamed`) and
        # was turned back since: state -> its time
        self._undone: dict[bool, float] = {}
        # a late-looking notification the bolt read tells apart: (state, method, slot, time)
        self._suspect: tuple[bool, Method, int | None, float] | None = None
        # the lock reported its bolt in no known state: shown as None; `locked` keeps the last
        # known state, so its return to that state is no new event
        self.undefined = False
        self._changes = 0  # bolt changes heard (see `on_read`)

    @property
    def commanding(self) -> bool:
        """Our own command is in flight: it reports its own bolt change."""
        return self._command is not None

    @property
    def unnamed_move(self) -> bool | None:
        """The bolt state of a change still waiting for the notification that names its method
        (None: none waits)."""
        return self._pending_locked

    def seed(self, locked: bool | None) -> None:
        """State as found at start or after a reconnect, without an event."""
        self.locked = locked

    def read_mark(self) -> int:
        """Taken before reading the bolt from the lock, for `on_read`."""
        return self._changes

    def on_read(self, locked: bool, mark: int, *, first: bool) -> None:
        """The bolt as read from the lock. A change heard while the read was under way is as new
        as the read, which may even be that change's own report, taken in before it: the read is
        then not applied (it would be a false second event, or the bolt shown in the state it
        left). The answer may also be a turn's report that zwave-js took for it, whose value
        update comes after: a state other than the known one is that move, at start too (taken
        in silently, the turn had no event). Only a bolt never known is taken in without one."""
        if self._changes != mark:
            return
        if first and self.locked is None:
            self.seed(locked)
        else:
            self.on_value(locked)
        # a word the read was to tell apart is told: kept, it would name a later bare move
        self._suspect = None

    def on_unverified(self, mark: int) -> Method | None:
        """No bolt read answered within the late window (`mark` taken before the first): the
        word the reads were to tell apart is reported all the same, as the move it names, and
        the bolt is shown as it says until the lock's next report. It may be a late word, a
        duplicate; but it may be a real keypad unlock, and a lost one is an audit gap. Returns
        the word's method, or None when nothing is left to tell (a change heard since placed
        it, or told it untrue)."""
        suspect, self._suspect = self._suspect, None
        if suspect is None or self._changes != mark:
            return None
        self._cancel()
        self._fire(suspect[0], suspect[1], suspect[2])
        return suspect[1]

    def on_unknown(self) -> None:
        """The lock reports its bolt in no known state (Door Lock mode 0xFE, or no mode)."""
        if not self.undefined:
            self.undefined = True
            self._changes += 1
            self._on_change()

    def on_value(self, locked: bool) -> None:
        """A bolt state from the value cache (a report, or zwave-js's own inference)."""
        if self.locked == locked:
            if self.undefined:
                self.undefined = False
                self._on_change()
            return
        if self._pending is not None and self._pending_locked is not None:
            # the move still waiting for its notification (turned back within `merge_s`) was
            # real all the same: its event goes now, or only the move back would be reported
            self._pending.cancel()
            self._fire(self._pending_locked, Method.UNKNOWN)
        unnamed = self._unnamed
        if unnamed is not None and unnamed[0] == self.locked and self._names_unnamed(unnamed[0]):
            self._undone[unnamed[0]] = unnamed[1]
        self.undefined = False
        self._changes += 1
        self._cancel()
        self.locked = locked
        self._on_change()
        if self.commanding:
            return
        suspect, self._suspect = self._suspect, None
        if suspect is not None and suspect[0] == locked and _within(suspect[3], LATE_NOTICE_S):
            self._fire(locked, suspect[1], suspect[2])  # the read found the move it named
            return
        self._pending_locked = locked
        self._pending = asyncio.get_running_loop().call_later(
            self._merge_s, self._fire, locked, Method.UNKNOWN
        )

    def on_notification(self, locked: bool, method: Method, slot_id: int | None) -> None:
        """A notification that says what moved the bolt."""
        if self.commanding and method is Method.RF:
            self._echo = locked
            return  # the echo of our own command
        if (
            method in (Method.RF, Method.UNKNOWN)
            and self.locked == locked
            and self._last is not None
            and self._last[0] == locked
        ):
            return  # repeats what the last event reported, however late (a slow echo)
        late = self._late_for_undone(locked)
        if late and self._pending_locked == (not locked):
            # the word of the move that the move still waiting turned back: that move, not a
            # third one (the move back would be undone and lost); used up all the same
            return
        if late:
            self._read_to_tell(locked, method, slot_id)
            return
        if self._pending is not None and self._pending_locked == locked:
            self._cancel()
            self._fire(locked, method, slot_id)
            return
        if self.locked == locked and (self._recent(locked) or self._names_unnamed(locked)):
            return
        self._cancel()
        self._fire(locked, method, slot_id)

    def _read_to_tell(self, locked: bool, method: Method, slot_id: int | None) -> None:
        """A word that may be late for a move turned back since: zwave-js took its bolt state
        as the lock's (the bolt change just before, if any). The bolt is shown as it was until
        the read (`verify`, answered through `on_read`) says whether it moved."""
        self._cancel()
        self._changes += 1
        changed, self.locked = self.locked != (not locked), not locked
        # nor did that bolt state turn back the move before it: a move reported without a
        # method stands, and its own late word is that move (not a second one to read)
        self._undone.pop(not locked, None)
        unnamed = self._unnamed
        if unnamed is not None and unnamed[0] == self.locked:
            self._unnamed = (unnamed[0], unnamed[1], self._changes)
        self._suspect = (locked, method, slot_id, time.monotonic())
        if changed:
            self._on_change()
        self._verify()

    def begin_command(self) -> None:
        """Our own command goes out: its bolt change is reported by `end_command`/`commanded`."""
        self._command = (self.locked, time.monotonic())
        self._echo = None

    def end_command(self, *, confirmed: bool) -> None:
        """Our command ended. Unconfirmed (failed, cancelled), a bolt change seen while it ran
        would otherwise go unreported: the state already matches after a reconnect."""
        start, self._command = self._command, None
        if confirmed or start is None or self.locked is None or self.locked == start[0]:
            return
        if self._last is not None and self._last[0] == self.locked and self._last[1] >= start[1]:
            return  # a notification naming the method already reported it
        method = Method.RF if self._echo == self.locked else Method.UNKNOWN
        self._cancel()
        self._fire(self.locked, method)

    def commanded(self, locked: bool) -> None:
        """Our own command was confirmed by the lock: one `remote` event."""
        self._cancel()
        self._fire(locked, Method.REMOTE)

    def _recent(self, locked: bool) -> bool:
        return (
            self._last is not None
            and self._last[0] == locked
            and time.monotonic() - self._last[1] < max(self._merge_s, 0.5) * 3
        )

    def _names_unnamed(self, locked: bool) -> bool:
        """Whether a notification comes late for the move last reported without the lock's word
        (see `_unnamed`), with no bolt change since: that move, not a second one."""
        unnamed = self._unnamed
        return (
            unnamed is not None
            and unnamed[0] == locked
            and unnamed[2] == self._changes
            and time.monotonic() - unnamed[1] < LATE_NOTICE_S
        )

    def _late_for_undone(self, locked: bool) -> bool:
        """Whether a notification names a move reported without the lock's word and turned back
        since, not long ago (used up if so)."""
        since = self._undone.pop(locked, None)
        return since is not None and _within(since, LATE_NOTICE_S)

    def _cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._pending = None
        self._pending_locked = None

    def _fire(self, locked: bool, method: Method, slot_id: int | None = None) -> None:
        self._pending = None
        self._pending_locked = None
        changed = self.locked != locked or self.undefined
        self._changes += 1
        self.locked, self.undefined = locked, False
        self._last = (locked, time.monotonic())
        wordless = method in (Method.UNKNOWN, Method.REMOTE)
        self._unnamed = (locked, self._last[1], self._changes) if wordless else None
        self._undone.pop(locked, None)  # a word naming this state is now this move's first
        details: dict[str, Any] = {"method": str(method)}
        if slot_id is not None:
            details["slot_id"] = slot_id
        self._emit(EventName.DOOR_LOCKED if locked else EventName.DOOR_UNLOCKED, details)
        if changed:
            self._on_change()

    def close(self) -> None:
        self._cancel()


def _within(since: float, seconds: float) -> bool:
    return time.monotonic() - since < seconds
