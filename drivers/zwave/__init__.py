"""Z-Wave door locks through a zwave-js-server (zwave-js-server-python 0.73.1, server schema <= 50).

What the driver does, and what the test stack (zwave-js mock-server 15.29.0) can show:

- Devices: every interviewed node with Door Lock CC. Manufacturer and model come from zwave-js's
  device config; the slot range from the User Code CC values (1..supported users). Z-Wave has no
  standard way to ask for accepted code lengths, so they stay at 4-8 digits; a lock that
  silently ignores a code of another length is caught by the read-back (`code_not_confirmed`).
- lock/unlock: Door Lock Operation Set, then Operation Get; done only when the lock reports the
  new bolt state. Supervision failure -> `device_error`; no answer -> `timeout`.
- set_code/clear_code: User Code Get first: a slot that already holds the code (or, for a
  clear, no code) is not written and no change is reported. Then User Code Set, then User Code
  Get from the device. A lock that masks codes in its reports ("****") is confirmed by its
  Access Control "new user code added" notification instead; its slot cannot show which code
  it holds, so the code is written again, and reported unless the driver confirmed this very
  code there and has heard of no change to the slot since. A confirmed set or clear reports
  `code set on device` or `code removed from device` at once; a re-check after
  `code_recheck_s` reports `code dropped by device` if the lock lost the code since. A lock
  that refuses a PIN another slot holds (Access Control 0x0F) fails the set with
  `duplicate_code`; one that drops it without a word fails with `code_not_confirmed`.
- Supervision: zwave-js supervises Door Lock Operation Set and User Code Set on a lock that
  supports Supervision CC, and invoke_cc_api answers the lock's SupervisionResult ({"status": 2}
  for Fail). A lock that answers Fail did not do it: lock/unlock fails with `device_error`, a
  code set with `code_not_confirmed` (or `duplicate_code` when the lock says why within a
  second), without the read-back. A Clear is still judged by its read-back (an empty slot is
  what was asked for). tests/zwave/test_supervision.py runs the mock locks with Supervision CC.
- Events: Access Control and Home Security notifications, Door Lock reports, Battery reports,
  node dead/alive. A report and a notification describing one change give one event.
- pair: inclusion with the default strategy (S2 when the device supports it) for `duration`;
  unpair: exclusion for `duration`, or removal of a dead node when a device_id is given. A lock
  of a network zwave-server left (restarted on another controller) is no longer listed here:
  the core removes it on an unpair naming it once the driver is up (Registry.unpair).
- S2 bootstrapping: zwave-server sends the client that began inclusion "grant security classes"
  and, for S2 Access Control / Authenticated, "validate dsk and enter pin"; zwave-js waits 240 s
  for each (TAI1, TAI2) and then includes the lock without security (lowSecurity, its Door Lock
  CC unusable). The driver answers at once: every requested class (clientSideAuth false) when
  pair_devices carried a `dsk_pin`, which then answers the PIN question (once: it belongs to one
  lock), otherwise only S2 Unauthenticated and S0 Legacy. A PIN question with no PIN left is
  answered "" so zwave-js gives up at once. A "node added" with lowSecurity is a warning naming
  the node, zwave-js's SecurityBootstrapFailure and what to do (pair again with the label's PIN).

The mock stack runs a joining lock through real S2 bootstrapping (tests/zwave/mock/locks.cjs
`pending_security`, tests/zwave/test_secure_inclusion.py): with the PIN, without one, and with a
wrong one. It cannot show a partial grant (S0 only to a lock asking for S2 Access Control and
S0): the mock node echoes the classes it requested, not those granted, and zwave-js aborts on
the mismatch where a real lock would join with S0 (zwave-js flags that as a possible S0
downgrade, so it is still a low-security warning). Not shown either (untested against real
radios here): exclusion of a real node, a Supervision "Working" answer with a duration, sleeping
(non-FLiRS) locks, and setting several codes in one command (the mock does not support
`setMany`; the driver sets one code per action).
"""

# zwave-js-server-python checks every node and controller event against a pydantic model (and
# then drops it). By default pydantic builds the validators of all ~70 event models when they
# are defined, at import; a lock gateway sees a handful of event types, so they are built when
# an event of that type first arrives instead: about 1.2 MiB less RSS, the same checks. This
# has to run before the models are defined (zwave_js_server.model.*), hence here, before
# anything of the driver is imported. tests/unit/test_imports.py shows it.
from zwave_js_server.event import BaseEventModel

BaseEventModel.model_config["defer_build"] = True

from drivers.zwave.driver import ZWaveDriver  # noqa: E402 (after the line above)

__all__ = ["ZWaveDriver"]
