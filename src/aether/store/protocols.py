"""The store protocols every backend implements (``InMemoryEventStore``, ``JetStreamEventStore``).

Protocols rather than base classes: a backend is any object with these async methods, and
application code depends only on the protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from aether.event import ActorSnapshot, Event
from aether.replay import ReplayResult


@runtime_checkable
class EventStore(Protocol):
    """Append-only, per-actor, versioned event storage with optimistic concurrency."""

    async def save_event(self, event: Event) -> None:
        """Append one event; its version must exceed the actor's latest.

        Raises VersionConflictError (nothing written) or InvalidEventError.
        """
        ...

    async def save_events(
        self, events: Sequence[Event], *, expected_version: int | None = None
    ) -> None:
        """Append several events of one actor atomically: all or none."""
        ...

    async def get_events(self, actor_id: str, from_version: int = 0) -> list[Event]:
        """Events with ``version >= from_version`` in version order; ``[]`` if unknown."""
        ...

    def iter_events(self, actor_id: str, from_version: int = 0) -> AsyncIterator[Event]:
        """Like ``get_events`` as an async iterator, in bounded memory."""
        ...

    async def get_events_with_errors(self, actor_id: str, from_version: int = 0) -> ReplayResult:
        """Like ``get_events`` plus a ReplayError per malformed stored message."""
        ...

    async def get_latest_version(self, actor_id: str) -> int:
        """The actor's latest version (0 if unknown), reflecting every acknowledged write."""
        ...


@runtime_checkable
class SnapshotStore(EventStore, Protocol):
    """An event store that also keeps the latest snapshot per actor."""

    async def save_snapshot(self, snapshot: ActorSnapshot) -> None:
        """Store a snapshot; an older one never replaces a newer one."""
        ...

    async def get_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        """The newest snapshot of the actor, or None."""
        ...
