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

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Any, Literal

from nats.aio.client import Client

from aether.errors import (
    AetherError,
    EventTooLargeError,
    InvalidEventError,
    JetStreamError,
    StreamNotFoundError,
    UnsupportedServerError,
    VersionConflictError,
)
from aether.event import ActorSnapshot, Event, check_actor_id
from aether.replay import ReplayError, ReplayResult
from aether.store import _rules
from aether.store._cache import EMPTY, CacheEntry, KeyedLocks, VersionCache
from aether.store._jsapi import (
    BATCH_DUPLICATE_MSG_ID,
    BATCH_INCOMPLETE,
    NS_PER_SECOND,
    STREAM_CREATE_FAILED,
    STREAM_NAME_IN_USE,
    STREAM_NOT_FOUND,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_IN_FLIGHT,
    JsApi,
    StoredMsg,
    TransientError,
    decode_answer,
    raise_for_error,
)
from aether.store._subjects import encode_actor_id, real_stream_name, stream_metadata

# Bytes of headers an append adds besides the event id (batch headers included).
_HEADER_ALLOWANCE = 256
# How long to let an in-flight write to the same subject commit (clustered streams).
_IN_FLIGHT_PAUSE = 0.005
# nats-server's limit on messages per atomic batch.
MAX_BATCH_SIZE = 1000
_ATOMIC_SINCE = (2, 12)


@dataclass(frozen=True)
class JetStreamConfig:
    """How the store lays out and talks to its stream. Zero/empty values mean the default.

    ``request_timeout`` bounds one request; ``retry_deadline`` bounds how long a request
    whose outcome is unknown (timeout, no responders, reconnect) is re-sent before
    :class:`~aether.errors.StoreUnavailableError`.
    """

    namespace: str = ""
    stream_retention: timedelta = timedelta(days=365)
    replica_count: int = 1
    storage: Literal["file", "memory"] = "file"
    version_cache_size: int = 100_000
    request_timeout: timedelta = timedelta(seconds=2)
    retry_deadline: timedelta = timedelta(seconds=30)
    replay_batch_size: int = 500

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value:  # zero, empty string, timedelta(0) or None: the default
                object.__setattr__(self, f.name, f.default)
            elif (isinstance(value, int) and value < 0) or (
                isinstance(value, timedelta) and value < timedelta(0)
            ):
                raise ValueError(f"JetStreamConfig.{f.name} must not be negative")
        if self.storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', got {self.storage!r}")
        if not 1 <= self.replay_batch_size <= 10_000:
            raise ValueError("replay_batch_size must be between 1 and 10000")


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


