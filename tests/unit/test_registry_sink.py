"""What drivers report through their sink, as the registry takes it: late or odd reports of a
device are dropped with a log line, never turned into a device the cloud keeps for good."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from msgspec.structs import replace
from structlog.testing import capture_logs

from drivers.sim import SimDriver
from gatewayd.config import SimConfig
from gatewayd.daemon import DB_NAME
from gatewayd.driver import DriverContext, DriverSink
from gatewayd.model import Device, DoorEvent, EventName
from gatewayd.registry import Registry
from gatewayd.store import Store
from gatewayd.upstream import Upstream


def frames(store: Store) -> list[dict[str, Any]]:
    assert store.flush()
    return [json.loads(frame) for _, frame in store.outbox_after(0)]


def sim_driver(tmp_path: Path) -> SimDriver:
    return SimDriver(SimConfig(), DriverContext(state_dir=tmp_path, spawn=lambda *_: None))


def with_a_lock(store: Store, tmp_path: Path) -> tuple[Registry, DriverSink, Device]:
    """A registry on `store`, the sim driver's sink, and a lock it may report (id handed out)."""
    registry = Registry(store, Upstream(store))
    sink = registry.attach(sim_driver(tmp_path))
    device_id = sink.device_id("sim-0001")
    return registry, sink, Device(device_id, "sim-0001", "sim", "Front", "gatewayd", "SimLock")


def test_a_late_update_of_a_removed_device_does_not_bring_it_back(tmp_path: Path) -> None:
    """A driver's report of a device that races its removal (a value update the radio sent
    as the lock was excluded) put the device back: a `device` frame after its
    `device_removed`, so the cloud listed the excluded lock again, for good (the store had
    forgotten it, so no later run would remove it)."""
    store = Store.open(tmp_path / DB_NAME)
    try:
        registry, sink, device = with_a_lock(store, tmp_path)
        device_id = device.id
        sink.device_added(device)
        sink.device_removed(device_id)
        with capture_logs() as logs:
            sink.device_updated(device)
            sink.door_event(DoorEvent(device_id, EventName.DEVICE_DISCONNECTED))

        assert [
            (f["type"], f.get("device_id", f.get("device", {}).get("id"))) for f in frames(store)
        ] == [
            ("device", device_id),
            ("device_removed", device_id),
        ]
        assert registry.device(device_id) is None
        assert registry.driver_of(device_id) is None
        assert not store.knows_device(device_id)
        assert [line["event"] for line in logs] == [
            "registry.unknown_device_dropped",
            "registry.unknown_device_event_dropped",
        ]
    finally:
        store.close()


class _RadioValue:
    """A radio library's object a driver forgot to translate."""


def test_a_report_that_cannot_be_sent_is_dropped_with_a_log_line(tmp_path: Path) -> None:
    """An event or a device report that cannot become a frame (a radio object left in its
    details, a name too long for a frame) raised out of the sink into the driver: an action
    whose lock had moved then failed as a driver error, and a device report was taken as sent
    (the same report again was not sent, and never reached the cloud)."""
    store = Store.open(tmp_path / DB_NAME)
    try:
        registry, sink, device = with_a_lock(store, tmp_path)
        device_id = device.id
        with capture_logs() as logs:
            sink.device_added(replace(device, name="x" * 70_000))
            sink.door_event(DoorEvent(device_id, EventName.TAMPERED, {"raw": _RadioValue()}))
            sink.door_event(DoorEvent(device_id, EventName.TAMPERED, {"raw": "x" * 70_000}))
        sink.device_added(device)
        sink.door_event(DoorEvent(device_id, EventName.TAMPERED, {"alarm_code": 3}))

        sent = frames(store)
        assert [(f["type"], f.get("event", {}).get("details")) for f in sent] == [
            ("device", None),
            ("event", {"alarm_code": 3}),
        ]
        assert sent[0]["device"]["name"] == "Front"
        assert registry.event_counts["tampered"] == 1
        assert registry.last_event[device_id].details == {"alarm_code": 3}
        dropped = [line for line in logs if line["log_level"] == "error"]
        assert [(line["event"], line["error"]) for line in dropped] == [
            ("registry.device_not_sent", "ProtocolError"),
            ("registry.event_not_sent", "TypeError"),
            ("registry.event_not_sent", "ProtocolError"),
        ]
    finally:
        store.close()


def test_a_device_that_cannot_be_sent_does_not_stop_the_others_after_a_claim(
    tmp_path: Path,
) -> None:
    """After a claim every device is reported again: one a driver reported with a name too
    long for a frame raised out of `report_all` (the tunnel's claim handler), and the devices
    after it never reached the cloud under its new id."""
    store = Store.open(tmp_path / DB_NAME)
    try:
        registry = Registry(store, Upstream(store))
        sink = registry.attach(sim_driver(tmp_path))
        ids = [sink.device_id(f"sim-000{n}") for n in (1, 2)]
        sink.device_added(Device(ids[0], "sim-0001", "sim", "x" * 70_000, "gatewayd", "SimLock"))
        sink.device_added(Device(ids[1], "sim-0002", "sim", "Back", "gatewayd", "SimLock"))
        before = len(frames(store))

        registry.report_all()

        again = frames(store)[before:]
        assert [(f["type"], f["device"]["id"]) for f in again] == [("device", ids[1])]
    finally:
        store.close()
