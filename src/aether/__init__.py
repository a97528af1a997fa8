"""aether: event-sourcing primitives for Python on NATS JetStream.

The event model and errors live here; stores in :mod:`aether.store`, stream
administration (list, inspect, create, delete) in :mod:`aether.admin`, test servers in
:mod:`aether.testing`.
"""

from aether.errors import (
    AetherError,
    EventTooLargeError,
    InvalidEventError,
    JetStreamError,
    JetStreamNotEnabledError,
    StoreClosedError,
    StoreUnavailableError,
    StreamExistsError,
    StreamNotFoundError,
    UnsuitableStreamError,
    UnsupportedServerError,
    VersionConflictError,
)
from aether.event import (
    CAUSATION_ID,
    CORRELATION_ID,
    SPAN_ID,
    TRACE_ID,
    USER_ID,
    ActorSnapshot,
    Event,
)
from aether.replay import ReplayError, ReplayResult

__version__ = "0.1.0"

__all__ = [
    "CAUSATION_ID",
    "CORRELATION_ID",
    "SPAN_ID",
    "TRACE_ID",
    "USER_ID",
    "ActorSnapshot",
    "AetherError",
    "Event",
    "EventTooLargeError",
    "InvalidEventError",
    "JetStreamError",
    "JetStreamNotEnabledError",
    "ReplayError",
    "ReplayResult",
    "StoreClosedError",
    "StoreUnavailableError",
    "StreamExistsError",
    "StreamNotFoundError",
    "UnsuitableStreamError",
    "UnsupportedServerError",
    "VersionConflictError",
]
