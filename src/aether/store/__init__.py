"""Event stores: the protocols and the in-memory and JetStream backends."""

from aether.store._provision import StreamSettings
from aether.store.config import InvalidConfigError, JetStreamConfig
from aether.store.jetstream import JetStreamEventStore, StoreStats
from aether.store.memory import InMemoryEventStore
from aether.store.protocols import EventStore, SnapshotStore

__all__ = [
    "EventStore",
    "InMemoryEventStore",
    "InvalidConfigError",
    "JetStreamConfig",
    "JetStreamEventStore",
    "SnapshotStore",
    "StoreStats",
    "StreamSettings",
]