class JetStreamEventStore:
    """A :class:`~aether.store.SnapshotStore` on NATS JetStream. Create it with :meth:`open`."""

    def __init__(
        self,
        nc: Client,
        api: JsApi,
        stream_name: str,
        config: JetStreamConfig,
        atomic: bool,
        replicated: bool = False,
    ) -> None:
        self._nc = nc
        self._api = api
        self._config = config
        self._stream = stream_name
        self._snapshot_stream = f"{stream_name}_snapshots"
        self._event_prefix = f"{stream_name}.events."
        self._snapshot_prefix = f"{stream_name}.snapshots."
        self._atomic = atomic
        self._replicated = replicated  # the stream as it is, not as the config asked
        self._cache = VersionCache(config.version_cache_size)
        # actor -> (snapshot version, stream sequence of that version's event), learnt from
        # the snapshots read: where a replay after a snapshot starts (see _seek).
        self._snapshot_marks = VersionCache(min(config.version_cache_size, _MAX_SNAPSHOT_MARKS))
        self._locks = KeyedLocks()
        self._stats = StoreStats()

    @classmethod
    async def open(
        cls, nc: Client, stream_name: str = "events", config: JetStreamConfig | None = None
    ) -> JetStreamEventStore:
        """Connect a store to *nc*, creating its streams if they do not exist.

        *nc* is the caller's connected client: its auth, TLS and reconnect settings are used
        as they are. Several stores (in any number of processes) may open the same stream.
        """
        config = config or JetStreamConfig()
        real_name = real_stream_name(config.namespace, stream_name)
        api = _api_for(nc, config)
        version = nc.connected_server_version
        atomic = (version.major, version.minor) >= _ATOMIC_SINCE
        common = {
            "retention": "limits",
            "discard": "old",
            "storage": config.storage,
            "num_replicas": config.replica_count,
        }
        events = await _ensure_stream(
            api,
            {
                "name": real_name,
                "subjects": [f"{real_name}.events.>"],
                "max_age": int(config.stream_retention.total_seconds() * NS_PER_SECOND),
                "duplicate_window": 120 * NS_PER_SECOND,
                **({"allow_atomic": True} if atomic else {}),
                "metadata": stream_metadata("events", config.namespace, stream_name),
                **common,
            },
        )
        await _ensure_stream(
            api,
            {
                "name": f"{real_name}_snapshots",
                "subjects": [f"{real_name}.snapshots.>"],
                "max_msgs_per_subject": 1,
                "metadata": stream_metadata("snapshots", config.namespace, stream_name),
                **common,
            },
        )
        replicated = events.get("num_replicas", 1) > 1
        return cls(nc, api, real_name, config, atomic, replicated)

    @classmethod
    async def attach(
        cls, nc: Client, stream_name: str = "events", config: JetStreamConfig | None = None
    ) -> JetStreamEventStore:
        """A store on an **existing** stream, creating and changing nothing.

        For tools and read-only users (``aether events``, dashboards): a typo in a stream
        name must not create an empty stream, and an operator's settings are not
        touched. Only the config's namespace and client-side settings (timeouts, cache
        size) apply. Raises StreamNotFoundError if the stream does not exist, and
        AetherError if it does not hold aether's event subjects.
        """
        config = config or JetStreamConfig()
        real_name = real_stream_name(config.namespace, stream_name)
        api = _api_for(nc, config)
        try:
            info = await api.call(f"STREAM.INFO.{real_name}")
        except JetStreamError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                raise StreamNotFoundError(real_name) from None
            raise
        existing: dict[str, Any] = info["config"]
        _check_subjects(existing, f"{real_name}.events.>")
        replicated = existing.get("num_replicas", 1) > 1
        return cls(nc, api, real_name, config, bool(existing.get("allow_atomic")), replicated)

    @property
    def stream_name(self) -> str:
        """The real JetStream stream holding the events (namespace applied)."""
        return self._stream

    @property
    def config(self) -> JetStreamConfig:
        """The configuration the store was opened with (defaults filled in)."""
        return self._config

    @property
    def stats(self) -> StoreStats:
        """A copy of the store's counters."""
        return replace(self._stats, retries=self._api.retries)

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
        """Append *event*. One round trip when the actor's cache entry is warm and current.

        Raises VersionConflictError (nothing written) if ``event.version`` is not greater
        than the actor's latest version, as checked by the server across all writers.
        Saving an event that is already the actor's latest (same id) returns normally.
        Raises InvalidEventError / EventTooLargeError before any I/O for bad input, and
        StoreUnavailableError if the outcome stayed unknown past ``retry_deadline``.
        """
        payload = _rules.encode_event(event)
        self._check_size(payload, event.id)
        await self._save(event.actor_id, [event], [payload], None)

    async def save_events(
        self, events: Sequence[Event], *, expected_version: int | None = None
    ) -> None:
        """Append several events of one actor atomically (all or none).

        With ``expected_version`` the actor's latest version must equal it. Needs
        nats-server >= 2.12 (atomic batch publish) for more than one event.
        """
        payloads = _rules.encode_batch(events)
        expected = _rules.check_expected_version(expected_version)
        if len(events) > MAX_BATCH_SIZE:
            raise InvalidEventError(f"save_events takes at most {MAX_BATCH_SIZE} events")
        if len(events) > 1 and not self._atomic:
            version = self._nc.connected_server_version
            if (version.major, version.minor) >= _ATOMIC_SINCE:
                raise UnsupportedServerError(
                    f"stream {self._stream!r} does not allow atomic batch publish "
                    "(allow_atomic); JetStreamEventStore.open enables it"
                )
            raise UnsupportedServerError(
                "save_events with several events needs nats-server >= 2.12 (atomic batch "
                f"publish); connected to {version}"
            )
        for event, payload in zip(events, payloads, strict=True):
            self._check_size(payload, event.id)
        await self._save(events[0].actor_id, events, payloads, expected)

    async def _save(
        self,
        actor_id: str,
        events: Sequence[Event],
        payloads: list[bytes],
        expected_version: int | None,
        known: CacheEntry | None = None,
    ) -> None:
        """Append under the actor's lock, starting from *known* (just read) or the cache."""
        subject = self.subject_for(actor_id)
        await self._locks.acquire(actor_id)
        try:
            entry, fresh = known, True
            if entry is None:
                entry = self._cache.get(actor_id)
                fresh = entry is None
                if entry is None:
                    self._stats.cache_misses += 1
                    entry = await self._read_tail(actor_id, subject)
                else:
                    self._stats.cache_hits += 1
            try:
                await self._append(
                    actor_id, subject, events, payloads, entry, fresh, expected_version
                )
                return
            except _CachedConflict:
                pass
        finally:
            self._locks.release(actor_id)
        # The cached entry says the append conflicts. Read the true current version
        # for the error without holding up the actor's other writers: on a hot actor they
        # would otherwise queue behind one read per losing writer.
        entry = await self._read_tail(actor_id, subject)
        self._cache.put_newer(actor_id, entry)
        last = events[-1]
        if (entry.event_id, entry.version) != (last.id, last.version):
            try:
                _rules.check_batch_versions(events, entry.version, expected_version)
            except VersionConflictError:
                self._stats.conflicts += 1
                raise
        # Not a conflict after all (the cached entry was outdated, e.g. the subject was
        # purged): append under the lock, starting from the entry just read.
        await self._save(actor_id, events, payloads, expected_version, entry)

    async def _append(
        self,
        actor_id: str,
        subject: str,
        events: Sequence[Event],
        payloads: list[bytes],
        entry: CacheEntry,
        fresh: bool,
        expected_version: int | None,
    ) -> None:
        """The optimistic-concurrency loop. The caller holds the actor's lock.

        *fresh* says whether *entry* was just read from the server rather than the cache.
        """
        last = events[-1]
        first_known_seq = entry.seq
        ambiguous = False  # did an attempt time out, so that it may have landed?
        while True:
            if entry.event_id == last.id and entry.version == last.version:
                self._cache.put_newer(actor_id, entry)
                return  # already stored: by our own earlier attempt or a caller's retry
            try:
                _rules.check_batch_versions(events, entry.version, expected_version)
            except VersionConflictError:
                if not fresh:
                    # Certain (versions only grow); the caller reads the true current
                    # version for the error after releasing the lock.
                    raise _CachedConflict from None
                if ambiguous and await self._find_landed(subject, last, first_known_seq):
                    self._cache.discard(actor_id)
                    return
                self._cache.put_newer(actor_id, entry)
                self._stats.conflicts += 1
                raise
            answer, was_ambiguous = await self._publish(subject, events, payloads, entry.seq)
            ambiguous = ambiguous or was_ambiguous
            error = answer.get("error")
            if error is None:
                if answer.get("duplicate"):
                    # The server had this id already; make sure it is *this* event.
                    await self._check_duplicate(subject, last, answer["seq"])
                    self._cache.discard(actor_id)  # the tail's sequence is unknown now
                else:
                    self._cache.put(actor_id, CacheEntry(last.version, answer["seq"], last.id))
                return
            code = error.get("err_code")
            if code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
                # Someone wrote since our cache entry (or our own timed-out attempt landed):
                # repair the entry from the server and decide again.
                self._stats.stale_cache_repairs += 1
                await _pause_if_in_flight(code)
                entry, fresh = await self._read_tail(actor_id, subject), True
                continue
            if code == BATCH_DUPLICATE_MSG_ID:
                if await self._landed(actor_id, subject, last, first_known_seq):
                    return
                raise InvalidEventError("an event id in this batch was already used")
            if ambiguous and await self._landed(actor_id, subject, last, first_known_seq):
                return  # an earlier attempt landed; this answer is about a later copy
            raise_for_error(answer)

    async def _publish(
        self, subject: str, events: Sequence[Event], payloads: list[bytes], expected_seq: int
    ) -> tuple[dict[str, Any], bool]:
        if len(events) == 1:
            headers = {
                "Nats-Msg-Id": events[0].id,
                "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
            }
            return await self._api.request(subject, payloads[0], headers)

        # Non-final batch messages go without a reply subject (one round trip per batch),
        # so when the server refuses one, the commit only says "batch incomplete" (nothing
        # stored). Often that is a 429 (too many batches in flight), worth another try;
        # but it may be permanent (a stream limit). So the next attempt asks for a reply
        # to every message, and the real answer decides: retried or raised.
        diagnose = False

        async def attempt() -> dict[str, Any]:
            nonlocal diagnose
            # A fresh batch id per attempt: a retry re-sends the whole batch.
            batch_id = uuid.uuid4().hex
            last_index = len(payloads) - 1
            for index, (event, payload) in enumerate(zip(events, payloads, strict=True)):
                headers = {
                    "Nats-Batch-Id": batch_id,
                    "Nats-Batch-Sequence": str(index + 1),
                    "Nats-Msg-Id": event.id,
                }
                if index == 0:
                    headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_seq)
                if index < last_index and not diagnose:
                    await self._nc.publish(subject, payload, headers=headers)
                    continue
                if index == last_index:
                    headers["Nats-Batch-Commit"] = "1"
                msg = await self._nc.request(
                    subject, payload, timeout=self._api.request_timeout, headers=headers
                )
                if index < last_index and not msg.data:
                    continue  # accepted: an empty reply
                answer = decode_answer(msg.data)  # "not now" answers raise: tried again
                error = answer.get("error")
                if error is not None and error.get("err_code") == BATCH_INCOMPLETE:
                    diagnose = True
                    raise TransientError(ambiguous=False)
                return answer
            raise AssertionError("unreachable: a batch has at least one event")

        return await self._api.until_known(attempt)

    async def _check_duplicate(self, subject: str, event: Event, seq: int) -> None:
        stored = await self._api.get_msg(self._stream, {"seq": seq})
        if stored is not None and stored.subject == subject:
            found = _decode(stored, event.actor_id)
            if isinstance(found, Event) and (found.id, found.version) == (event.id, event.version):
                return
        raise InvalidEventError(
            f"event id {event.id!r} was already used by another event (ids must be unique)"
        )

    async def _landed(self, actor_id: str, subject: str, event: Event, after_seq: int) -> bool:
        """Whether *event* is stored (at the tail, or after *after_seq*); drops the cache
        entry if so, since the tail's sequence is then unknown."""
        tail = await self._read_tail(actor_id, subject)
        if tail.event_id == event.id or await self._find_landed(subject, event, after_seq):
            self._cache.discard(actor_id)
            return True
        return False

    async def _find_landed(self, subject: str, event: Event, after_seq: int) -> bool:
        """Whether *event* is stored after *after_seq*: did a timed-out attempt land?"""
        items = self._decoded(event.actor_id, subject, after_seq + 1)
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, Event) and item.id == event.id:
                    return True
        return False

    def _check_size(self, payload: bytes, msg_id: str = "") -> None:
        # The server counts headers too; exceeding max_payload would close the connection.
        limit = self._nc.max_payload - _HEADER_ALLOWANCE - len(msg_id)
        if len(payload) > limit:
            raise EventTooLargeError(len(payload), limit)

    # -- reads ----------------------------------------------------------------------------

    async def get_latest_version(self, actor_id: str) -> int:
        """The actor's latest version, read from the stream leader in one request.

        Reflects every write acknowledged before the call, and refreshes the cache; a
        read overtaken by a write never replaces the newer entry (entries are ordered by
        stream sequence), so reads need not wait for the actor's writers. (Only if the
        newest message on the subject is malformed, a foreign writer's, does it scan the
        subject for the newest valid version.)
        """
        subject = self.subject_for(actor_id)
        entry = await self._read_tail(actor_id, subject)
        self._cache.put_newer(actor_id, entry)
        return entry.version

    async def _read_tail(self, actor_id: str, subject: str) -> CacheEntry:
        last = await self._api.last_msg(self._stream, subject)
        if last is None:
            return EMPTY
        event = _decode(last, actor_id)
        if isinstance(event, Event):
            return CacheEntry(event.version, last.seq, event.id)
        # The newest message is malformed (a foreign writer): find the newest valid version
        # with a scan. Rare, and the actor stays writable: appends follow ``last.seq``.
        version = 0
        items = self._decoded(actor_id, subject)
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, Event):
                    version = max(version, item.version)
        return CacheEntry(version, last.seq, None)

    async def iter_events(self, actor_id: str, from_version: int = 0) -> AsyncIterator[Event]:
        """The actor's events with ``version >= from_version``, streamed in batches.

        Memory stays bounded by two batches whatever the history length; malformed
        messages are skipped. With ``from_version > 1`` the replay starts at the first
        message with such a version, found by a binary search over stream sequences
        (about log2(stream length) reads), so a snapshot's tail costs only the tail.
        Leaving the loop early releases the server-side consumer once the iterator is
        closed (``contextlib.aclosing``, or garbage collection).
        """
        _rules.check_read(actor_id, from_version)
        subject = self.subject_for(actor_id)
        start = await self._seek(actor_id, subject, from_version)
        items = self._decoded(actor_id, subject, start)
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, Event) and item.version >= from_version:
                    yield item

    async def get_events(self, actor_id: str, from_version: int = 0) -> list[Event]:
        """:meth:`iter_events` as a list (the whole history in memory)."""
        return [event async for event in self.iter_events(actor_id, from_version)]

    async def get_events_with_errors(self, actor_id: str, from_version: int = 0) -> ReplayResult:
        """The events with ``version >= from_version`` and a ReplayError per malformed
        message read. With ``from_version > 1`` the replay may start past older messages
        (see :meth:`iter_events`), whose errors are then not reported."""
        _rules.check_read(actor_id, from_version)
        result = ReplayResult()
        subject = self.subject_for(actor_id)
        start = await self._seek(actor_id, subject, from_version)
        async for item in self._decoded(actor_id, subject, start):
            if isinstance(item, ReplayError):
                result.errors.append(item)
            elif item.version >= from_version:
                result.events.append(item)
        return result

    async def _seek(self, actor_id: str, subject: str, from_version: int) -> int:
        """The stream sequence to replay from so as to see every ``version >= from_version``.

        Why: replaying from a snapshot should cost the tail, not the whole history. A
        snapshot read with :meth:`get_latest_snapshot` may carry the stream sequence of
        its version (checked with one read before use). Otherwise, when more than
        ``_SEEK_MIN_SKIP`` older events would be read past, an actor's versions
        increasing along its subject let a binary search over stream sequences with
        leader message gets (``next_by_subj``) find the first message with a version >=
        *from_version* in about log2(stream length) requests. Where the order cannot be
        trusted (a malformed message met on the way), replay starts at the beginning:
        the result is the same, only slower.
        """
        if from_version <= 1:
            return 1
        low = 1  # the answer lies in [low, high]; high's message qualifies
        mark = self._snapshot_marks.get(actor_id)
        if mark is not None and mark.version < from_version:
            # A snapshot read earlier says where its version sits; check it (the stream may
            # have been recreated since), then start after it or search from there.
            at = await self._api.get_msg(self._stream, {"seq": mark.seq})
            found = None if at is None or at.subject != subject else _decode(at, actor_id)
            if isinstance(found, Event) and found.version == mark.version:
                low = mark.seq + 1
                if from_version == mark.version + 1:
                    return low
            else:
                self._snapshot_marks.discard(actor_id)
        skipped = from_version - 1 - (mark.version if low > 1 and mark is not None else 0)
        if skipped <= _SEEK_MIN_SKIP:
            # At most that many older events to read past: cheaper than ~log2(stream
            # length) searching reads, which a busy stream makes slow.
            return low
        last = await self._api.last_msg(self._stream, subject)
        tail = None if last is None else _decode(last, actor_id)
        if last is None or not isinstance(tail, Event):
            return 1
        if tail.version < from_version:
            return last.seq + 1  # nothing to read
        high = last.seq
        while low < high:
            middle = (low + high) // 2
            probe = await self._api.get_msg(self._stream, {"seq": middle, "next_by_subj": subject})
            event = None if probe is None else _decode(probe, actor_id)
            if probe is None or not isinstance(event, Event):
                return 1
            if event.version >= from_version:
                high = middle
            else:
                low = probe.seq + 1  # every message up to the probe is too old
        return low

    async def _decoded(
        self, actor_id: str, subject: str, start_seq: int = 1
    ) -> AsyncGenerator[Event | ReplayError, None]:
        """Every message on the actor's subject from *start_seq*, decoded."""
        messages = self._api.iter_subject(
            self._stream,
            subject,
            start_seq=start_seq,
            batch=self._config.replay_batch_size,
            replicated=self._replicated,
        )
        async with contextlib.aclosing(messages):
            async for msg in messages:
                yield _decode(msg, actor_id)

    # -- snapshots ------------------------------------------------------------------------

    async def save_snapshot(self, snapshot: ActorSnapshot) -> None:
        """Store *snapshot* unless the stored one is as new or newer.

        A compare-and-set on the snapshot subject's sequence, so concurrent writers in
        any process can never replace a newer snapshot with an older one. The snapshot
        also records the stream sequence of its version's event (free when it is the
        latest one this store wrote or read; otherwise found once here), so that loading
        the events after it never has to search.
        """
        payload = _rules.encode_snapshot(snapshot)
        self._check_size(payload)
        subject = self._snapshot_prefix + encode_actor_id(snapshot.actor_id)
        mark: dict[str, str] | None = None
        while True:
            current = await self._api.last_msg(self._snapshot_stream, subject)
            if current is not None:
                stored = _decode_snapshot(current)
                if stored is not None and stored.version >= snapshot.version:
                    return
            if mark is None:
                # Where the snapshot's version sits in the event stream, so that every
                # replay of the events after it can start there instead of searching (a
                # hint: checked before use). Found once, and only if the snapshot is new.
                seq = await self._event_seq_of(snapshot.actor_id, snapshot.version)
                mark = {} if seq is None else {_EVENT_SEQ_HEADER: str(seq)}
            headers = {
                "Nats-Expected-Last-Subject-Sequence": str(current.seq if current else 0),
                **mark,
            }
            answer, _ = await self._api.request(subject, payload, headers)
            error = answer.get("error")
            if error is None:
                return
            code = error.get("err_code")
            if code not in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
                raise_for_error(answer)
            # Another writer stored a snapshot meanwhile: compare against it.
            await _pause_if_in_flight(code)

    async def _event_seq_of(self, actor_id: str, version: int) -> int | None:
        """The stream sequence of the actor's event *version*: from the cache when it is
        the latest (free), else found with the replay's seek; None if not found."""
        entry = self._cache.get(actor_id)
        if entry is not None and entry.version == version and entry.event_id is not None:
            return entry.seq
        subject = self.subject_for(actor_id)
        start = await self._seek(actor_id, subject, version)
        found = await self._api.get_msg(self._stream, {"seq": start, "next_by_subj": subject})
        event = None if found is None else _decode(found, actor_id)
        if found is not None and isinstance(event, Event) and event.version == version:
            return found.seq
        return None

    async def get_latest_snapshot(self, actor_id: str) -> ActorSnapshot | None:
        """The newest snapshot, or None (also if the stored one is malformed)."""
        check_actor_id(actor_id)
        subject = self._snapshot_prefix + encode_actor_id(actor_id)
        current = await self._api.last_msg(self._snapshot_stream, subject)
        snapshot = None if current is None else _decode_snapshot(current)
        seq = None if current is None else current.header(_EVENT_SEQ_HEADER)
        if snapshot is not None and seq is not None and seq.isdigit():
            self._snapshot_marks.put(actor_id, CacheEntry(snapshot.version, int(seq), None))
        return snapshot


