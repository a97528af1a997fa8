"""Prometheus exposition of the bus metrics (needs the ``prometheus`` extra:
``pip install "aether-eventsourcing[prometheus]"``).

:func:`register_bus_metrics` registers a collector that reads ``bus.metrics`` at each
scrape (nothing is counted twice, nothing runs between scrapes)::

    from prometheus_client import start_http_server
    from aether.bus.prometheus import register_bus_metrics

    register_bus_metrics(bus)          # into prometheus_client's default REGISTRY
    start_http_server(9100)

The series, each labelled with ``bus`` (the name given at registration) and, but for
the gauge, ``namespace``:

| metric | type |
| --- | --- |
| ``aether_bus_published_total`` | counter |
| ``aether_bus_delivered_total`` | counter |
| ``aether_bus_dropped_total`` | counter |
| ``aether_bus_publish_errors_total`` | counter |
| ``aether_bus_received_total`` | counter (NatsEventBus: from other buses, per NATS subscription) |
| ``aether_bus_malformed_total`` | counter (NatsEventBus: undecodable, skipped) |
| ``aether_bus_active_subscriptions`` | gauge |
"""

from __future__ import annotations

from collections.abc import Iterable

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised with the extra missing
    raise ImportError(
        "aether.bus.prometheus needs prometheus-client: "
        'pip install "aether-eventsourcing[prometheus]"'
    ) from exc

from aether.bus._local import EventBus

__all__ = ["BusCollector", "register_bus_metrics"]

#: (metric name without ``_total``, NamespaceMetrics field, help text)
_COUNTERS = (
    ("aether_bus_published", "published", "Messages published, per bus namespace."),
    ("aether_bus_delivered", "delivered", "Messages handed to subscribers, per namespace."),
    ("aether_bus_dropped", "dropped", "Messages dropped for subscribers that fell behind."),
    ("aether_bus_publish_errors", "publish_errors", "Publish calls that failed."),
    (
        "aether_bus_received",
        "received",
        "Messages received from other buses (per NATS subscription).",
    ),
    ("aether_bus_malformed", "malformed", "Undecodable messages received, skipped."),
)


class BusCollector(Collector):
    """A Prometheus collector of one or more buses' :attr:`~aether.bus.EventBus.metrics`,
    read at each scrape. Register it once per registry; :meth:`add` more buses to it."""

    def __init__(self, bus: EventBus, *, bus_name: str = "default") -> None:
        self._buses: dict[str, EventBus] = {}
        self.add(bus, bus_name=bus_name)

    def add(self, bus: EventBus, *, bus_name: str) -> None:
        """Also export *bus*, labelled ``bus=bus_name`` (ValueError if the name is taken)."""
        if bus_name in self._buses:
            raise ValueError(f"a bus named {bus_name!r} is exported already")
        self._buses[bus_name] = bus

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (for the registry's name check)."""
        return self._families(with_samples=False)

    def collect(self) -> Iterable[Metric]:
        """The metric families with the buses' current counters."""
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> list[Metric]:
        counters = [
            CounterMetricFamily(name, text, labels=["bus", "namespace"])
            for name, _, text in _COUNTERS
        ]
        gauge = GaugeMetricFamily(
            "aether_bus_active_subscriptions", "Subscriptions open now.", labels=["bus"]
        )
        if with_samples:
            for bus_name, bus in self._buses.items():
                metrics = bus.metrics
                gauge.add_metric([bus_name], metrics.active_subscriptions)
                for namespace, values in sorted(metrics.namespaces.items()):
                    for family, (_, field, _) in zip(counters, _COUNTERS, strict=True):
                        family.add_metric([bus_name, namespace], getattr(values, field))
        return [*counters, gauge]


def register_bus_metrics(
    bus: EventBus,
    registry: CollectorRegistry | None = None,
    *,
    bus_name: str = "default",
) -> BusCollector:
    """Export *bus*'s metrics from *registry* (default: prometheus_client's ``REGISTRY``).

    Returns the collector: export another bus from the same registry with
    ``collector.add(other_bus, bus_name="...")`` (registering a second collector there
    fails on the duplicate metric names); ``registry.unregister(collector)`` stops it.
    """
    collector = BusCollector(bus, bus_name=bus_name)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
