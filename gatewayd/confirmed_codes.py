"""Which code a driver saw confirmed in each slot of a lock that masks its codes.

A lock that reads codes back as `****` cannot show which code a slot holds, so a `set_code` of
the code already there looks like a new one. A driver that wrote a code and saw the lock confirm
it remembers a keyed hash of it here; the same code set again is then no change to report. The
key is random per process and the hashes stay in memory: nothing here gives back a PIN, and a
restart forgets everything, after which the change is reported (twice rather than never).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Final

import anyio

from gatewayd.model import Action, ClearCode, SetCode

_KEY: Final = secrets.token_bytes(32)


def code_digest(digits: str) -> bytes:
    """The keyed hash a slot's code is remembered and compared by."""
    return hmac.new(_KEY, digits.encode(), hashlib.sha256).digest()


def same_code(held: str, digits: str) -> bool:
    """Whether a code read back from a lock is `digits`, compared in constant time (a read-back
    that is not ASCII is some other answer, never the code)."""
    return held.isascii() and hmac.compare_digest(held, digits)


class ConfirmedCodes:
    """One lock's slots and the digest of the code each was last seen to hold.

    A driver forgets a slot whenever anything else may have changed it: a keypad change, a
    clear, a failed set, a re-check that finds the code gone; and all of them when it may have
    missed such news (its link dropped, the lock left or rejoined)."""

    __slots__ = ("_slots",)

    def __init__(self) -> None:
        self._slots: dict[int, bytes] = {}

    def confirmed(self, slot: int, digest: bytes) -> None:
        """The lock confirmed the code with this digest in `slot`."""
        self._slots[slot] = digest

    def take(self, slot: int, digest: bytes) -> bool:
        """Forget `slot` (a write to it is about to start, and may fail); True when it was
        last confirmed to hold the code with this digest."""
        ours = self._slots.pop(slot, None)
        return ours is not None and hmac.compare_digest(ours, digest)

    def forget(self, slot: int) -> None:
        self._slots.pop(slot, None)

    def forget_all(self) -> None:
        self._slots.clear()

    def __len__(self) -> int:
        return len(self._slots)


class LateSets:
    """One lock's slots whose last set (or clear) failed for want of the lock's word (a masking
    lock's programming notification, a read-back that timed out), which may still come, late.

    Taken as the answer to the next write of the slot, that late word would confirm a code the
    lock dropped: it holds the earlier one. So the next set of the slot waits it out
    (`wait_out`, at most `window_s` after the failure), and the late word, heard outside any
    command (`came`), is the failed set carried out after all; a failed clear's "code deleted"
    likewise (`present=False`). A change cut off by the loss of the link to the radio's server
    may be told only after the reconnect: its window runs again from there (`reconnected`)."""

    __slots__ = ("_cut_off", "_slots", "_window_s")

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        # slot -> (until when, the word came, whether that word is "code added")
        self._slots: dict[int, tuple[float, anyio.Event, bool]] = {}
        self._cut_off: set[int] = set()  # slots whose window runs again at the reconnect

    def failed(self, slot: int, *, link_lost: bool = False, present: bool = True) -> None:
        """A set (`present`) or clear of `slot` failed with no word from the lock: it may
        still come."""
        self._slots[slot] = (time.monotonic() + self._window_s, anyio.Event(), present)
        if link_lost:
            self._cut_off.add(slot)
        else:
            self._cut_off.discard(slot)

    def reconnected(self) -> None:
        """The link is back: the word of a change it cut off comes now, if at all."""
        until = time.monotonic() + self._window_s
        for slot in self._cut_off:
            late = self._slots.get(slot)
            if late is not None:
                self._slots[slot] = (until, *late[1:])
        self._cut_off.clear()

    def came(self, slot: int, present: bool = True) -> bool:
        """The lock says `slot` took a code (`present`) or lost it: True (used up) if that is
        the word of a failed set, or clear."""
        late = self._slots.get(slot)
        if late is None or late[2] != present:
            return False
        del self._slots[slot]
        late[1].set()
        return late[0] >= time.monotonic()

    def hold_s(self, action: Action) -> float:
        """How long `action` would wait out a failed set's late word now (0: not at all): a
        code change of its slot does (`wait_out`), nothing else (Driver.hold_s)."""
        if not isinstance(action, SetCode | ClearCode):
            return 0.0
        late = self._slots.get(action.slot_id)
        return 0.0 if late is None else max(late[0] - time.monotonic(), 0.0)

    async def wait_out(self, slot: int) -> None:
        """Return once a failed set or clear of `slot` can no longer be confirmed late."""
        late = self._slots.get(slot)
        if late is None:
            return
        with anyio.move_on_after(late[0] - time.monotonic()):
            await late[1].wait()
        if self._slots.get(slot) is late:
            del self._slots[slot]
