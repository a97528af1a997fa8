"""Live notifications between components, in-process (:class:`EventBus`) and across
processes (:class:`NatsEventBus`), and the filters and patterns that the bus and the
stores' subscriptions share.

A bus is at most once (it stores nothing): for every event, even after a crash, use a
store's ``subscribe``. It never drops silently: a subscriber that falls behind is told
(:class:`SubscriptionOverflowError`) and the bus counts it (``bus.metrics``).
Prometheus exposition of the metrics: :mod:`aether.bus.prometheus` (the ``prometheus``
extra).
"""

from aether.bus._local import DEFAULT_BUFFER, BusSubscription, EventBus
from aether.bus._nats import KIND_HEADER, NODE_HEADER, ORIGIN_HEADER, NatsEventBus
from aether.bus.errors import (
    BusClosedError,
    BusConfigurationError,
    BusError,
    BusPublishError,
    BusSubscribeError,
    InvalidNamespaceError,
    SubscriptionOverflowError,
)
from aether.bus.filter import SubscriptionFilter, match_actor_pattern, match_namespace_pattern
from aether.bus.metrics import BusMetrics, NamespaceMetrics
from aether.bus.publisher import EventPublisher
from aether.bus.stored import INTERNAL_NAMESPACE, EventStored

__all__ = [
    "DEFAULT_BUFFER",
    "INTERNAL_NAMESPACE",
    "KIND_HEADER",
    "NODE_HEADER",
    "ORIGIN_HEADER",
    "BusClosedError",
    "BusConfigurationError",
    "BusError",
    "BusMetrics",
    "BusPublishError",
    "BusSubscribeError",
    "BusSubscription",
    "EventBus",
    "EventPublisher",
    "EventStored",
    "InvalidNamespaceError",
    "NamespaceMetrics",
    "NatsEventBus",
    "SubscriptionFilter",
    "SubscriptionOverflowError",
    "match_actor_pattern",
    "match_namespace_pattern",
]