async def _pause_if_in_flight(err_code: int) -> None:
    # A clustered leader refuses a write while another to the same subject is in flight;
    # give that write a moment to commit before reading the tail again.
    if err_code == WRONG_LAST_SEQUENCE_IN_FLIGHT:
        await asyncio.sleep(_IN_FLIGHT_PAUSE)


def _decode(msg: StoredMsg, actor_id: str) -> Event | ReplayError:
    try:
        event = Event.from_json(msg.data)
    except ValueError as exc:
        return ReplayError(msg.seq, msg.data, exc)
    if event.actor_id != actor_id:
        return ReplayError(
            msg.seq,
            msg.data,
            InvalidEventError(f"message on {actor_id!r}'s subject is for {event.actor_id!r}"),
        )
    return event


def _decode_snapshot(msg: StoredMsg) -> ActorSnapshot | None:
    try:
        return ActorSnapshot.from_json(msg.data)
    except ValueError:
        return None


_CREATE_ATTEMPTS = 6
_EVENT_SEQ_HEADER = "Aether-Event-Seq"
_MAX_SNAPSHOT_MARKS = 10_000
_SEEK_MIN_SKIP = 1000  # events; reading them costs about as much as a search


class _CachedConflict(Exception):
    """The cached entry already proves the append conflicts (see ``_save``)."""


