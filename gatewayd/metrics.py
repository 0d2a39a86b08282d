"""Prometheus metrics: counters fed as things happen, gauges read from the daemon at scrape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gatewayd import __version__
from gatewayd.actions import StatusUpdate
from gatewayd.driver import DriverState

if TYPE_CHECKING:
    from gatewayd.daemon import Daemon

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _StateCollector(Collector):
    """Gauges that describe the daemon's state right now."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self._daemon
        if d.store is None or d.registry is None or d.dispatcher is None:
            return
        tunnel = d.tunnel.snapshot() if d.tunnel is not None else {}
        info = GaugeMetricFamily(
            "gatewayd_info", "Always 1; the software version as a label", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "gatewayd_claimed",
            "1 once the gateway is claimed by an account",
            value=int(d.store.identity().claimed),
        )
        yield GaugeMetricFamily(
            "gatewayd_tunnel_up",
            "1 when the cloud tunnel is connected",
            value=int(bool(d.tunnel is not None and d.tunnel.up)),
        )
        yield CounterMetricFamily(
            "gatewayd_tunnel_reconnects",
            "Tunnel connection attempts after the first",
            value=int(tunnel.get("reconnects", 0)),
        )
        yield GaugeMetricFamily(
            "gatewayd_outbox_backlog",
            "Upstream messages not yet acknowledged by the cloud",
            value=d.store.outbox_backlog(),
        )
        yield GaugeMetricFamily(
            "gatewayd_store_ok",
            "0 while the store refuses writes",
            value=int(not d.store.last_error),
        )
        yield GaugeMetricFamily(
            "gatewayd_actions_in_flight",
            "Actions executing now",
            value=len(d.dispatcher.in_flight()),
        )
        yield GaugeMetricFamily(
            "gatewayd_actions_queued",
            "Actions waiting for their device",
            value=d.dispatcher.queued(),
        )
        devices = GaugeMetricFamily(
            "gatewayd_devices",
            "Devices by protocol and online state",
            labels=["protocol", "online"],
        )
        battery = GaugeMetricFamily(
            "gatewayd_battery_level", "Battery level 0..1 by device", labels=["device_id"]
        )
        counts: dict[tuple[str, str], int] = {}
        for dev in d.registry.devices():
            key = (dev.protocol, "true" if dev.properties.online else "false")
            counts[key] = counts.get(key, 0) + 1
            if dev.properties.battery_level is not None:
                battery.add_metric([dev.id], dev.properties.battery_level)
        for (proto, online), n in sorted(counts.items()):
            devices.add_metric([proto, online], n)
        yield devices
        yield battery
        events = CounterMetricFamily(
            "gatewayd_events", "Door events reported, by event name", labels=["event_name"]
        )
        for name, n in sorted(d.registry.event_counts.items()):
            events.add_metric([name], n)
        yield events
        drivers = GaugeMetricFamily(
            "gatewayd_driver_up", "1 when the driver's radio is usable", labels=["driver"]
        )
        for name, health in d.driver_health().items():
            drivers.add_metric(
                [name], int(health.state in (DriverState.READY, DriverState.DEGRADED))
            )
        yield drivers


class GatewayMetrics:
    """One registry per daemon, so several daemons can live in one test process."""

    def __init__(self, daemon: Daemon) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.actions = Counter(
            "gatewayd_actions",
            "Action status transitions, by action and status",
            ["action", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gatewayd_action_duration_seconds",
            "Time from processing to completed/failed, by action",
            ["action"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(daemon))
        # labelled children, looked up once per (action, status) rather than per transition
        self._counts: dict[tuple[str, str], Any] = {}
        self._latencies: dict[str, Any] = {}

    def observe_status(self, update: StatusUpdate) -> None:
        action = update.action or "unknown"
        status = update.status
        counter = self._counts.get((action, status))
        if counter is None:
            counter = self._counts[(action, status)] = self.actions.labels(action, str(status))
        counter.inc()
        if update.duration_s is not None and status.terminal:
            latency = self._latencies.get(action)
            if latency is None:
                latency = self._latencies[action] = self.latency.labels(action)
            latency.observe(update.duration_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
