"""Event stores: the protocols and the in-memory and JetStream backends."""

from aether.store.base import EventStore, SnapshotStore
from aether.store.jetstream import JetStreamConfig, JetStreamEventStore, StoreStats
from aether.store.memory import InMemoryEventStore

__all__ = [
    "EventStore",
    "InMemoryEventStore",
    "JetStreamConfig",
    "JetStreamEventStore",
    "SnapshotStore",
    "StoreStats",
]
