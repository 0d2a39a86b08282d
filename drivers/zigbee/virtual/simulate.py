"""What a person at the door does, played on a virtual lock (Simulation -> radio frames).

Three FAULT kinds act on the radio rather than on the lock: "radio_unplug" pulls the
coordinator's USB stick out (the driver goes DOWN and keeps trying to reconnect), "radio_plug"
puts it back, "radio_freeze" hangs its firmware (nothing it is sent is ever answered). They let a
test disconnect the radio of a daemon running as a separate process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drivers.zigbee.virtual.radio import VirtualNetwork
from gatewayd.driver import Simulation
from gatewayd.model import InvalidInput


def act(net: VirtualNetwork, ieee: str, what: Simulation, params: Mapping[str, Any]) -> None:
    """Make the lock `ieee` do `what`; it tells the coordinator as a real lock would."""
    lock = net.lock(ieee)
    match what:
        case Simulation.KEYPAD_UNLOCK:
            lock.keypad_unlock(int(params.get("slot_id", 1)))
        case Simulation.KEYPAD_LOCK:
            lock.keypad_lock()
        case Simulation.MANUAL_LOCK:
            lock.manual(lock=True)
        case Simulation.MANUAL_UNLOCK:
            lock.manual(lock=False)
        case Simulation.WRONG_CODE:
            lock.wrong_code()
        case Simulation.JAM:
            lock.jam()
        case Simulation.BATTERY:
            lock.battery(float(params.get("level", 0.1)))
        case Simulation.OFFLINE:
            lock.online = False
        case Simulation.ONLINE:
            lock.online = True
            net.announce(lock)
        case Simulation.DOOR_OPEN:
            lock.door(open_=True)
        case Simulation.DOOR_CLOSE:
            lock.door(open_=False)
        case Simulation.TAMPER:
            lock.tamper()
        case Simulation.FAULT if params.get("kind") == "radio_unplug":
            net.unplug()
        case Simulation.FAULT if params.get("kind") == "radio_plug":
            net.plug()
        case Simulation.FAULT if params.get("kind") == "radio_freeze":
            net.freeze()
        case Simulation.FAULT:
            kind = str(params.get("kind", "none"))
            try:
                lock.set_fault(kind, float(params.get("delay_s", 2.0)))
            except ValueError:
                raise InvalidInput("unknown fault kind", {"kind": kind}) from None
