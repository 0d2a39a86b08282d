"""Prometheus metrics: counters fed as things happen, gauges read from the daemon at scrape.

prometheus_client (and the http.server, wsgiref, ... it brings) is imported at the first scrape,
not at start-up: the counters are plain numbers until then, and a box nobody scrapes never pays
its memory.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from gatewayd import __version__
from gatewayd.actions import StatusUpdate
from gatewayd.driver import DriverState
from gatewayd.model import ActionName

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

    from gatewayd.daemon import Daemon

_ACTION_NAMES = frozenset(str(name) for name in ActionName)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _StateCollector:
    """Gauges that describe the daemon's state right now."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
            "gatewayd_outbox_oldest_age_seconds",
            "Age of the oldest upstream message the cloud has not acknowledged; 0 when none",
            value=round(d.store.outbox_oldest_age_s(), 3),
        )
        yield GaugeMetricFamily(
            "gatewayd_store_ok",
            "0 while the store refuses writes",
            value=int(not d.store.last_error),
        )
        if (free := d.disk.check()) is not None:
            yield GaugeMetricFamily(
                "gatewayd_state_dir_free_bytes",
                "Bytes free on the file system holding the state dir (the store stops at 0)",
                value=free,
            )
        yield GaugeMetricFamily(
            "gatewayd_store_rebuilt",
            "1 when this run found the store damaged and rebuilt it from what could be read",
            value=int(d.store.recovery is not None),
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
        from gatewayd.logging import lines_suppressed

        suppressed = CounterMetricFamily(
            "gatewayd_log_lines_suppressed",
            "Log lines the flood guard dropped, by event name (a library's: its logger)",
            labels=["event"],
        )
        for name, n in sorted(lines_suppressed().items()):
            suppressed.add_metric([name], n)
        yield suppressed


class _Latency:
    """One histogram series: per-bucket counts (the last one is +Inf) and the sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0


class _ActionCollector:
    """Action counters and latencies, kept as plain numbers and turned into metric families
    only when scraped: a transition costs a dict lookup and an add, not a locked update."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        m = self._metrics
        actions = CounterMetricFamily(
            "gatewayd_actions",
            "Action status transitions, by action and status",
            labels=["action", "status"],
        )
        for (action, status), n in sorted(m.counts.items()):
            actions.add_metric([action, str(status)], n)
        yield actions
        latency = HistogramMetricFamily(
            "gatewayd_action_duration_seconds",
            "Time from processing to completed/failed, by action",
            labels=["action"],
        )
        for action, series in sorted(m.latencies.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), series.buckets, strict=True):
                cumulative += n
                buckets.append((_bound(bound), cumulative))
            latency.add_metric([action], buckets, series.total)
        yield latency


def _bound(value: float) -> str:
    """A bucket's `le` label as prometheus-client writes it (`0.005`, `1.0`, `+Inf`)."""
    return "+Inf" if value == float("inf") else repr(float(value))


class GatewayMetrics:
    """One registry per daemon, so several daemons can live in one test process."""

    def __init__(self, daemon: Daemon) -> None:
        self.counts: dict[tuple[str, str], int] = {}  # (action, status) -> transitions
        self.latencies: dict[str, _Latency] = {}  # action -> its duration histogram
        self._daemon = daemon
        self._registry: CollectorRegistry | None = None  # made at the first scrape

    @property
    def registry(self) -> CollectorRegistry:
        """The prometheus_client registry of this daemon's collectors (imports the library)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=True)
            # Collectors by duck type: the registry only calls collect().
            registry.register(cast("Collector", _ActionCollector(self)))
            registry.register(cast("Collector", _StateCollector(self._daemon)))
            self._registry = registry
        return self._registry

    def observe_status(self, update: StatusUpdate) -> None:
        # a label per action the gateway knows: an unknown one from the cloud adds no series
        action = update.action if update.action in _ACTION_NAMES else "unknown"
        status = update.status
        key = (action, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        duration = update.duration_s
        if duration is not None and status.terminal:
            series = self.latencies.get(action)
            if series is None:
                series = self.latencies[action] = _Latency()
            # le semantics: a value equal to a bound falls in that bound's bucket
            series.buckets[bisect_left(LATENCY_BUCKETS, duration)] += 1
            series.total += duration

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
