"""The event store on NATS JetStream, correct with any number of writer processes.

Layout: one stream per (namespace, name), one subject per actor
(``<stream>.events.<encoded actor id>``), and a second stream ``<stream>_snapshots`` that
keeps one snapshot per actor.

Correctness does not depend on the version cache. Every append carries
``Nats-Expected-Last-Subject-Sequence`` (the sequence of the last message on the actor's
subject that this writer knows of) and ``Nats-Msg-Id`` (the event id), so the server
rejects an append if anyone, in any process, wrote to the actor in between. On that
rejection the store re-reads the actor's tail, re-checks the version rule, and retries or
raises :class:`~aether.errors.VersionConflictError` with the true current version. The
cache only saves the read before a write: a warm ``save_event`` is one round trip.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from aether.bus.filter import SubscriptionFilter
from aether.bus.publisher import EventPublisher
from aether.bus.stored import INTERNAL_NAMESPACE, EventStored
from aether.errors import (
    EventTooLargeError,
    InvalidEventError,
    StoreClosedError,
    StoreUnavailableError,
    StreamNotFoundError,
    UnsupportedServerError,
    VersionConflictError,
)
from aether.event import ActorSnapshot, Event, check_actor_id
from aether.replay import ReplayError, ReplayResult
from aether.store import _rules
from aether.store._append import Answer, PendingAppend, Step, classify, decide
from aether.store._cache import EMPTY, CacheEntry, KeyedLocks, VersionCache
from aether.store._durable import (
    DurableSubscription,
    DurableSubscriptionInfo,
    ParkedEvent,
    durable_subscription,
    durable_subscriptions,
    parked,
    unpark,
)
from aether.store._jsapi import (
    JsApi,
    StoredMsg,
    api_for,
    atomic_publish_supported,
    raise_for_error,
    require_jetstream,
)
from aether.store._provision import StreamSettings, check_duplicate_window, find, provision
from aether.store._replay import Replayer
from aether.store._seek import (
    SEEK_MIN_SKIP,
    Found,
    Mark,
    ReadAt,
    ReadLast,
    ReadNext,
    Start,
    seek,
)
from aether.store._snapshots import SnapshotStream, pause_if_in_flight
from aether.store._subjects import SNAPSHOTS_SUFFIX, encode_actor_id
from aether.store._subscription import Subscription, subscribe_jetstream
from aether.store.config import JetStreamConfig

_log = logging.getLogger("aether.store")

# Bytes of headers an append adds besides the event id (batch headers included).
_HEADER_ALLOWANCE = 256


@dataclass
class StoreStats:
    """Counters of what the store did, for monitoring and the demo."""

    cache_hits: int = 0
    cache_misses: int = 0
    #: appends the server refused because another writer got there first (cache repaired)
    stale_cache_repairs: int = 0
    #: VersionConflictErrors raised to callers
    conflicts: int = 0
    #: requests re-sent (timeouts, no responders, reconnects, "not now" answers) and
    #: replays resumed after a stalled consumer
    retries: int = 0
    #: actors whose latest version the cache holds now (at most ``version_cache_size``)
    cached_actors: int = 0


class JetStreamEventStore:
    """A :class:`~aether.store.SnapshotStore` on NATS JetStream. Create it with :meth:`open`."""

    def __init__(
        self,
        nc: Client,
        api: JsApi,
        config: JetStreamConfig,
        events: StreamSettings,
        snapshot_stream: str,
        atomic: bool,
        bus: EventPublisher | None = None,
    ) -> None:
        # Use open() or attach(): they provision the streams and call _listen().
        self._nc = nc
        self._bus = bus
        self._api = api
        self._replay = Replayer(api)
        self._config = config
        self._settings = events
        self._stream = stream_name = events.name
        self._event_prefix = f"{stream_name}.events."
        self._atomic = atomic
        self._replicated = events.replicas > 1  # the stream as it is, not as asked
        self._cache = VersionCache(config.version_cache_size)
        self._snapshots = SnapshotStream(
            api, snapshot_stream, stream_name, config.version_cache_size
        )
        self._locks = KeyedLocks()
        self._stats = StoreStats()
        # The stream's identity (its creation time): the cache is valid within it only.
        self._created = events.created
        self._reconnects_seen: int = nc.stats["reconnects"]
        self._advisories: NatsSubscription | None = None
        self._closed = False
        self._min_window = config.min_duplicate_window

    async def _listen(self) -> None:
        """Subscribe to the stream's advisories before the cache is used (see
        :meth:`_on_advisory`), then check the stream's identity once: it may have been
        recreated between the provisioning and the subscription. Closes the store if
        that fails, so no subscription is left behind. A connection that fails meanwhile
        raises StoreUnavailableError, as a request would."""
        try:
            # The callback holds the store weakly: a store dropped without close() is freed
            # (cache included); only its subscription stays until the connection closes.
            self._advisories = await self._nc.subscribe(
                f"{_ADVISORY_PREFIX}.*.{self._stream}", cb=_advisory_callback(weakref.ref(self))
            )
            await self._nc.flush(timeout=max(1, int(self._api.request_timeout)))
            await self._refresh_identity()
        except (nats.errors.Error, TimeoutError) as exc:
            await self.close()
            raise StoreUnavailableError(
                f"no answer from the NATS server while subscribing to the stream's "
                f"advisories ({type(exc).__name__})"
            ) from exc
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening to the stream's advisories. The connection stays the caller's.

        Idempotent. Appends on a closed store raise StoreClosedError (it could no longer
        tell that its stream was recreated); reads still work.
        """
        self._closed = True
        sub, self._advisories = self._advisories, None
        if sub is not None and not self._nc.is_closed:
            await sub.unsubscribe()
        await self._replay.close()

    async def __aenter__(self) -> JetStreamEventStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @classmethod
    async def open(
        cls,
        nc: Client,
        stream_name: str = "events",
        config: JetStreamConfig | None = None,
        *,
        bus: EventPublisher | None = None,
    ) -> JetStreamEventStore:
        """Connect a store to *nc*, creating its streams if they do not exist.

        *nc* is the caller's connected client: its auth, TLS and reconnect settings are used
        as they are. Several stores (in any number of processes) may open the same stream.
        The store subscribes to the stream's JetStream advisories
        (``$JS.EVENT.ADVISORY.STREAM.*.<stream>``) to notice the stream being recreated;
        :meth:`close` (or ``async with``) ends that subscription.

        With *bus* (an :class:`~aether.bus.EventBus`, :class:`~aether.bus.NatsEventBus`
        or any :class:`~aether.bus.EventPublisher`), every append this store makes is
        announced on it: one :class:`~aether.bus.EventStored` per event, in namespace
        :data:`~aether.bus.INTERNAL_NAMESPACE`, after the server stored it; none for a
        failed append or a re-save of a stored event.

        Raises JetStreamNotEnabledError at once if the server has no JetStream, and
        InvalidConfigError for a stream name no store can have (letters, digits, ``-`` and
        ``_``; see :meth:`JetStreamConfig.events_stream_for`).
        """
        config = config or JetStreamConfig()
        config.events_stream_for(stream_name)  # InvalidConfigError for a bad name
        api = api_for(nc, config)
        await require_jetstream(nc, config.request_timeout.total_seconds())
        atomic = atomic_publish_supported(nc)
        events, snapshots = await provision(
            api, config.namespace, stream_name, config, atomic=atomic
        )
        store = cls(nc, api, config, events, snapshots.name, atomic, bus)
        await store._listen()
        return store

    @classmethod
    async def attach(
        cls,
        nc: Client,
        stream_name: str = "events",
        config: JetStreamConfig | None = None,
        *,
        bus: EventPublisher | None = None,
    ) -> JetStreamEventStore:
        """A store on an **existing** stream, creating and changing nothing.

        For tools and read-only users (``aether events``, dashboards): a typo in a stream
        name must not create an empty stream, and an operator's settings are not
        touched. Only the config's namespace and client-side settings (timeouts, cache
        size) apply. Raises InvalidConfigError for a bad stream name, StreamNotFoundError
        if the stream does not exist, and UnsuitableStreamError if it is not one a store
        can use (as :meth:`open` does). One check waits for the first append: a stream
        whose duplicate window is shorter than ``config.min_duplicate_window`` can be
        read, but appends raise UnsuitableStreamError (nothing written).
        """
        config = config or JetStreamConfig()
        config.events_stream_for(stream_name)  # InvalidConfigError for a bad name
        api = api_for(nc, config)
        await require_jetstream(nc, config.request_timeout.total_seconds())
        # The duplicate window is checked by the first append (see _append): reading a
        # stream whose window is too short for this config's retries is fine.
        found, snapshots = await find(api, config.namespace, stream_name, None)
        events = found.settings
        snapshot_stream = (
            events.name + SNAPSHOTS_SUFFIX if snapshots is None else snapshots.settings.name
        )
        store = cls(nc, api, config, events, snapshot_stream, events.allow_atomic, bus)
        await store._listen()
        return store

    @property
    def stream_name(self) -> str:
        """The real JetStream stream holding the events (namespace applied)."""
        return self._stream

    @property
    def config(self) -> JetStreamConfig:
        """The configuration the store was opened with (defaults filled in): what was
        *asked*. An existing stream keeps its own settings; see :attr:`stream_settings`."""
        return self._config

    @property
    def stream_settings(self) -> StreamSettings:
        """The events stream's real settings as the server held them when the store was
        opened (or last checked the stream's identity, after a reconnect): replicas,
        storage, max age, duplicate window, creation time, ..."""
        return self._settings

    @property
    def stats(self) -> StoreStats:
        """A copy of the store's counters."""
        return replace(self._stats, retries=self._api.retries, cached_actors=len(self._cache))

    def subject_for(self, actor_id: str) -> str:
        """The JetStream subject holding *actor_id*'s events (for tools and debugging)."""
        check_actor_id(actor_id)
        return self._event_prefix + encode_actor_id(actor_id)

    def cached_version(self, actor_id: str) -> int | None:
        """What the version cache holds for *actor_id* (None if nothing). Never authoritative."""
        entry = self._cache.get(actor_id)
        return None if entry is None else entry.version

    # -- writes ---------------------------------------------------------------------------

    async def save_event(self, event: Event) -> None:
        """Append *event*: one round trip when the actor's cache entry is warm and current.

        Raises VersionConflictError (nothing written) if ``event.version`` is not greater
        than the actor's latest version, as checked by the server across all writers.
        Saving an event that is already the actor's latest (same id and version) returns
        normally; saving one that is stored but no longer the latest raises
        VersionConflictError. Raises InvalidEventError / EventTooLargeError before any I/O
        for bad input, and InvalidEventError (nothing written) if the event's id is
        already used by another stored event. Raises StreamNotFoundError at once if the
        stream was deleted, and StoreUnavailableError if the outcome stayed unknown past
        ``retry_deadline``. The event is read once, when it is encoded: changing it while
        the save is in flight changes nothing.
        """
        encoded = _rules.prepare_event(event)
        self._check_size(encoded.payload, encoded.id)
        subject = self._event_prefix + encode_actor_id(encoded.actor_id)
        last = await self._append(PendingAppend.single(subject, encoded))
        if last and self._bus is not None:
            await self._announce([encoded], last)

    async def save_events(
        self, events: Sequence[Event], *, expected_version: int | None = None
    ) -> None:
        """Append several events of one actor atomically (all or none).

        With ``expected_version`` the actor's latest version must equal it. Needs
        nats-server >= 2.12 (atomic batch publish) for more than one event. Errors as for
        :meth:`save_event`; an id in the batch already used by another event (within the
        stream's duplicate window) raises InvalidEventError and nothing is written.
        """
        batch = _rules.prepare_batch(events)
        expected = _rules.check_expected_version(expected_version)
        if len(batch) > 1 and not self._atomic:
            if atomic_publish_supported(self._nc):
                raise UnsupportedServerError(
                    f"stream {self._stream!r} does not allow atomic batch publish "
                    "(allow_atomic); JetStreamEventStore.open enables it"
                )
            raise UnsupportedServerError(
                "save_events with several events needs nats-server >= 2.12 (atomic batch "
                f"publish); connected to {self._nc.connected_server_version}"
            )
        for encoded in batch:
            self._check_size(encoded.payload, encoded.id)
        subject = self._event_prefix + encode_actor_id(batch[0].actor_id)
        last = await self._append(PendingAppend.of(subject, batch, expected))
        if last and self._bus is not None:
            await self._announce(batch, last)

    async def _announce(self, batch: Sequence[_rules.EncodedEvent], last: int) -> None:
        """Publish EventStored for *batch*, just stored with its last event at *last*.

        An atomic batch is committed as one entry, so its events hold consecutive
        sequences. A failing bus never fails the append (it is stored): logged only.
        """
        assert self._bus is not None
        first = last - len(batch) + 1
        now = datetime.now(UTC)
        for offset, encoded in enumerate(batch):
            notice = EventStored(encoded.id, encoded.actor_id, encoded.version, first + offset, now)
            try:
                await self._bus.publish(INTERNAL_NAMESPACE, notice)
            except Exception:
                _log.warning(
                    "could not announce the append of %r (actor %r, position %d) on the bus",
                    encoded.id,
                    encoded.actor_id,
                    first + offset,
                    exc_info=True,
                )

    async def _append(self, append: PendingAppend) -> int:
        """Drive *append* to its outcome. The decisions are :func:`_append.decide`'s.
        Returns the stream sequence of its last event if this call stored it, 0 if it was
        stored before (a re-save).

        Under the actor's lock: start from the cached tail (or read it on a miss) and
        publish, re-reading the tail from the server whenever it refuses the expected
        sequence. Only when the *cached* tail would decide the outcome by itself (a
        conflict, or "already stored") is the lock released, the tail read from the
        server, and the decision taken again: on a hot actor the losing writers then do
        not queue behind one read each.
        """
        actor_id = append.actor_id
        if self._closed:
            raise StoreClosedError("the store is closed: open a new one to append")
        if self._settings.duplicate_window < self._min_window:
            check_duplicate_window(self._settings, self._config)  # raises
        try:
            if self._nc.stats["reconnects"] != self._reconnects_seen:
                await self._refresh_identity()  # advisories may have been missed
            server_tail: CacheEntry | None = None
            read_at = self._cache.generation  # the cache generation server_tail was read at
            while True:
                if server_tail is not None and read_at == self._cache.generation:
                    step = decide(append, server_tail, from_server=True)
                    if step is Step.STORED:
                        return 0  # stored before this call (its attempts all settled)
                    if step is Step.CONFLICT:
                        self._stats.conflicts += 1
                        raise VersionConflictError(
                            actor_id, append.versions[0], server_tail.version
                        )
                await self._locks.acquire(actor_id)
                try:
                    settled = await self._attempt(append, server_tail, read_at)
                finally:
                    self._locks.release(actor_id)
                if settled is not None:
                    return settled
                before, read_at = self._cache.get(actor_id), self._cache.generation
                server_tail = await self._read_tail(actor_id, append.subject)
                self._cache.put_read(actor_id, server_tail, before, read_at)
        except StreamNotFoundError:
            self._forget()
            raise

    async def _attempt(
        self, append: PendingAppend, server_tail: CacheEntry | None, read_at: int
    ) -> int | None:
        """Publish *append* from *server_tail* (read at cache generation *read_at*) or
        else the cache. The caller holds the actor's lock. Returns None if the cached tail
        would decide the outcome by itself (the caller reads it from the server); once the
        append is settled, the stream sequence of its last event if this call stored it,
        else 0 (stored before).

        Whatever the tail's source, it is only used while the cache generation it was
        learnt at is current: a generation change means the stream was recreated
        meanwhile, and a sequence of the old stream says nothing of the new one.
        """
        actor_id = append.actor_id
        generation = read_at if server_tail is not None else self._cache.generation
        tail, from_server = server_tail, server_tail is not None
        if tail is None:
            tail = self._cache.get(actor_id)
            if tail is not None:
                self._stats.cache_hits += 1
            else:
                self._stats.cache_misses += 1
                tail, from_server = await self._read_tail(actor_id, append.subject), True
                self._cache.put(actor_id, tail, generation)
        first_seq = tail.seq  # an attempt of ours that timed out lands after this
        ambiguous = False  # may an attempt of this call have been stored unseen?
        restored = 0  # how often the event's id was found pointing to a purged message
        # Set when the server said an id of ours is taken (by another event, or by this
        # one stored before this call): publishing again would only meet it again.
        taken_by: _Held | None = None
        while True:
            if generation != self._cache.generation:  # the stream was recreated
                generation = self._cache.generation
                tail, from_server = await self._read_tail(actor_id, append.subject), True
                self._cache.put(actor_id, tail, generation)
                first_seq, ambiguous = tail.seq, False  # nothing of ours is in the new one
                continue
            step = decide(append, tail, from_server=from_server)
            if step is Step.READ:
                return None
            if step is Step.CHECK_BATCH:
                step = Step.STORED if await self._batch_at_tail(append) else Step.CONFLICT
            if step is Step.STORED:
                self._cache.put(actor_id, tail, generation)
                # At the tail: an attempt of this call that timed out landed, or a re-save.
                return tail.seq if ambiguous else 0
            if step is Step.CONFLICT:
                if ambiguous and (landed := await self._landed_after(append, first_seq)):
                    self._cache.discard(actor_id)  # the tail's sequence is unknown now
                    return landed
                self._cache.put(actor_id, tail, generation)
                self._stats.conflicts += 1
                raise VersionConflictError(actor_id, append.versions[0], tail.version)
            if taken_by is _Held.OURS:  # stored, but not at the tail: an older event
                self._stats.conflicts += 1
                raise VersionConflictError(actor_id, append.versions[0], tail.version)
            if taken_by is not None:
                raise InvalidEventError(
                    "an event id in this batch was already used by another event "
                    "(within the stream's duplicate window)"
                )
            answer, was_ambiguous = await self._publish(append, tail.seq, restored)
            ambiguous = ambiguous or was_ambiguous
            match classify(answer):
                case Answer.STORED:
                    stored = CacheEntry(append.last_version, answer["seq"], append.last_id)
                    self._cache.put(actor_id, stored, generation)
                    return int(answer["seq"])
                case Answer.DUPLICATE:
                    # Nothing stored now: look at what the id was stored as.
                    held = await self._held_at(append, answer["seq"])
                    if held is _Held.OTHER:
                        raise InvalidEventError(
                            f"event id {append.last_id!r} was already used by another "
                            "event (ids must be unique)"
                        )
                    if held is _Held.OURS:
                        if ambiguous:
                            self._cache.discard(actor_id)  # an attempt of this call landed
                            return int(answer["seq"])
                        # Stored before this call: settled by the tail like any re-save
                        # (the latest event, or a conflict); never published again.
                        taken_by = _Held.OURS
                    elif restored < _MAX_RESTORES:
                        # The id's message is gone (purged, deleted): store the event
                        # again, under the next "restored" msg id, so that the duplicate
                        # window keeps pointing to wherever the id lives (see _msg_id).
                        restored += 1
                    else:
                        raise InvalidEventError(
                            f"event id {append.last_id!r} was stored and purged too often "
                            f"within the duplicate window (more than {_MAX_RESTORES} times)"
                        )
                case Answer.MOVED_ON:
                    # Someone wrote since the tail we knew (or our own timed-out attempt
                    # landed): read the tail from the server and decide again.
                    self._stats.stale_cache_repairs += 1
                    await pause_if_in_flight(answer["error"]["err_code"])
                case Answer.ID_TAKEN:
                    # An atomic batch checks its ids *before* the expected sequence, so
                    # this says nothing of the tail we sent: decide on the server's tail;
                    # only if the batch could be appended there is the id the answer.
                    # (Which id, and whether its event still exists, the server does not
                    # say: a batch reusing the id of a purged event is refused too.)
                    taken_by = _Held.OTHER
                case Answer.REFUSED:
                    if ambiguous and (landed := await self._landed_after(append, first_seq)):
                        self._cache.discard(actor_id)  # an earlier attempt landed; this
                        return landed  # answer is about a later copy
                    raise_for_error(answer, self._stream)
            tail, from_server = await self._read_tail(actor_id, append.subject), True
            self._cache.put(actor_id, tail, generation)

    async def _publish(
        self, append: PendingAppend, expected_seq: int, restored: int = 0
    ) -> tuple[dict[str, Any], bool]:
        """One publish (or atomic batch) of *append*, retried until its outcome is known.

        *restored*: the single event's id was found pointing to a purged message that many
        times (see :func:`_msg_id`)."""
        subject = append.subject
        expected = {"Nats-Expected-Last-Subject-Sequence": str(expected_seq)}
        if len(append.payloads) == 1:
            headers = {**expected, "Nats-Msg-Id": _msg_id(append.ids[0], restored)}
            messages = [(subject, append.payloads[0], headers)]
        else:
            messages = [
                (subject, payload, {**(expected if index == 0 else {}), "Nats-Msg-Id": event_id})
                for index, (event_id, payload) in enumerate(
                    zip(append.ids, append.payloads, strict=True)
                )
            ]
        return await self._api.publish_batch(messages, stream=self._stream)

    async def _held_at(self, append: PendingAppend, seq: int) -> _Held:
        """What the stream holds at *seq*, where the server says *append*'s id was stored."""
        stored = await self._api.get_msg(self._stream, {"seq": seq})
        if stored is None:
            return _Held.NOTHING
        if stored.subject != append.subject:
            return _Held.OTHER
        found = _decode(stored, append.actor_id)
        return _Held.OURS if isinstance(found, Event) and append.is_event(found) else _Held.OTHER

    async def _batch_at_tail(self, append: PendingAppend) -> bool:
        """Whether the actor's history ends with the whole batch *append* (its last event
        being the tail): the actor's events from the batch's first version on are exactly
        the batch, as the in-memory store checks it."""
        expected = list(zip(append.ids, append.versions, strict=True))
        found: list[tuple[str, int]] = []
        events = self.iter_events(append.actor_id, append.versions[0])
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                found.append((event.id, event.version))
                if len(found) > len(expected):
                    return False
        return found == expected

    async def _landed_after(self, append: PendingAppend, after_seq: int) -> int:
        """The stream sequence of *append*'s last event if it is stored after *after_seq*
        (same actor, id and version), else 0: did an attempt of ours that timed out land?"""
        batches = self._decoded(append.actor_id, append.subject, after_seq + 1)
        async with contextlib.aclosing(batches):
            async for items in batches:
                for item in items:
                    if isinstance(item, Event) and append.is_event(item):
                        return item.position or 0
        return 0

    def _check_size(self, payload: bytes, msg_id: str = "") -> None:
        # The server counts headers too; exceeding max_payload would close the connection,
        # and the events stream may set a lower max_msg_size (headers included).
        bound = self._nc.max_payload
        if msg_id and self._settings.max_msg_size is not None:
            bound = min(bound, self._settings.max_msg_size)
        limit = bound - _HEADER_ALLOWANCE - len(msg_id)
        if len(payload) > limit:
            raise EventTooLargeError(len(payload), limit)

    # -- the stream's identity ------------------------------------------------------------

    async def _refresh_identity(self) -> None:
        """Ask the server for the stream's identity; drop the cache if it changed.

        Sequences restart when a stream is deleted and created again, so a cached
        sequence is only meaningful within one incarnation of the stream (identified by
        its creation time). The store hears of a new incarnation through the server's
        stream advisories (see :meth:`_on_advisory`); while the connection was down it
        could not, so after a reconnect the first append asks the server once.
        """
        reconnects = self._nc.stats["reconnects"]
        info = await self._api.call(f"STREAM.INFO.{self._stream}", stream=self._stream)
        self._reconnects_seen = reconnects
        self._settings = StreamSettings.from_info(info)
        self._replicated = self._settings.replicas > 1
        if self._settings.created != self._created:
            self._created = self._settings.created
            self._forget()

    def _on_advisory(self, msg: Msg) -> None:
        # $JS.EVENT.ADVISORY.STREAM.<action>.<stream>: a stream deleted or created under
        # this name is a new incarnation, whose sequences say nothing of the old one's.
        if msg.subject.split(".")[4] in ("CREATED", "DELETED"):
            self._forget()

    def _forget(self) -> None:
        """Forget everything tied to the stream's sequences (the cache, snapshot marks).

        Called on a new incarnation of the stream, and wherever StreamNotFoundError
        passes through the store (appends, tail reads, replays)."""
        self._cache.clear()
        self._snapshots.forget_marks()

    # -- reads ----------------------------------------------------------------------------

    async def get_latest_version(self, actor_id: str) -> int:
        """The actor's latest version, read from the stream leader in one request.

        Reflects every write acknowledged before the call, and refreshes the cache: it
        replaces the entry even if the actor went backwards (an operator purged its
        subject), except that a read overtaken by a concurrent write of this store never
        replaces that write's newer entry, so reads need not wait for the actor's writers.
        Raises StreamNotFoundError if the stream was deleted. (Only if the
        newest message on the subject is malformed, a foreign writer's, does it scan the
        subject for the newest valid version.)
        """
        subject = self.subject_for(actor_id)
        before, generation = self._cache.get(actor_id), self._cache.generation
        try:
            entry = await self._read_tail(actor_id, subject)
        except StreamNotFoundError:
            self._forget()
            raise
        self._cache.put_read(actor_id, entry, before, generation)
        return entry.version

    async def _read_tail(self, actor_id: str, subject: str) -> CacheEntry:
        last = await self._api.last_msg(self._stream, subject)
        if last is None:
            return EMPTY
        event = _decode(last, actor_id)
        if isinstance(event, Event):
            return CacheEntry(event.version, last.seq, event.id)
        # The newest message is malformed (a foreign writer): find the newest valid event
        # with a scan. Rare, and the actor stays writable: appends follow ``last.seq``.
        version, event_id, event_seq = 0, "", 0
        messages = self._replay.iter_subject(
            self._stream,
            subject,
            batch=self._config.replay_batch_size,
            replicated=self._replicated,
            direct_batch=self._direct_batch,
        )
        async with contextlib.aclosing(messages):
            async for msg in messages:
                item = _decode(msg, actor_id)
                if isinstance(item, Event):
                    version, event_id, event_seq = item.version, item.id, msg.seq
        return CacheEntry(version, last.seq, event_id or None, event_seq or None)

    async def iter_events(self, actor_id: str, from_version: int = 0) -> AsyncIterator[Event]:
        """The actor's events with ``version >= from_version``, streamed in batches.

        Memory stays bounded by two batches whatever the history length; malformed
        messages are skipped. With ``from_version > 1`` the replay starts at the first
        message with such a version, found by a binary search over stream sequences
        (about log2(stream length) reads), so a snapshot's tail costs only the tail.
        Leaving the loop early releases the server-side consumer once the iterator is
        closed (``contextlib.aclosing``, or garbage collection).
        """
        batches = await self._messages_from(actor_id, from_version)
        async with contextlib.aclosing(batches):
            async for items in batches:
                for item in items:
                    if isinstance(item, Event) and item.version >= from_version:
                        yield item

    async def iter_events_with_errors(
        self, actor_id: str, from_version: int = 0
    ) -> AsyncIterator[Event | ReplayError]:
        """:meth:`iter_events`, plus a ReplayError for each malformed message read, in
        stream order: :meth:`get_events_with_errors` streamed, in bounded memory. With
        ``from_version > 1`` the replay may start past older messages, whose errors are
        then not reported."""
        batches = await self._messages_from(actor_id, from_version)
        async with contextlib.aclosing(batches):
            async for items in batches:
                for item in items:
                    if isinstance(item, ReplayError) or item.version >= from_version:
                        yield item

    async def get_events(self, actor_id: str, from_version: int = 0) -> list[Event]:
        """:meth:`iter_events` as a list (the whole history in memory)."""
        events: list[Event] = []
        batches = await self._messages_from(actor_id, from_version)
        async with contextlib.aclosing(batches):
            async for items in batches:  # a list at a time: no generator step per event
                events += [
                    item
                    for item in items
                    if isinstance(item, Event) and item.version >= from_version
                ]
        return events

    async def get_events_with_errors(self, actor_id: str, from_version: int = 0) -> ReplayResult:
        """The events with ``version >= from_version`` and a ReplayError per malformed
        message read (:meth:`iter_events_with_errors` collected)."""
        result = ReplayResult()
        async for item in self.iter_events_with_errors(actor_id, from_version):
            result.add(item)
        return result

    async def _messages_from(
        self, actor_id: str, from_version: int
    ) -> AsyncGenerator[list[Event | ReplayError], None]:
        """The decoded messages of the actor's subject from where *from_version* starts,
        in the lists the replay hands over (see :meth:`Replayer.iter_batches`)."""
        _rules.check_read(actor_id, from_version)
        subject = self.subject_for(actor_id)
        mark = self._snapshots.mark(actor_id)
        if mark is not None and from_version == mark.version + 1:
            # A snapshot's tail: read from the snapshot's own event, which checks the mark
            # in the same request (instead of the seek's one read before the replay).
            return self._after_mark(actor_id, subject, from_version, mark)
        start = await self._seek(actor_id, subject, from_version)
        return self._decoded(
            actor_id, subject, start, self._direct_batch_for(actor_id, start, from_version)
        )

    def _direct_batch_for(self, actor_id: str, start: int, from_version: int) -> int:
        """The direct get a replay from *start* begins with: none if the version cache
        knows more events are to be read than one brings, so that the consumer starts
        at once. (The cache only picks the way to read; what is read is the server's.)"""
        direct_batch = self._direct_batch
        cached = self._cache.get(actor_id)
        # Events to read: from the start (at from_version, unless the seek chose the
        # beginning as cheaper), as far as the cache knows.
        first = max(from_version, 1) if start > 1 else 1
        if cached is not None and cached.version - first >= direct_batch:
            return 0
        return direct_batch

    async def _after_mark(
        self, actor_id: str, subject: str, from_version: int, mark: Mark
    ) -> AsyncGenerator[list[Event | ReplayError], None]:
        """The replay from a snapshot's remembered position (*mark*: its event's version
        and stream sequence), checked by its first message: the snapshot's event itself,
        at exactly that sequence. If it is not (the stream was recreated, the subject
        purged), the mark is forgotten and the replay starts where the seek says."""
        batches = self._decoded(
            actor_id, subject, mark.seq, self._direct_batch_for(actor_id, mark.seq, mark.version)
        )
        checked = False
        async with contextlib.aclosing(batches):
            async for items in batches:
                if not checked:
                    head = items[0]
                    if not (
                        isinstance(head, Event)
                        and head.position == mark.seq
                        and head.version == mark.version
                    ):
                        break  # a stale mark
                    checked = True
                    items = items[1:]
                if items:
                    yield items
        if checked:
            return
        self._snapshots.forget_mark(actor_id)
        start = await self._seek(actor_id, subject, from_version)
        rest = self._decoded(
            actor_id, subject, start, self._direct_batch_for(actor_id, start, from_version)
        )
        async with contextlib.aclosing(rest):
            async for items in rest:
                yield items

    async def _seek(
        self, actor_id: str, subject: str, from_version: int, min_skip: int = SEEK_MIN_SKIP
    ) -> int:
        """The stream sequence to replay from so as to see every ``version >= from_version``:
        :func:`~aether.store._seek.seek` (a snapshot's remembered position, else a binary
        search over stream sequences), driven with leader message gets."""
        plan = seek(from_version, self._snapshots.mark(actor_id), min_skip=min_skip)
        answer: Found | None = None
        while True:
            try:
                read = plan.send(answer)
            except StopIteration as done:
                start: Start = done.value
                break
            match read:
                case ReadAt(seq):
                    msg = await self._api.get_msg(self._stream, {"seq": seq})
                    if msg is not None and msg.subject != subject:
                        msg = None
                case ReadNext(seq):
                    body = {"seq": seq, "next_by_subj": subject}
                    msg = await self._api.get_msg(self._stream, body)
                case ReadLast():
                    msg = await self._api.last_msg(self._stream, subject)
            answer = None if msg is None else _found(msg, actor_id)
        if start.mark_is_stale:
            self._snapshots.forget_mark(actor_id)
        return start.seq

    @property
    def _direct_batch(self) -> int:
        """Messages per batched direct get of a replay (0: none; see JetStreamConfig)."""
        config = self._config
        return config.direct_batch_size if config.direct_get and self._settings.allow_direct else 0

    async def _decoded(
        self, actor_id: str, subject: str, start_seq: int = 1, direct_batch: int | None = None
    ) -> AsyncGenerator[list[Event | ReplayError], None]:
        """Every message on the actor's subject from *start_seq*, decoded, a list at a
        time; the replay starts with a direct get of *direct_batch* (default: the
        configured one; 0: no direct get)."""
        batches = self._replay.iter_batches(
            self._stream,
            subject,
            start_seq=start_seq,
            batch=self._config.replay_batch_size,
            replicated=self._replicated,
            direct_batch=self._direct_batch if direct_batch is None else direct_batch,
        )
        try:
            async with contextlib.aclosing(batches):
                async for messages in batches:
                    yield [_decode(msg, actor_id) for msg in messages]
        except StreamNotFoundError:
            self._forget()
            raise

    # -- the whole store: subscriptions ---------------------------------------------------

    def subscribe(
        self,
        *,
        after: int = 0,
        filter: SubscriptionFilter | None = None,
        on_malformed: Callable[[ReplayError], None] | None = None,
    ) -> Subscription:
        """The events of every actor with ``position > after``, in position order: first
        those already stored (catch-up), then new ones as they are appended (live), with
        no gap and no duplicate at the boundary, until closed. At-least-once across
        restarts: resume with ``after=<last position handled>``.

        Returns at once (nothing is asked of the server until the first event is
        awaited); the subscription is an async iterator and an async context manager.
        *filter* keeps the events it matches (:class:`~aether.bus.SubscriptionFilter`).
        Malformed messages are skipped and counted, never stop it; *on_malformed*, if
        given, is called with a ReplayError for each (instead of a log line), from the
        task iterating the subscription. See :class:`~aether.store.Subscription`.
        """
        return subscribe_jetstream(self, after, filter, on_malformed)

    def durable_subscription(
        self,
        name: str,
        *,
        filter: SubscriptionFilter | None = None,
        max_deliver: int = 5,
        ack_wait: timedelta = timedelta(seconds=30),
    ) -> DurableSubscription:
        """A server-side durable consumer called *name* over every actor's events: its
        position survives restarts of the subscriber and of the server, and processes
        using one name share the events. Yields :class:`~aether.store.Delivery` objects
        to ``ack``, ``nack`` or ``term``; an event not acked within *ack_wait* is
        delivered again, and after *max_deliver* attempts (or ``term``) it is parked:
        logged, counted and listed by :meth:`parked`, never dropped silently."""
        return durable_subscription(
            self, name, filter=filter, max_deliver=max_deliver, ack_wait=ack_wait
        )

    async def parked(self, name: str) -> list[ParkedEvent]:
        """The events durable subscription *name* gave up on, oldest first."""
        return await parked(self, name)

    async def unpark(self, name: str, position: int) -> bool:
        """Remove durable subscription *name*'s parked record of *position* (after an
        operator handled that event again). Returns whether there was one."""
        return await unpark(self, name, position)

    async def durable_subscriptions(self) -> list[DurableSubscriptionInfo]:
        """Every durable subscription on this store's stream (consumers aether made), by
        name, with its pending, ack-pending, redelivered and parked counts."""
        return await durable_subscriptions(self)

    # -- snapshots ------------------------------------------------------------------------

    async def save_snapshot(self, snapshot: ActorSnapshot) -> None:
        """Store *snapshot* unless the stored one is as new or newer.

        A compare-and-set on the snapshot subject's sequence, so concurrent writers in
        any process can never replace a newer snapshot with an older one. The snapshot
        also records the stream sequence of its version's event (free when it is the
        latest one this store wrote or read; otherwise found once here), so that loading
        the events after it never has to search.
        """
        encoded = _rules.prepare_snapshot(snapshot)  # read once: the caller may change it
        self._check_size(encoded.payload)
        await self._snapshots.save(encoded, self._event_seq_of)

    async def _event_seq_of(self, actor_id: str, version: int) -> int | None:
        """The stream sequence of the actor's event *version*: from the cache when it is
        the latest (free), else found with the replay's seek; None if not found."""
        entry = self._cache.get(actor_id)
        if entry is not None and entry.version == version and entry.event_id is not None:
            return entry.last_event_seq
        subject = self.subject_for(actor_id)
        # Always search (min_skip=0), also where a replay would rather read past a few
        # older events: the position found here saves every later load after the
        # snapshot from reading them, for one search now.
        start = await self._seek(actor_id, subject, version, min_skip=0)
        found = await self._api.get_msg(self._stream, {"seq": start, "next_by_subj": subject})
        event = None if found is None else _decode(found, actor_id)
        if found is not None and isinstance(event, Event) and event.version == version:
            return found.seq
        return None

    async def get_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        """The newest snapshot, or None (also if the stored one is malformed)."""
        check_actor_id(actor_id)
        return await self._snapshots.latest(actor_id)


