"""An in-process event store with the same contract as the JetStream one.

It keeps each event as its encoded JSON wire form, so callers that mutate their ``Event``
objects afterwards cannot change history, and data round-trips exactly as it would
through JetStream (tuples come back as lists, and so on).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence

from aether.errors import InvalidEventError
from aether.event import ActorSnapshot, Event
from aether.replay import ReplayError, ReplayResult
from aether.store import _rules


class InMemoryEventStore:
    """A :class:`~aether.store.SnapshotStore` held in memory (tests, embedded use).

    Each method's check-and-append runs under one lock without awaiting, so it is atomic
    across asyncio tasks and threads of one process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # actor id -> [(version, event id, wire bytes)], in append order (= version order)
        self._events: dict[str, list[tuple[int, str, bytes]]] = {}
        self._ids: set[str] = set()  # every stored event id: reuse is refused
        self._snapshots: dict[str, bytes] = {}
        self._snapshot_versions: dict[str, int] = {}

    async def save_event(self, event: Event) -> None:
        payload = _rules.encode_event(event)
        with self._lock:
            history = self._events.get(event.actor_id, [])
            if history and history[-1][:2] == (event.version, event.id):
                return  # the same event again (a caller's retry): already stored
            _rules.check_append(event, history[-1][0] if history else 0)
            self._refuse_reused_ids([event])
            self._events.setdefault(event.actor_id, history).append(
                (event.version, event.id, payload)
            )
            self._ids.add(event.id)

    async def save_events(
        self, events: Sequence[Event], *, expected_version: int | None = None
    ) -> None:
        payloads = _rules.encode_batch(events)
        expected = _rules.check_expected_version(expected_version)
        actor_id = events[0].actor_id
        with self._lock:
            history = self._events.get(actor_id, [])
            if history and history[-1][:2] == (events[-1].version, events[-1].id):
                return  # the same batch again: already stored
            _rules.check_batch_versions(events, history[-1][0] if history else 0, expected)
            self._refuse_reused_ids(events)
            self._ids.update(event.id for event in events)
            history.extend(
                (event.version, event.id, payload)
                for event, payload in zip(events, payloads, strict=True)
            )
            self._events[actor_id] = history

    def _refuse_reused_ids(self, events: Sequence[Event]) -> None:
        # JetStream refuses a reused id within its duplicate window; memory never forgets.
        for event in events:
            if event.id in self._ids:
                raise InvalidEventError(
                    f"event id {event.id!r} was already used by another event (ids must be unique)"
                )

    async def get_events(self, actor_id: str, from_version: int = 0) -> list[Event]:
        return (await self.get_events_with_errors(actor_id, from_version)).events

    async def iter_events(self, actor_id: str, from_version: int = 0) -> AsyncIterator[Event]:
        for event in (await self.get_events_with_errors(actor_id, from_version)).events:
            yield event

    async def get_events_with_errors(self, actor_id: str, from_version: int = 0) -> ReplayResult:
        _rules.check_read(actor_id, from_version)
        with self._lock:
            history = list(self._events.get(actor_id, ()))
        result = ReplayResult()
        for position, (version, _, payload) in enumerate(history, start=1):
            if version < from_version:
                continue
            try:
                result.events.append(Event.from_json(payload))
            except ValueError as exc:  # unreachable for events this store encoded itself
                result.errors.append(ReplayError(position, payload, exc))
        return result

    async def get_latest_version(self, actor_id: str) -> int:
        _rules.check_read(actor_id)
        with self._lock:
            history = self._events.get(actor_id)
            return history[-1][0] if history else 0

    async def save_snapshot(self, snapshot: ActorSnapshot) -> None:
        payload = _rules.encode_snapshot(snapshot)
        with self._lock:
            if self._snapshot_versions.get(snapshot.actor_id, -1) >= snapshot.version:
                return  # an older (or equal) snapshot never replaces a newer one
            self._snapshots[snapshot.actor_id] = payload
            self._snapshot_versions[snapshot.actor_id] = snapshot.version

    async def get_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        _rules.check_read(actor_id)
        with self._lock:
            payload = self._snapshots.get(actor_id)
        return None if payload is None else ActorSnapshot.from_json(payload)
