"""Event stores: the protocols and the in-memory and JetStream backends."""

from aether.event import MAX_VERSION
from aether.store._provision import StreamSettings
from aether.store._rules import MAX_BATCH_SIZE
from aether.store._subjects import MAX_TOKEN_LENGTH
from aether.store.config import InvalidConfigError, JetStreamConfig
from aether.store.jetstream import JetStreamEventStore, StoreStats
from aether.store.memory import InMemoryEventStore
from aether.store.protocols import EventStore, SnapshotStore

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_TOKEN_LENGTH",
    "MAX_VERSION",
    "EventStore",
    "InMemoryEventStore",
    "InvalidConfigError",
    "JetStreamConfig",
    "JetStreamEventStore",
    "SnapshotStore",
    "StoreStats",
    "StreamSettings",
]
