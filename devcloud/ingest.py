"""What the cloud does with each upstream message: dedupe by seq, store, then it can be acked."""

from __future__ import annotations

from typing import Any

import structlog

from devcloud.actions import ActionService
from devcloud.db import Database
from devcloud.timeutil import iso, parse_iso, utcnow
from devcloud.validation import mask_pins
from devcloud.webhooks import Webhooks
from gatewayd import protocol

log = structlog.get_logger("devcloud.ingest")

Upstream = (
    protocol.ActionStatusMsg | protocol.EventMsg | protocol.DeviceMsg | protocol.DeviceRemovedMsg
)

_LOCK_STATE = {"door locked": True, "door unlocked": False}


class Ingest:
    def __init__(self, db: Database, actions: ActionService, webhooks: Webhooks) -> None:
        self._db = db
        self._actions = actions
        self._webhooks = webhooks

    def apply(self, gateway_id: str, msg: Upstream) -> tuple[int, protocol.ActionCancel | None]:
        """Store one message unless its seq was seen. Returns the cumulative seq to ack and
        the `action_cancel` to send before that ack, if any."""
        high = self._db.high_water(gateway_id)
        if msg.seq <= high:
            log.info("tunnel.duplicate", gateway_id=gateway_id, seq=msg.seq, acked_seq=high)
            return high, None
        cancel: protocol.ActionCancel | None = None
        with self._db.transaction():
            match msg:
                case protocol.ActionStatusMsg():
                    cancel = self._actions.apply_status(gateway_id, msg)
                case protocol.EventMsg():
                    published = self._event(gateway_id, msg.event)
                    if published is not None:  # stored with the event, or not at all
                        self._webhooks.publish(published)
                case protocol.DeviceMsg():
                    self._device(gateway_id, msg.device)
                case protocol.DeviceRemovedMsg():
                    self._db.remove_device(msg.device_id, gateway_id)
                    log.info("device.removed", gateway_id=gateway_id, device_id=msg.device_id)
            self._db.set_high_water(gateway_id, msg.seq)
        return msg.seq, cancel

    def _event(self, gateway_id: str, event: dict[str, Any]) -> dict[str, Any] | None:
        device_id, name = event.get("device_id"), event.get("event_name")
        when = parse_iso(event.get("date_created", ""))
        if not (_short_str(event.get("id")) and _short_str(device_id) and _short_str(name)):
            log.warning("event.rejected", gateway_id=gateway_id, reason="missing_fields")
            return None
        if when is None or not isinstance(event.get("details", {}), dict):
            log.warning("event.rejected", gateway_id=gateway_id, reason="bad_fields")
            return None
        if not self._owns(gateway_id, str(device_id)):
            log.warning("event.rejected", gateway_id=gateway_id, reason="foreign_device")
            return None
        # stored and sent in the seed's shape whatever the gateway wrote: its `type`, and the
        # time in UTC with milliseconds (the one the list is sorted and filtered by)
        event = mask_pins(
            {"details": {}, **event, "type": "device_event", "date_created": iso(when)}
        )
        if not self._db.add_event(event, gateway_id, iso(when)):
            return None
        self._note_lock_state(gateway_id, str(device_id), str(name))
        log.info("event.stored", gateway_id=gateway_id, device_id=device_id, event_name=name)
        return event

    def _note_lock_state(self, gateway_id: str, device_id: str, name: str) -> None:
        locked = _LOCK_STATE.get(name)
        device = self._db.device(device_id)
        if locked is None or device is None or not isinstance(device.get("properties"), dict):
            return
        device["properties"]["locked"] = locked
        self._db.upsert_device(device, gateway_id, iso(utcnow()))

    def _owns(self, gateway_id: str, device_id: str) -> bool:
        """Whether the gateway may report this device: a new one, its own, or one of a revoked
        gateway (then it becomes this gateway's: a box claimed again after a revoke is a new
        gateway, and its locks were stranded under the old one, their events dropped)."""
        owner = self._db.device_owner(device_id)
        if owner in (None, gateway_id):
            return True
        if self._db.adopt_device(device_id, gateway_id):
            log.info("device.adopted", gateway_id=gateway_id, device_id=device_id, was=owner)
            return True
        return False

    def _device(self, gateway_id: str, device: dict[str, Any]) -> None:
        device_id = device.get("id")
        if (
            not _short_str(device_id)
            or not isinstance(device.get("actions", {}), dict)
            # the seed's device object: name, manufacturer and model are strings
            or not all(isinstance(device.get(k), str) for k in ("name", "manufacturer", "model"))
        ):
            log.warning("device.rejected", gateway_id=gateway_id, reason="bad_fields")
            return
        if not self._owns(gateway_id, str(device_id)):
            log.warning("device.rejected", gateway_id=gateway_id, reason="foreign_device")
            return
        self._db.upsert_device(device, gateway_id, iso(utcnow()))
        log.info("device.upserted", gateway_id=gateway_id, device_id=device_id)


def _short_str(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200
