"""The answers to zwave-js's questions while a node joins with Security S2.

With the default strategy zwave-js asks the client that opened the inclusion window which of
the security classes a joining node requests it may grant, then (for S2 Access Control or
Authenticated) for the PIN on the device's label, the first block of its DSK. It waits up to
240 s for each answer (TAI1, TAI2) and then includes the node without security: a lock whose
Door Lock and User Code CCs only answer encrypted, useless. `Inclusion` decides the answers at
once: every requested class when pair_devices gave a `dsk_pin`, else only those that need no
PIN (S2 Unauthenticated, S0), and the PIN, used once (it belongs to one device). The driver
sends them; this module holds the state between the questions and names what happened.
"""

from __future__ import annotations

from typing import Any, Final

import structlog
from zwave_js_server.const import SecurityClass
from zwave_js_server.model.controller.inclusion_and_provisioning import InclusionGrant

from gatewayd.model import PinCode

log = structlog.get_logger(__name__)

# S2 classes whose key exchange needs the PIN from the device's label (the first DSK block)
NEEDS_PIN: Final = frozenset({SecurityClass.S2_ACCESS_CONTROL, SecurityClass.S2_AUTHENTICATED})
# zwave-js 15's SecurityBootstrapFailure (zwave_js_server's own enum lacks S0Downgrade)
BOOTSTRAP_FAILURES: Final = (
    "user_canceled",
    "no_keys_configured",
    "s2_no_user_callbacks",
    "timeout",
    "parameter_mismatch",
    "node_canceled",
    "s2_incorrect_pin",
    "s2_wrong_security_level",
    "s0_downgrade",
    "unknown",
)
_INCORRECT_PIN: Final = BOOTSTRAP_FAILURES.index("s2_incorrect_pin")
_CLASS_NAMES: Final = {
    SecurityClass.S2_ACCESS_CONTROL: "S2_AccessControl",
    SecurityClass.S2_AUTHENTICATED: "S2_Authenticated",
    SecurityClass.S2_UNAUTHENTICATED: "S2_Unauthenticated",
    SecurityClass.S0_LEGACY: "S0_Legacy",
}


class Inclusion:
    """What one inclusion window knows: the PIN it was opened with, until a joining node used
    it, and the classes withheld from the node that is bootstrapping (zwave-js runs one at a
    time), named again when it is added."""

    def __init__(self) -> None:
        self._pin: PinCode | None = None
        self._withheld: list[str] = []
        self._bootstrapping = False  # a grant was answered and the node is not added yet

    def open(self, pin: PinCode | None) -> PinCode | None:
        """A window opens with this PIN (set before it opens: a node may join and ask before
        the driver hears back). Returns the PIN it replaces, for `restore` if it fails to open."""
        before, self._pin = self._pin, pin
        return before

    def restore(self, pin: PinCode | None) -> None:
        self._pin = pin

    def closed(self) -> None:
        """The window closed: its PIN goes, unless a node still bootstrapping may yet ask."""
        if not self._bootstrapping:
            self._pin = None

    def aborted(self) -> None:
        log.info("zwave.inclusion_aborted")
        self._pin = None
        self._bootstrapping = False

    def grant(self, requested: InclusionGrant) -> InclusionGrant:
        """The answer to "grant security classes"."""
        have_pin = self._pin is not None
        granted = [c for c in requested.security_classes if have_pin or c not in NEEDS_PIN]
        withheld = [c for c in requested.security_classes if c not in granted]
        self._withheld = [_class_name(c) for c in withheld]
        self._bootstrapping = True
        log.info(
            "zwave.security_classes_granted",
            requested=[_class_name(c) for c in requested.security_classes],
            granted=[_class_name(c) for c in granted],
        )
        if withheld:
            log.warning(
                "zwave.security_classes_withheld",
                withheld=self._withheld,
                hint="pair_devices had no dsk_pin; give the 5 digits on the lock's label",
            )
        return InclusionGrant(security_classes=granted, client_side_auth=False)

    def pin(self) -> str:
        """The answer to "validate dsk and enter pin": the PIN, used up. Without one (only
        when authenticated classes were granted with a PIN another node used), "": a PIN that
        is no 5 digits ends zwave-js's wait at once instead of after 240 s."""
        pin, self._pin = self._pin, None
        if pin is None:
            log.warning("zwave.dsk_pin_missing", hint="pair again, giving dsk_pin")
            return ""
        log.info("zwave.dsk_pin_entered")
        return pin.reveal()

    def node_added(self, node_id: int, result: dict[str, Any]) -> None:
        """A node joined: a warning, with zwave-js's reason and what to do, if its security is
        low (a lock's Door Lock and User Code CCs answer only encrypted)."""
        withheld, self._withheld = self._withheld, []
        self._bootstrapping = False
        if not result.get("lowSecurity"):
            log.info("zwave.node_added", node_id=node_id)
            return
        self._pin = None
        reason = result.get("lowSecurityReason")
        log.warning(
            "zwave.node_added_with_low_security",
            node_id=node_id,
            reason=_bootstrap_failure(reason),
            withheld=withheld or None,
            hint=_low_security_hint(reason, withheld),
        )


def _class_name(security_class: SecurityClass) -> str:
    return _CLASS_NAMES.get(security_class, str(int(security_class)))


def _bootstrap_failure(reason: object) -> str:
    if isinstance(reason, int) and 0 <= reason < len(BOOTSTRAP_FAILURES):
        return BOOTSTRAP_FAILURES[reason]
    return "unknown" if reason is None else f"unknown ({reason})"


def _low_security_hint(reason: object, withheld: list[str]) -> str:
    if withheld:
        return (
            "it asked for classes that need the 5-digit PIN from its label: exclude it and pair"
            " again with dsk_pin"
        )
    if reason == _INCORRECT_PIN:
        return "the dsk_pin did not match the lock: exclude it and pair again with its label's PIN"
    return "exclude it and pair it again; its Door Lock and User Code commands need encryption"
