"""What a bus counts: per namespace, messages published, delivered, dropped, ... .

``bus.metrics`` returns a :class:`BusMetrics` snapshot: plain frozen dataclasses, to log,
assert on or export (``aether.bus.prometheus`` exports them for Prometheus). Counters
only grow, for the life of the bus.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

__all__ = ["BusMetrics", "NamespaceMetrics"]


@dataclass(frozen=True, slots=True)
class NamespaceMetrics:
    """The counters of one namespace."""

    #: Messages ``publish`` accepted on this bus (for a NatsEventBus: handed to NATS).
    published: int = 0
    #: Messages handed to a subscriber by its iterator (one message to three
    #: subscribers counts three).
    delivered: int = 0
    #: Messages discarded because a subscriber was more than its ``buffer`` behind (each
    #: also reported to that subscriber by a SubscriptionOverflowError).
    dropped: int = 0
    #: ``publish`` calls that failed after the namespace was accepted: a malformed message,
    #: or NATS refusing it. Nothing was delivered.
    publish_errors: int = 0
    #: NatsEventBus: messages received from other buses or NATS clients, counted once per
    #: NATS subscription of this bus that received them, whatever the number of local
    #: subscribers: the bus has one NATS subscription per distinct pattern, so a message
    #: matching two overlapping patterns of this bus (``x.*`` and ``x.>``) counts twice.
    received: int = 0
    #: NatsEventBus: messages from others that could not be decoded; skipped, logged.
    #: Counted like ``received``: once per NATS subscription of this bus that got them.
    malformed: int = 0

    def __add__(self, other: NamespaceMetrics) -> NamespaceMetrics:
        return NamespaceMetrics(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )


@dataclass(frozen=True, slots=True)
class BusMetrics:
    """A snapshot of a bus's counters."""

    #: Counters by namespace, for every namespace the bus has seen.
    namespaces: Mapping[str, NamespaceMetrics] = field(default_factory=dict)
    #: Subscriptions open now.
    active_subscriptions: int = 0

    def namespace(self, namespace: str) -> NamespaceMetrics:
        """The counters of *namespace* (all zero if the bus has not seen it)."""
        return self.namespaces.get(namespace, _ZERO)

    @property
    def total(self) -> NamespaceMetrics:
        """The counters summed over every namespace."""
        total = _ZERO
        for counters in self.namespaces.values():
            total = total + counters
        return total


_ZERO = NamespaceMetrics()


class _Counters:
    """The live, mutable counters of one namespace (the hot path increments them)."""

    __slots__ = ("delivered", "dropped", "malformed", "publish_errors", "published", "received")

    def __init__(self) -> None:
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.publish_errors = 0
        self.received = 0
        self.malformed = 0

    def snapshot(self) -> NamespaceMetrics:
        return NamespaceMetrics(
            published=self.published,
            delivered=self.delivered,
            dropped=self.dropped,
            publish_errors=self.publish_errors,
            received=self.received,
            malformed=self.malformed,
        )