def _api_for(nc: Client, config: JetStreamConfig) -> JsApi:
    return JsApi(
        nc,
        request_timeout=config.request_timeout.total_seconds(),
        retry_deadline=config.retry_deadline.total_seconds(),
    )


def _check_subjects(stream_config: dict[str, Any], subjects: str) -> None:
    if subjects not in stream_config.get("subjects", []):
        raise AetherError(
            f"stream {stream_config.get('name')!r} exists but does not hold subjects {subjects!r}"
        )


async def _ensure_stream(api: JsApi, config: dict[str, Any]) -> dict[str, Any]:
    """Create the stream, or check that the existing one is usable by aether.

    Returns the stream's configuration as the server holds it.
    """
    name = config["name"]
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            created: dict[str, Any] = (await api.call(f"STREAM.CREATE.{name}", config))["config"]
            return created
        except JetStreamError as exc:
            if exc.err_code == STREAM_NAME_IN_USE:
                break
            # nats-server (2.15) may fail a create that races with the deletion of the
            # account's last stream ("error creating store for stream"); it is transient.
            if exc.err_code != STREAM_CREATE_FAILED or attempt == _CREATE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.01 * 2**attempt)
    # It exists with another configuration (other retention, replicas, …): keep the
    # operator's settings, but the subjects must be ours and atomic batches allowed.
    try:
        existing: dict[str, Any] = (await api.call(f"STREAM.INFO.{name}"))["config"]
    except JetStreamError as exc:
        if exc.err_code == STREAM_NOT_FOUND:  # deleted between our two calls
            return await _ensure_stream(api, config)
        raise
    _check_subjects(existing, config["subjects"][0])
    if config.get("allow_atomic") and not existing.get("allow_atomic"):
        await api.call(f"STREAM.UPDATE.{name}", {**existing, "allow_atomic": True})
    return existing