def _decode(msg: StoredMsg, actor_id: str) -> Event | ReplayError:
    # The store's decoding rules (_rules), plus: the event is the subject's actor's. Its
    # position is the message's stream sequence.
    try:
        event = _rules.decode_event(msg.data)
    except ValueError as exc:
        return ReplayError(msg.seq, msg.data, exc)
    if event.actor_id != actor_id:
        return ReplayError(
            msg.seq,
            msg.data,
            InvalidEventError(f"message on {actor_id!r}'s subject is for {event.actor_id!r}"),
        )
    event.position = msg.seq
    return event


def _found(msg: StoredMsg, actor_id: str) -> Found:
    """What the seek needs of a message: its sequence and its event's version, if any."""
    event = _decode(msg, actor_id)
    return Found(msg.seq, event.version if isinstance(event, Event) else None)


_ADVISORY_PREFIX = "$JS.EVENT.ADVISORY.STREAM"
_MAX_RESTORES = 100  # re-stores of one purged event id within the duplicate window


class _Held(Enum):
    """What the stream holds where the server says an event id was stored."""

    OURS = "ours"  # the very event being appended (actor, id and version)
    OTHER = "other"  # another event: the id is taken
    NOTHING = "nothing"  # the message is gone (purged or deleted): the id is free again


def _msg_id(event_id: str, restored: int) -> str:
    """The Nats-Msg-Id of an event: its id, or after it was found purged *restored* times
    within the duplicate window, a derived id.

    The duplicate window maps a msg id to the sequence it was stored at, and keeps that
    mapping when the message is purged. Storing a purged event again under its own id is
    impossible (the server answers "duplicate"), and storing it without a msg id would
    leave no trace of where the id lives now: a later event reusing the id would find
    only the purged sequence and be stored too. So the n-th re-store uses the n-th
    derived id; whoever meets a purged sequence tries the next one, and finds the event
    stored there (the same event: done; another one: the id is taken).
    """
    return event_id if restored == 0 else f"{event_id}.aether-restored.{restored}"


def _advisory_callback(
    store: weakref.ref[JetStreamEventStore],
) -> Callable[[Msg], Awaitable[None]]:
    async def on_advisory(msg: Msg) -> None:
        target = store()
        if target is not None:
            target._on_advisory(msg)

    return on_advisory
