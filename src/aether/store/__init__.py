"""Event stores: the protocols and the in-memory and JetStream backends."""

from aether.store.jetstream import JetStreamConfig, JetStreamEventStore, StoreStats
from aether.store.memory import InMemoryEventStore
from aether.store.protocols import EventStore, SnapshotStore

__all__ = [
    "EventStore",
    "InMemoryEventStore",
    "JetStreamConfig",
    "JetStreamEventStore",
    "SnapshotStore",
    "StoreStats",
]
