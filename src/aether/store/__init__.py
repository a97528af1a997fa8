"""Event stores: the protocols and the in-memory and JetStream backends."""

from aether.event import MAX_VERSION
from aether.store._durable import (
    Delivery,
    DeliverySettledError,
    DurableSubscription,
    DurableSubscriptionInfo,
    DurableSubscriptionMetrics,
    InvalidSubscriptionNameError,
    ParkedEvent,
    SubscriptionConflictError,
)
from aether.store._provision import StreamSettings
from aether.store._rules import MAX_BATCH_SIZE
from aether.store._subjects import MAX_TOKEN_LENGTH
from aether.store._subscription import Subscription, SubscriptionStats
from aether.store.config import InvalidConfigError, JetStreamConfig
from aether.store.jetstream import JetStreamEventStore, StoreStats
from aether.store.memory import InMemoryEventStore
from aether.store.protocols import EventStore, SnapshotStore

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_TOKEN_LENGTH",
    "MAX_VERSION",
    "Delivery",
    "DeliverySettledError",
    "DurableSubscription",
    "DurableSubscriptionInfo",
    "DurableSubscriptionMetrics",
    "EventStore",
    "InMemoryEventStore",
    "InvalidConfigError",
    "InvalidSubscriptionNameError",
    "JetStreamConfig",
    "JetStreamEventStore",
    "ParkedEvent",
    "SnapshotStore",
    "StoreStats",
    "StreamSettings",
    "Subscription",
    "SubscriptionConflictError",
    "SubscriptionStats",
]
