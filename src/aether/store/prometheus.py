"""Prometheus exposition of subscription metrics (needs the ``prometheus`` extra:
``pip install "aether-eventsourcing[prometheus]"``).

:func:`register_subscription_metrics` registers a collector that reads each
subscription's counters at scrape time: a :class:`~aether.store.Subscription`'s
``stats`` or a :class:`~aether.store.DurableSubscription`'s ``metrics``::

    from prometheus_client import start_http_server
    from aether.store.prometheus import register_subscription_metrics

    events = store.subscribe(after=model.position())
    collector = register_subscription_metrics(events, name="balances")
    collector.add(store.durable_subscription("welcome-mails"), name="welcome-mails")
    start_http_server(9100)

The series, labelled ``subscription`` (the name given) and ``kind`` (``subscribe`` or
``durable``); a counter a kind does not keep is left out for it:

| metric | type | kinds |
| --- | --- | --- |
| ``aether_subscription_lag`` | gauge: events stored and not yet handed out | both |
| ``aether_subscription_delivered_total`` | counter | both |
| ``aether_subscription_redelivered_total`` | counter | durable |
| ``aether_subscription_parked_total`` | counter | durable |
| ``aether_subscription_filtered_total`` | counter | both |
| ``aether_subscription_malformed_total`` | counter | subscribe (durable: parked) |
| ``aether_subscription_position`` | gauge: last position processed | subscribe |
"""

from __future__ import annotations

from collections.abc import Iterable

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised with the extra missing
    raise ImportError(
        "aether.store.prometheus needs prometheus-client: "
        'pip install "aether-eventsourcing[prometheus]"'
    ) from exc

from aether.store._durable import DurableSubscription
from aether.store._subscription import Subscription

__all__ = ["SubscriptionCollector", "register_subscription_metrics"]

AnySubscription = Subscription | DurableSubscription


class SubscriptionCollector(Collector):
    """A Prometheus collector of named subscriptions' counters, read at each scrape.
    Register it once per registry; :meth:`add` more subscriptions to it."""

    def __init__(self, subscription: AnySubscription, *, name: str) -> None:
        self._subscriptions: dict[str, AnySubscription] = {}
        self.add(subscription, name=name)

    def add(self, subscription: AnySubscription, *, name: str) -> None:
        """Also export *subscription*, labelled ``subscription=name`` (ValueError if the
        name is taken)."""
        if name in self._subscriptions:
            raise ValueError(f"a subscription named {name!r} is exported already")
        self._subscriptions[name] = subscription

    def remove(self, name: str) -> None:
        """Stop exporting the subscription called *name* (e.g. once it is closed)."""
        self._subscriptions.pop(name, None)

    def describe(self) -> Iterable[Metric]:
        return self._families(with_samples=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> list[Metric]:
        labels = ["subscription", "kind"]
        lag = GaugeMetricFamily(
            "aether_subscription_lag", "Events stored and not yet handed out.", labels=labels
        )
        position = GaugeMetricFamily(
            "aether_subscription_position", "The last position processed.", labels=labels
        )
        counters = {
            field: CounterMetricFamily(f"aether_subscription_{field}", text, labels=labels)
            for field, text in (
                ("delivered", "Events handed out."),
                ("redelivered", "Deliveries of an event after its first."),
                ("parked", "Events given up on and parked."),
                ("filtered", "Events the filter left out."),
                ("malformed", "Stored messages skipped: no store could have written them."),
            )
        }
        if with_samples:
            for name, subscription in sorted(self._subscriptions.items()):
                if isinstance(subscription, DurableSubscription):
                    m = subscription.metrics
                    key = [name, "durable"]
                    values = {
                        "delivered": m.delivered,
                        "redelivered": m.redelivered,
                        "parked": m.parked,
                        "filtered": m.filtered,
                    }
                    current_lag = m.lag
                else:
                    stats = subscription.stats
                    key = [name, "subscribe"]
                    values = {
                        "delivered": stats.delivered,
                        "filtered": stats.filtered_out,
                        "malformed": stats.malformed,
                    }
                    current_lag = stats.lag
                    position.add_metric(key, stats.position)
                for field, value in values.items():
                    counters[field].add_metric(key, value)
                if current_lag is not None:
                    lag.add_metric(key, current_lag)
        return [lag, position, *counters.values()]


def register_subscription_metrics(
    subscription: AnySubscription,
    registry: CollectorRegistry | None = None,
    *,
    name: str,
) -> SubscriptionCollector:
    """Export *subscription*'s counters from *registry* (default: prometheus_client's
    ``REGISTRY``), labelled ``subscription=name``. Returns the collector: export more
    subscriptions with ``collector.add(...)``; ``registry.unregister(collector)`` stops."""
    collector = SubscriptionCollector(subscription, name=name)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
