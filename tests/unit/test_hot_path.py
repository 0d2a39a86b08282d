"""The shortcuts of the action hot path give exactly what the plain code gives."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import structlog

from gatewayd import logging as gwlog
from gatewayd import protocol
from gatewayd.actions import StatusUpdate
from gatewayd.metrics import GatewayMetrics
from gatewayd.model import (
    ActionResult,
    ActionStatus,
    CodeConstraints,
    Device,
    DeviceProperties,
    DoorEvent,
    EventName,
    new_uuid,
)
from gatewayd.upstream import device_dict, device_json


def test_model_objects_build_as_before() -> None:
    event = DoorEvent("dev-1", EventName.DOOR_LOCKED)
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", event.id
    )
    assert event.details == {}
    assert event.date_created.tzinfo is UTC
    assert ActionResult().details == {}
    device = Device(id="d", native_id="n", protocol="sim", name="x", manufacturer="m", model="o")
    assert device.codes == CodeConstraints()
    assert device.properties == DeviceProperties()
    assert len({new_uuid() for _ in range(2000)}) == 2000


@pytest.mark.parametrize(
    "properties",
    [
        DeviceProperties(),
        DeviceProperties(
            locked=True,
            door_open=False,
            battery_level=0.2,
            firmware='1.0 "beta"',
            last_seen=datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC),
        ),
    ],
)
def test_device_json_is_the_device_dict_encoded(properties: DeviceProperties) -> None:
    device = Device(
        id="d-1",
        native_id="n",
        protocol="zigbee",
        name="Front door \u00e9",
        manufacturer="Acme",
        model="L1",
        codes=CodeConstraints(min_length=4, max_length=6, min_slot=1, max_slot=30),
        properties=properties,
    )
    assert device_json(device) == msgspec.json.encode(device_dict(device))
    renamed = msgspec.structs.replace(device, name="Back door")
    assert json.loads(device_json(renamed)) == device_dict(renamed)
    frame = protocol.encode(protocol.DeviceMsg(seq=3, device=device_dict(device)))
    assert frame == protocol.encode(
        protocol.DeviceMsg(seq=3, device=msgspec.Raw(device_json(device)))  # type: ignore[arg-type]
    )


class _NoDaemon:
    store = registry = dispatcher = None


def test_action_metrics_are_exposed_at_scrape() -> None:
    metrics = GatewayMetrics(_NoDaemon())  # type: ignore[arg-type]
    at = datetime.now(UTC)
    for status, duration in [
        (ActionStatus.GATEWAY_RECEIVED, None),
        (ActionStatus.PROCESSING, None),
        (ActionStatus.COMPLETED, 0.01),
        (ActionStatus.FAILED, 0.3),
        (ActionStatus.FAILED, 500.0),
    ]:
        metrics.observe_status(StatusUpdate("ar", status, at, None, "unlock", duration))
    text = metrics.render().decode()
    assert 'gatewayd_actions_total{action="unlock",status="failed"} 2.0' in text
    assert 'gatewayd_actions_total{action="unlock",status="gateway_received"} 1.0' in text
    assert "# TYPE gatewayd_action_duration_seconds histogram" in text
    assert 'gatewayd_action_duration_seconds_bucket{action="unlock",le="0.005"} 0.0' in text
    assert 'gatewayd_action_duration_seconds_bucket{action="unlock",le="0.01"} 1.0' in text
    assert 'gatewayd_action_duration_seconds_bucket{action="unlock",le="0.5"} 2.0' in text
    assert 'gatewayd_action_duration_seconds_bucket{action="unlock",le="120.0"} 2.0' in text
    assert 'gatewayd_action_duration_seconds_bucket{action="unlock",le="+Inf"} 3.0' in text
    assert 'gatewayd_action_duration_seconds_count{action="unlock"} 3.0' in text
    assert 'gatewayd_action_duration_seconds_sum{action="unlock"} 500.31' in text


def test_cached_logger_methods_still_redact_and_filter() -> None:
    stream = io.StringIO()
    gwlog.configure("info", "json", stream)
    try:
        log = gwlog.get_logger("hot.path")
        log.debug("x.hidden")
        log.info("x.shown", code="1234", at=timedelta(seconds=1))
        log.info("x.again", n=2)
        assert "info" in vars(log)  # looked up once, then kept
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["event"] for line in lines] == ["x.shown", "x.again"]
        assert lines[0]["code"] == "****"
        assert lines[0]["logger"] == "hot.path"
        assert "1234" not in stream.getvalue()
    finally:
        structlog.reset_defaults()
