"""zigpy, seen through `Any`.

zigpy's annotations are partial (untyped constructors, `int` vs `uint8_t` everywhere), which
`mypy --strict` cannot check usefully. Everything in this package reaches zigpy through these
names, so the boundary is in one place. Importing this module imports zigpy: only the driver's
stack modules do, and only once the driver is started.
"""

from __future__ import annotations

import importlib
from typing import Any

application: Any = importlib.import_module("zigpy.application")
backups: Any = importlib.import_module("zigpy.backups")
device: Any = importlib.import_module("zigpy.device")
endpoint: Any = importlib.import_module("zigpy.endpoint")
exceptions: Any = importlib.import_module("zigpy.exceptions")
state: Any = importlib.import_module("zigpy.state")
t: Any = importlib.import_module("zigpy.types")
zdo_t: Any = importlib.import_module("zigpy.zdo.types")
zcl: Any = importlib.import_module("zigpy.zcl")
foundation: Any = importlib.import_module("zigpy.zcl.foundation")
general: Any = importlib.import_module("zigpy.zcl.clusters.general")
closures: Any = importlib.import_module("zigpy.zcl.clusters.closures")

ControllerApplication: Any = application.ControllerApplication
DoorLock: Any = closures.DoorLock
Alarms: Any = general.Alarms
Basic: Any = general.Basic
PowerConfiguration: Any = general.PowerConfiguration
EUI64: Any = t.EUI64
DeliveryError: Any = exceptions.DeliveryError
