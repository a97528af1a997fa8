"""An in-process event store with the same contract as the JetStream one.

It applies the same rules (``aether.store._rules``: actor id length, version range, batch
size, snapshot versions, read arguments), so it accepts and refuses exactly what the
JetStream store does. It keeps each event as its encoded JSON wire form, so callers that
mutate their ``Event`` objects afterwards (or while a save is in flight) cannot change
history, and data round-trips exactly as it would through JetStream (tuples come back as
lists, and so on). Every decision uses the values captured when the event was encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime

from aether.bus._local import EventBus
from aether.bus.filter import SubscriptionFilter
from aether.bus.publisher import EventPublisher
from aether.bus.stored import INTERNAL_NAMESPACE, EventStored
from aether.errors import InvalidEventError
from aether.event import ActorSnapshot, Event
from aether.replay import ReplayError, ReplayResult
from aether.store import _rules
from aether.store._rules import EncodedEvent, EncodedSnapshot
from aether.store._subscription import Subscription, subscribe_memory, wake_waiter

_log = logging.getLogger("aether.store")


class InMemoryEventStore:
    """A :class:`~aether.store.SnapshotStore` held in memory (tests, embedded use).

    Each method's check-and-append runs under one lock without awaiting, so it is atomic
    across asyncio tasks and threads of one process. With *bus*, each append is announced
    on it as :class:`~aether.bus.EventStored` notices, as ``JetStreamEventStore.open(...,
    bus=)`` does. An append made in the bus's own event loop (an
    :class:`~aether.bus.EventBus`'s :attr:`~aether.bus.EventBus.loop`) publishes its
    notices before it returns; one made in another thread (another loop) hands them to
    the bus's loop (``run_coroutine_threadsafe``) and returns without waiting for them:
    they are published in append order per writer, once that loop runs. A bus of your own
    (any other :class:`~aether.bus.EventPublisher`) is called from the appending thread:
    then it must be thread-safe itself.
    """

    def __init__(self, *, bus: EventPublisher | None = None) -> None:
        self._bus = bus
        self._lock = threading.Lock()
        # actor id -> its events as encoded (immutable), in append order (= version order)
        self._events: dict[str, list[EncodedEvent]] = {}
        # every stored event id -> its position (1, 2, 3, ... across actors); reuse of an
        # id is refused
        self._positions: dict[str, int] = {}
        # every stored event in position order: position p is _log[p - 1] (subscriptions)
        self._log: list[EncodedEvent] = []
        # subscriptions waiting for an append: (their loop, the future to resolve)
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._snapshots: dict[str, EncodedSnapshot] = {}

    async def save_event(self, event: Event) -> None:
        encoded = _rules.prepare_event(event)
        with self._lock:
            history = self._events.get(encoded.actor_id)
            latest = history[-1] if history else None
            if latest is not None and (latest.version, latest.id) == (encoded.version, encoded.id):
                return  # the same event again (a caller's retry): already stored
            _rules.check_versions(
                encoded.actor_id, encoded.version, 0 if latest is None else latest.version
            )
            self._refuse_reused_ids([encoded.id])
            self._events.setdefault(encoded.actor_id, []).append(encoded)
            first_position = self._record([encoded])
        if self._bus is not None:
            await self._announce([encoded], first_position)

    async def save_events(
        self, events: Sequence[Event], *, expected_version: int | None = None
    ) -> None:
        batch = _rules.prepare_batch(events)
        expected = _rules.check_expected_version(expected_version)
        first = batch[0]
        with self._lock:
            history = self._events.get(first.actor_id)
            latest = history[-1] if history else None
            if history is not None and [(e.version, e.id) for e in history[-len(batch) :]] == [
                (e.version, e.id) for e in batch
            ]:
                return  # the same batch again: every event of it is already stored
            _rules.check_versions(
                first.actor_id, first.version, 0 if latest is None else latest.version, expected
            )
            self._refuse_reused_ids(encoded.id for encoded in batch)
            self._events.setdefault(first.actor_id, []).extend(batch)
            first_position = self._record(batch)
        if self._bus is not None:
            await self._announce(batch, first_position)

    def _record(self, appended: Sequence[EncodedEvent]) -> int:
        # Under the lock: number the appended events after every event stored before, and
        # wake the subscriptions waiting for them (in their own loops: any thread appends).
        # Returns the first one's position.
        position = len(self._positions)
        first = position + 1
        for encoded in appended:
            position += 1
            self._positions[encoded.id] = position
        self._log.extend(appended)
        if self._waiters:
            for loop, future in self._waiters:
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(wake_waiter, future)
            self._waiters.clear()
        return first

    async def _announce(self, batch: Sequence[EncodedEvent], first: int) -> None:
        # After the lock: a bus may await. A failing bus never fails the append. An
        # EventBus serves one loop: from another one, hand it the notices (see the class).
        bus = self._bus
        assert bus is not None
        now = datetime.now(UTC)
        notices = [
            EventStored(encoded.id, encoded.actor_id, encoded.version, position, now)
            for position, encoded in enumerate(batch, start=first)
        ]
        target = bus.loop if isinstance(bus, EventBus) else None
        if target is None or target is asyncio.get_running_loop():
            await _publish_notices(bus, notices)
            return
        publishing = _publish_notices(bus, notices)
        try:
            asyncio.run_coroutine_threadsafe(publishing, target)
        except RuntimeError:  # the bus's loop is closed: nobody is listening any more
            publishing.close()
            _log.warning(
                "could not announce the append of %r on the bus: its event loop is closed",
                notices[0].event_id,
            )

    def _refuse_reused_ids(self, ids: Iterable[str]) -> None:
        # JetStream refuses a reused id within its duplicate window; memory never forgets.
        for event_id in ids:
            if event_id in self._positions:
                raise InvalidEventError(
                    f"event id {event_id!r} was already used by another event (ids must be unique)"
                )

    async def get_events(self, actor_id: str, from_version: int = 0) -> list[Event]:
        return (await self.get_events_with_errors(actor_id, from_version)).events

    async def iter_events(self, actor_id: str, from_version: int = 0) -> AsyncIterator[Event]:
        for event in (await self.get_events_with_errors(actor_id, from_version)).events:
            yield event

    async def get_events_with_errors(self, actor_id: str, from_version: int = 0) -> ReplayResult:
        result = ReplayResult()
        for item in self._read(actor_id, from_version):
            result.add(item)
        return result

    async def iter_events_with_errors(
        self, actor_id: str, from_version: int = 0
    ) -> AsyncIterator[Event | ReplayError]:
        """As :meth:`JetStreamEventStore.iter_events_with_errors
        <aether.store.JetStreamEventStore.iter_events_with_errors>`."""
        for item in self._read(actor_id, from_version):
            yield item

    def _read(self, actor_id: str, from_version: int) -> list[Event | ReplayError]:
        _rules.check_read(actor_id, from_version)
        with self._lock:
            history = [(self._positions[e.id], e) for e in self._events.get(actor_id, ())]
        items: list[Event | ReplayError] = []
        for position, encoded in history:
            if encoded.version < from_version:
                continue
            try:
                event = _rules.decode_event(encoded.payload)
            except ValueError as exc:  # unreachable for events this store encoded itself
                items.append(ReplayError(position, encoded.payload, exc))
            else:
                event.position = position
                items.append(event)
        return items

    def subscribe(
        self,
        *,
        after: int = 0,
        filter: SubscriptionFilter | None = None,
        on_malformed: Callable[[ReplayError], None] | None = None,
    ) -> Subscription:
        """As :meth:`JetStreamEventStore.subscribe
        <aether.store.JetStreamEventStore.subscribe>`, over this store's positions (1, 2,
        3, ... in append order across actors).

        Appends from any thread wake the subscriptions waiting for them, in their own
        event loops. Catch-up copies at most a few hundred log entries at a time under the
        store's lock, so a long history is never copied whole.
        """
        return subscribe_memory(self, after, filter, on_malformed)

    async def get_latest_version(self, actor_id: str) -> int:
        _rules.check_read(actor_id)
        with self._lock:
            history = self._events.get(actor_id)
            return history[-1].version if history else 0

    async def save_snapshot(self, snapshot: ActorSnapshot) -> None:
        encoded = _rules.prepare_snapshot(snapshot)
        with self._lock:
            current = self._snapshots.get(encoded.actor_id)
            if current is not None and current.version >= encoded.version:
                return  # an older (or equal) snapshot never replaces a newer one
            self._snapshots[encoded.actor_id] = encoded

    async def get_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        _rules.check_read(actor_id)
        with self._lock:
            current = self._snapshots.get(actor_id)
        return None if current is None else _rules.decode_snapshot(current.payload)


async def _publish_notices(bus: EventPublisher, notices: Sequence[EventStored]) -> None:
    for notice in notices:
        try:
            await bus.publish(INTERNAL_NAMESPACE, notice)
        except Exception:
            _log.warning(
                "could not announce the append of %r on the bus", notice.event_id, exc_info=True
            )
