"""A persistence module for the ``eventsourcing`` library on NATS JetStream.

``PERSISTENCE_MODULE=aether.ext.eventsourcing`` with ``NATS_URL`` puts an eventsourcing
application on JetStream (install the ``eventsourcing`` extra).

Layout, per application (stream name ``<NATS_STREAM_PREFIX><application name>``, or
``NATS_STREAM``):

- ``<stream>``: the application's events, one subject per aggregate
  (``<stream>.e.<originator id>``). A notification id **is** the stream sequence, so the
  notification log is contiguous from 1 for a new application.
- ``<stream>_snapshots``: snapshots (the library's "snapshots" aggregate recorder), so
  that they take no notification ids.
- ``<stream>_tracking``: one subject per upstream application (``<stream>_tracking.<name>``)
  holding the latest tracking record: ``{"id": notification id, "seq": events stream
  sequence it is known up to}``.

Writes. ``insert_events`` sends all its events (of any number of aggregates) as one
JetStream atomic batch (ADR-50): the first message of each aggregate carries
``Nats-Expected-Last-Subject-Sequence`` (the aggregate's last message as known), so the
server refuses the whole batch if anyone wrote to any of those aggregates meanwhile;
the recorder then re-reads the aggregates' tails and either retries or raises
``IntegrityError`` (a version not greater than the aggregate's stored last version).
Nothing is written on ``IntegrityError``.

Tracking. A process application's tracking record must be atomic with the events it
writes and must not take a notification id. So it travels *inside* the batch: the last
event's message carries the tracking (application name and notification id) in its
frame. The ``_tracking`` stream is an index over that, updated after each write:
``max_tracking_id`` reads the index and then scans the events stream after the index's
``seq`` for newer tracking frames (normally nothing), so a crash between the batch and
the index update loses nothing. A tracked batch also carries
``Nats-Expected-Last-Sequence`` (the events stream's last sequence when the maximum was
read), so a tracking id not greater than the maximum can never be committed by a
concurrent writer either. Tracking-only inserts (a processed event that produced no new
events) are written to the index directly, with a compare-and-set on its subject.

Threading. The recorders are synchronous and thread-safe: every call is run on one
background event-loop thread owned by the :class:`Factory` (one NATS connection), and
the calling thread waits for the result. ``Factory.close()`` closes the connection and
joins the thread. Calling a recorder from inside another event loop blocks that loop's
thread for the call, but cannot deadlock (the work runs on the factory's own loop);
calling one from the factory's own loop thread raises ``ProgrammingError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import struct
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from uuid import UUID

import nats
import nats.errors
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    IntegrityError,
    ListenNotifySubscription,
    Notification,
    OperationalError,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool
from nats.aio.client import Client
from nats.aio.msg import Msg

from aether import _json
from aether.errors import AetherError
from aether.store._jsapi import (
    STREAM_NAME_IN_USE,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_IN_FLIGHT,
    JsApi,
    StoredMsg,
    raise_for_error,
)
from aether.store._replay import Replayer
from aether.store._subjects import encode_actor_id
from aether.store.config import JetStreamConfig

__all__ = [
    "Factory",
    "JetStreamAggregateRecorder",
    "JetStreamApplicationRecorder",
    "JetStreamProcessRecorder",
    "JetStreamSubscription",
    "JetStreamTrackingRecorder",
]

T = TypeVar("T")

# -- the message frame -----------------------------------------------------------------
#
# flags (1 byte) | originator id (16 bytes if a UUID, else u16 length + UTF-8) |
# version (i64) | topic (u16 length + UTF-8) | [tracking: u16 length + UTF-8 name, i64 id]
# | state (the rest)

#: The most notifications one read asks for at once (a pull).
_MAX_BATCH = 1_000
#: Messages of the direct get a read starts with: the store's default (see
#: JetStreamConfig.direct_batch_size for why it is small).
_DIRECT_BATCH = JetStreamConfig.direct_batch_size
_UUID_ID = 1
_TRACKED = 2
_U16 = struct.Struct(">H")
_I64 = struct.Struct(">q")


@dataclass(frozen=True, slots=True)
class _Frame:
    event: StoredEvent
    tracking: Tracking | None


def _encode(event: StoredEvent, tracking: Tracking | None = None) -> bytes:
    flags = 0
    parts: list[bytes] = []
    oid = event.originator_id
    if isinstance(oid, UUID):
        flags |= _UUID_ID
        parts.append(oid.bytes)
    else:
        raw = str(oid).encode()
        parts += (_U16.pack(len(raw)), raw)
    topic = event.topic.encode()
    parts += (_I64.pack(event.originator_version), _U16.pack(len(topic)), topic)
    if tracking is not None:
        flags |= _TRACKED
        name = tracking.application_name.encode()
        parts += (_U16.pack(len(name)), name, _I64.pack(tracking.notification_id))
    parts.append(event.state)
    return bytes([flags]) + b"".join(parts)


def _decode(data: bytes) -> _Frame:
    flags, pos = data[0], 1
    oid: UUID | str
    if flags & _UUID_ID:
        oid, pos = UUID(bytes=data[pos : pos + 16]), pos + 16
    else:
        (length,) = _U16.unpack_from(data, pos)
        oid, pos = data[pos + 2 : pos + 2 + length].decode(), pos + 2 + length
    (version,) = _I64.unpack_from(data, pos)
    (length,) = _U16.unpack_from(data, pos + 8)
    pos += 10
    topic, pos = data[pos : pos + length].decode(), pos + length
    tracking = None
    if flags & _TRACKED:
        (length,) = _U16.unpack_from(data, pos)
        name = data[pos + 2 : pos + 2 + length].decode()
        (tid,) = _I64.unpack_from(data, pos + 2 + length)
        pos += 10 + length
        tracking = Tracking(name, tid)
    event = StoredEvent(oid, version, topic, data[pos:])
    return _Frame(event, tracking)


def _token(originator_id: UUID | str) -> str:
    if isinstance(originator_id, UUID):
        return originator_id.hex
    try:
        return encode_actor_id(str(originator_id))
    except AetherError as exc:
        raise ProgrammingError(str(exc)) from exc


# -- the event-loop thread -------------------------------------------------------------


class _LoopThread:
    """One asyncio event loop on a daemon thread; coroutines submitted from any thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._closed = False
        self._lock = threading.Lock()
        #: run on the loop once it stops, before its tasks are cancelled (closing the client)
        self.on_stop: list[Callable[[], Awaitable[object]]] = []
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            for stop in self.on_stop:
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(stop())
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.get_ident() == self.thread.ident:
            coro.close()
            raise ProgrammingError(
                "a JetStream recorder was called from its factory's own event-loop thread"
            )
        with self._lock:
            if self._closed:
                coro.close()
                raise OperationalError("the infrastructure factory is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.get_ident() != self.thread.ident:
            self.thread.join()


# -- the connection shared by a factory's recorders ------------------------------------


@dataclass
class _Tail:
    version: int
    seq: int  # stream sequence of the aggregate's last message (0: none)


class _Connection:
    """What a factory's recorders share: the loop thread, the client, the API."""

    def __init__(self, runner: _LoopThread, nc: Client, api: JsApi) -> None:
        self.runner = runner
        self.nc = nc
        self.api = api
        self.replay = Replayer(api)
        self.streams: dict[str, int] = {}  # stream name -> replicas, once ensured
        runner.on_stop.append(nc.close)
        # The library may drop a factory without closing it and keep using its recorders
        # (ProjectionRunner does): the loop thread lives as long as the recorders (or the
        # factory) hold this connection, and stops when the last of them is collected.
        self._finalizer = weakref.finalize(self, runner.close)

    def close(self) -> None:
        self._finalizer()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)


@dataclass(frozen=True)
class _StreamSettings:
    replicas: int
    storage: str
    create: bool


async def _ensure_stream(conn: _Connection, name: str, settings: _StreamSettings) -> None:
    if name in conn.streams:
        return
    if settings.create:
        config = {
            "name": name,
            "subjects": [f"{name}.e.*"] if _is_events(name) else [f"{name}.*"],
            "retention": "limits",
            "storage": settings.storage,
            "num_replicas": settings.replicas,
            "allow_atomic": True,
            "allow_direct": True,
            "discard": "old",
        }
        answer, _ = await conn.api.request(
            f"$JS.API.STREAM.CREATE.{name}", _json.dumps(config), stream=None
        )
        error = answer.get("error")
        if error is None:
            conn.streams[name] = int(answer["config"].get("num_replicas", 1))
            return
        if error.get("err_code") != STREAM_NAME_IN_USE:
            raise_for_error(answer)
    info = await conn.api.call(f"STREAM.INFO.{name}", stream=name)
    conn.streams[name] = int(info["config"].get("num_replicas", 1))


def _is_events(name: str) -> bool:
    return not (name.endswith("_snapshots") or name.endswith("_tracking"))


# -- recorders -------------------------------------------------------------------------


class _Recorder:
    def __init__(self, conn: _Connection, stream: str, settings: _StreamSettings) -> None:
        self._conn = conn
        self._api = conn.api
        self._stream = stream
        self._settings = settings

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._conn.run(coro)

    async def _ensure(self, name: str) -> None:
        try:
            await _ensure_stream(self._conn, name, self._settings)
        except AetherError as exc:
            raise OperationalError(str(exc)) from exc


class JetStreamAggregateRecorder(_Recorder, AggregateRecorder):
    """Stores an application's events (or snapshots) in one JetStream stream, one subject
    per aggregate. ``insert_events`` is one atomic batch across all its aggregates."""

    def __init__(self, conn: _Connection, stream: str, settings: _StreamSettings) -> None:
        super().__init__(conn, stream, settings)
        self._prefix = f"{stream}.e." if _is_events(stream) else f"{stream}."
        self._filter = self._prefix + "*"
        self._tails: dict[str, _Tail] = {}  # touched on the loop thread only
        self._create = settings.create
        if settings.create:
            self._run(self._ensure(stream))

    def _subject(self, originator_id: UUID | str) -> str:
        return self._prefix + _token(originator_id)

    # -- writes

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._insert(stored_events, None)
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        if not stored_events:
            return []
        return self._run(self._insert_async(list(stored_events), tracking))

    async def _insert_async(
        self, events: list[StoredEvent], tracking: Tracking | None
    ) -> list[int]:
        await self._ensure(self._stream)
        # Group by aggregate; versions must increase within the call.
        subjects: list[str] = []
        first_index: dict[str, int] = {}
        firsts: dict[str, int] = {}
        lasts: dict[str, int] = {}
        for index, event in enumerate(events):
            subject = self._subject(event.originator_id)
            subjects.append(subject)
            if subject not in first_index:
                first_index[subject] = index
                firsts[subject] = event.originator_version
            elif event.originator_version <= lasts[subject]:
                raise IntegrityError(
                    f"versions of {event.originator_id!r} do not increase in this insert"
                )
            lasts[subject] = event.originator_version
        payloads = [_encode(e) for e in events]
        if tracking is not None:
            payloads[-1] = _encode(events[-1], tracking)
        fresh: set[str] = set()  # subjects whose tail was read from the server this call
        ambiguous = False
        while True:
            expected_last: int | None = None
            tracking_seq = 0
            if tracking is not None:
                assert isinstance(self, JetStreamProcessRecorder)
                current, expected_last, tracking_seq = await self._max_tracking(
                    tracking.application_name
                )
                if current is not None and tracking.notification_id <= current:
                    raise IntegrityError(
                        f"tracking {tracking} is not after {current} (already processed)"
                    )
            tails: dict[str, _Tail] = {}
            retry = False
            for subject in first_index:
                tail = self._tails.get(subject)
                if tail is None:
                    tail = await self._read_tail(subject)
                    fresh.add(subject)
                if firsts[subject] <= tail.version:
                    if subject not in fresh:
                        self._tails.pop(subject, None)
                        retry = True
                        break
                    if ambiguous and await self._landed(subject, payloads, subjects):
                        return await self._landed_ids(subjects, payloads)
                    originator = events[first_index[subject]].originator_id
                    raise IntegrityError(
                        f"version {firsts[subject]} of {originator!r} is not after the "
                        f"stored version {tail.version}"
                    )
                tails[subject] = tail
            if retry:
                continue
            answer, was_ambiguous = await self._publish(
                subjects, payloads, first_index, tails, expected_last
            )
            ambiguous = ambiguous or was_ambiguous
            error = answer.get("error")
            if error is None and not answer.get("duplicate"):
                last_seq = int(answer["seq"])
                first_seq = last_seq - len(payloads) + 1
                for index, subject in enumerate(subjects):
                    self._tails[subject] = _Tail(
                        events[index].originator_version, first_seq + index
                    )
                if tracking is not None:
                    await self._index_tracking(tracking, last_seq, tracking_seq)
                return list(range(first_seq, last_seq + 1))
            code = None if error is None else error.get("err_code")
            if code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
                for subject in first_index:
                    self._tails.pop(subject, None)
                fresh.clear()
                if code == WRONG_LAST_SEQUENCE_IN_FLIGHT:
                    await asyncio.sleep(0.005)
                continue
            raise OperationalError(f"JetStream refused the insert: {error}")

    async def _index_tracking(self, tracking: Tracking, seq: int, tracking_seq: int) -> None:
        """Overridden by the process recorder."""

    async def _read_tail(self, subject: str) -> _Tail:
        msg = await self._api.last_msg(self._stream, subject)
        if msg is None:
            return _Tail(-(2**63), 0)
        return _Tail(_decode(msg.data).event.originator_version, msg.seq)

    async def _landed(self, subject: str, payloads: list[bytes], subjects: list[str]) -> bool:
        """After an ambiguous publish: is this call's batch the one stored? (Its last
        message is the last on its subject, byte for byte.)"""
        last = await self._api.last_msg(self._stream, subjects[-1])
        return last is not None and last.data == payloads[-1]

    async def _landed_ids(self, subjects: list[str], payloads: list[bytes]) -> list[int]:
        last = await self._api.last_msg(self._stream, subjects[-1])
        assert last is not None
        self._tails.clear()
        return list(range(last.seq - len(payloads) + 1, last.seq + 1))

    async def _publish(
        self,
        subjects: list[str],
        payloads: list[bytes],
        first_index: dict[str, int],
        tails: dict[str, _Tail],
        expected_last: int | None,
    ) -> tuple[dict[str, Any], bool]:
        firsts = {index: subject for subject, index in first_index.items()}

        def headers_for(index: int) -> dict[str, str]:
            headers: dict[str, str] = {}
            subject = firsts.get(index)
            if subject is not None:
                headers["Nats-Expected-Last-Subject-Sequence"] = str(tails[subject].seq)
            if index == 0 and expected_last is not None:
                headers["Nats-Expected-Last-Sequence"] = str(expected_last)
            return headers

        messages = [
            (subject, payload, headers_for(index))
            for index, (subject, payload) in enumerate(zip(subjects, payloads, strict=True))
        ]
        return await self._api.publish_batch(messages, stream=self._stream)

    # -- reads

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        return self._run(self._select_events(originator_id, gt, lte, desc, limit))

    async def _select_events(
        self,
        originator_id: UUID | str,
        gt: int | None,
        lte: int | None,
        desc: bool,
        limit: int | None,
    ) -> list[StoredEvent]:
        subject = self._subject(originator_id)
        if desc and limit == 1 and lte is None:
            last = await self._api.last_msg(self._stream, subject)
            if last is None:
                return []
            event = _decode(last.data).event
            return [event] if gt is None or event.originator_version > gt else []
        found: list[StoredEvent] = []
        async for msg in self._messages(subject):
            event = _decode(msg.data).event
            version = event.originator_version
            if (gt is None or version > gt) and (lte is None or version <= lte):
                found.append(event)
                if not desc and limit is not None and len(found) >= limit:
                    break
        if desc:
            found.reverse()
            if limit is not None:
                del found[limit:]
        return found

    async def _messages(
        self, subject: str, start_seq: int = 1, batch: int = 500
    ) -> AsyncIterator[StoredMsg]:
        """The stream's messages on *subject* (a filter) from *start_seq* on: one batched
        direct get first (the streams have ``allow_direct``; at most *batch* messages, and
        no more than aether's store asks for at once), a consumer pulling *batch* at a
        time for what is left (see :meth:`Replayer.iter_subject`)."""
        replicated = self._conn.streams.get(self._stream, 1) > 1
        items = self._conn.replay.iter_subject(
            self._stream,
            subject,
            start_seq=start_seq,
            batch=batch,
            replicated=replicated,
            direct_batch=min(batch, _DIRECT_BATCH),
        )
        async with contextlib.aclosing(items):
            async for msg in items:
                yield msg


class JetStreamApplicationRecorder(JetStreamAggregateRecorder, ApplicationRecorder):
    """The aggregate recorder plus the application's notification log: a notification id
    is the event's stream sequence."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self._insert(stored_events, None)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        first = 1 if start is None else (start if inclusive_of_start else start + 1)
        return self._run(self._select_notifications(max(first, 1), limit, stop, topics))

    async def _select_notifications(
        self, first: int, limit: int, stop: int | None, topics: Sequence[str]
    ) -> list[Notification]:
        found: list[Notification] = []
        if limit <= 0 or (stop is not None and stop < first):
            return found
        wanted = set(topics)
        items = self._messages(self._filter, first, batch=min(max(limit, 10), _MAX_BATCH))
        async with contextlib.aclosing(items):  # type: ignore[type-var]
            async for msg in items:
                if stop is not None and msg.seq > stop:
                    break
                event = _decode(msg.data).event
                if wanted and event.topic not in wanted:
                    continue
                found.append(
                    Notification(
                        id=msg.seq,
                        originator_id=event.originator_id,
                        originator_version=event.originator_version,
                        topic=event.topic,
                        state=event.state,
                    )
                )
                if len(found) >= limit:
                    break
        return found

    def max_notification_id(self) -> int | None:
        return self._run(self._last_seq()) or None

    async def _last_seq(self) -> int:
        info = await self._api.call(f"STREAM.INFO.{self._stream}", stream=self._stream)
        return int(info["state"]["last_seq"])

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return JetStreamSubscription(self, gt=gt, topics=topics)


class JetStreamSubscription(ListenNotifySubscription[JetStreamApplicationRecorder]):
    """Notifications after *gt*, blocking at the tail. Woken by the NATS messages of the
    application's events (and, as a backstop, every 0.2 s)."""

    _POLL = 0.2

    def __init__(
        self,
        recorder: JetStreamApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        self._wakeups: Any = None
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        try:
            self._wakeups = recorder._run(self._listen(recorder))
        except Exception:
            self.stop()
            self._pull_thread.join()
            raise

    async def _listen(self, recorder: JetStreamApplicationRecorder) -> Any:
        async def wake(_: Msg) -> None:
            self._has_been_notified.set()

        return await recorder._conn.nc.subscribe(recorder._filter, cb=wake)

    def _loop_on_pull(self) -> None:
        try:
            self._pull()
            while not self._has_been_stopped:
                self._has_been_notified.wait(timeout=self._POLL)
                self._pull()
        except BaseException as exc:
            if self._thread_error is None:
                self._thread_error = exc
            self.stop()

    def stop(self) -> None:
        super().stop()
        sub, self._wakeups = self._wakeups, None
        if sub is not None:
            with contextlib.suppress(Exception):
                self._recorder._run(sub.unsubscribe())


class JetStreamTrackingRecorder(_Recorder, TrackingRecorder):
    """Tracking records in ``<stream>_tracking``: one subject per upstream application,
    written with a compare-and-set on it (a lower or equal id raises IntegrityError)."""

    def __init__(self, conn: _Connection, stream: str, settings: _StreamSettings) -> None:
        _Recorder.__init__(self, conn, stream, settings)
        self._tracking_stream = f"{stream}_tracking"
        if settings.create:
            self._run(self._ensure(self._tracking_stream))

    def _tracking_subject(self, application_name: str) -> str:
        return f"{self._tracking_stream}.{_token(application_name)}"

    async def _tracking_record(self, application_name: str) -> tuple[int | None, int, int]:
        """(tracking id, events sequence it is known up to, its own sequence) of the index."""
        await self._ensure(self._tracking_stream)
        msg = await self._api.last_msg(
            self._tracking_stream, self._tracking_subject(application_name)
        )
        if msg is None:
            return None, 0, 0
        record = _json.loads(msg.data)
        return int(record["id"]), int(record["seq"]), msg.seq

    async def _max_tracking(self, application_name: str) -> tuple[int | None, int, int]:
        """(max tracking id, events stream last sequence it reflects, index sequence)."""
        tid, _, tseq = await self._tracking_record(application_name)
        return tid, 0, tseq

    async def _write_tracking(
        self, application_name: str, tid: int, seq: int, expected: int
    ) -> bool:
        answer, _ = await self._api.request(
            self._tracking_subject(application_name),
            _json.dumps({"id": tid, "seq": seq}),
            {"Nats-Expected-Last-Subject-Sequence": str(expected)},
            stream=self._tracking_stream,
        )
        error = answer.get("error")
        if error is None:
            return True
        if error.get("err_code") in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
            return False
        raise OperationalError(f"JetStream refused the tracking record: {error}")

    def insert_tracking(self, tracking: Tracking) -> None:
        self._run(self._insert_tracking(tracking))

    async def _insert_tracking(self, tracking: Tracking) -> None:
        while True:
            current, events_seq, tseq = await self._max_tracking(tracking.application_name)
            if current is not None and tracking.notification_id <= current:
                raise IntegrityError(f"tracking {tracking} is not after {current}")
            if await self._write_tracking(
                tracking.application_name, tracking.notification_id, events_seq, tseq
            ):
                return

    def max_tracking_id(self, application_name: str) -> int | None:
        return self._run(self._max_tracking(application_name))[0]


class JetStreamProcessRecorder(
    JetStreamTrackingRecorder, JetStreamApplicationRecorder, ProcessRecorder
):
    """An application recorder whose inserts may carry a tracking record, atomic with the
    events: inside the batch's last message (see the module's docstring)."""

    # Rewrite the index once a scan for tracking frames passes this many messages.
    _REINDEX_AFTER = 64

    def __init__(self, conn: _Connection, stream: str, settings: _StreamSettings) -> None:
        JetStreamApplicationRecorder.__init__(self, conn, stream, settings)
        self._tracking_stream = f"{stream}_tracking"
        if settings.create:
            self._run(self._ensure(self._tracking_stream))

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        tracking: Tracking | None = kwargs.get("tracking")
        if tracking is not None and not stored_events:
            self.insert_tracking(tracking)
            return []
        return self._insert(stored_events, tracking)

    async def _max_tracking(self, application_name: str) -> tuple[int | None, int, int]:
        await self._ensure(self._stream)
        tid, seq, tseq = await self._tracking_record(application_name)
        last = await self._last_seq()
        scanned = 0
        if last > seq:
            items = self._messages(self._filter, seq + 1)
            async with contextlib.aclosing(items):  # type: ignore[type-var]
                async for msg in items:
                    if msg.seq > last:
                        break
                    scanned += 1
                    frame = _decode(msg.data)
                    if (
                        frame.tracking is not None
                        and frame.tracking.application_name == application_name
                        and (tid is None or frame.tracking.notification_id > tid)
                    ):
                        tid = frame.tracking.notification_id
        if (
            tid is not None
            and scanned >= self._REINDEX_AFTER
            and await self._write_tracking(application_name, tid, last, tseq)
        ):
            tseq = (await self._tracking_record(application_name))[2]
        return tid, last, tseq

    async def _index_tracking(self, tracking: Tracking, seq: int, tracking_seq: int) -> None:
        # Best effort: the batch is the record; the index only shortens later scans.
        with contextlib.suppress(OperationalError):
            await self._write_tracking(
                tracking.application_name, tracking.notification_id, seq, tracking_seq
            )

    def max_tracking_id(self, application_name: str) -> int | None:
        return self._run(self._max_tracking(application_name))[0]


# -- the factory -----------------------------------------------------------------------

_STREAM_CHARS = re.compile(r"[^A-Za-z0-9_-]")


class Factory(InfrastructureFactory[TrackingRecorder]):
    """Recorders on NATS JetStream, one stream per application (see the module docstring).

    Settings (the library's conventions: ``<APPLICATION NAME>_<KEY>`` overrides
    ``<KEY>``): ``NATS_URL`` (comma-separated servers; default ``nats://localhost:4222``),
    ``NATS_CREDS``, ``NATS_TOKEN``, ``NATS_USER``/``NATS_PASSWORD``, ``NATS_TLS_CA``,
    ``NATS_TLS_CERT``/``NATS_TLS_KEY``, ``NATS_CONNECT_TIMEOUT`` (s), ``NATS_REQUEST_TIMEOUT``
    (s), ``NATS_RETRY_DEADLINE`` (s), ``NATS_STREAM`` (the stream name) or
    ``NATS_STREAM_PREFIX`` (prefixed to the application name), ``NATS_REPLICAS``,
    ``NATS_STORAGE`` (``file`` or ``memory``), and the library's ``CREATE_TABLE`` (create
    missing streams; default yes).
    """

    NATS_URL = "NATS_URL"
    NATS_CREDS = "NATS_CREDS"
    NATS_TOKEN = "NATS_TOKEN"
    NATS_USER = "NATS_USER"
    NATS_PASSWORD = "NATS_PASSWORD"
    NATS_TLS_CA = "NATS_TLS_CA"
    NATS_TLS_CERT = "NATS_TLS_CERT"
    NATS_TLS_KEY = "NATS_TLS_KEY"
    NATS_CONNECT_TIMEOUT = "NATS_CONNECT_TIMEOUT"
    NATS_REQUEST_TIMEOUT = "NATS_REQUEST_TIMEOUT"
    NATS_RETRY_DEADLINE = "NATS_RETRY_DEADLINE"
    NATS_STREAM = "NATS_STREAM"
    NATS_STREAM_PREFIX = "NATS_STREAM_PREFIX"
    NATS_REPLICAS = "NATS_REPLICAS"
    NATS_STORAGE = "NATS_STORAGE"
    CREATE_TABLE = "CREATE_TABLE"

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        self._runner = _LoopThread(f"aether-eventsourcing-{self.env.name or 'app'}")
        try:
            nc = self._runner.run(self._connect())
        except BaseException:
            self._runner.close()
            raise
        self._conn = _Connection(
            self._runner,
            nc,
            JsApi(
                nc,
                request_timeout=float(self.env.get(self.NATS_REQUEST_TIMEOUT, "5")),
                retry_deadline=float(self.env.get(self.NATS_RETRY_DEADLINE, "30")),
            ),
        )

    async def _connect(self) -> Client:
        env = self.env
        options: dict[str, Any] = {
            "servers": [
                url.strip()
                for url in env.get(self.NATS_URL, "nats://localhost:4222").split(",")
                if url.strip()
            ],
            "name": f"eventsourcing {env.name}".strip(),
            "connect_timeout": float(env.get(self.NATS_CONNECT_TIMEOUT, "2")),
            "max_reconnect_attempts": -1,
        }
        if creds := env.get(self.NATS_CREDS):
            options["user_credentials"] = creds
        if token := env.get(self.NATS_TOKEN):
            options["token"] = token
        if user := env.get(self.NATS_USER):
            options["user"] = user
            options["password"] = env.get(self.NATS_PASSWORD, "")
        ca, cert = env.get(self.NATS_TLS_CA), env.get(self.NATS_TLS_CERT)
        if ca or cert:
            context = ssl.create_default_context(cafile=ca or None)
            if cert:
                context.load_cert_chain(cert, env.get(self.NATS_TLS_KEY) or None)
            options["tls"] = context
        try:
            return await nats.connect(**options)
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            raise OperationalError(f"could not connect to NATS: {exc!r}") from exc

    # -- names and settings

    def stream_name(self) -> str:
        """The application's events stream: ``NATS_STREAM``, else ``NATS_STREAM_PREFIX``
        followed by the application name (characters a stream name cannot have become
        ``_``)."""
        explicit = self.env.get(self.NATS_STREAM)
        if explicit:
            return explicit
        prefix = self.env.get(self.NATS_STREAM_PREFIX, "")
        return _STREAM_CHARS.sub("_", prefix + (self.env.name or "eventsourcing"))

    def _settings(self) -> _StreamSettings:
        storage = self.env.get(self.NATS_STORAGE, "file").lower()
        if storage not in ("file", "memory"):
            raise OperationalError(
                f"{self.NATS_STORAGE} must be 'file' or 'memory', not {storage!r}"
            )
        return _StreamSettings(
            replicas=int(self.env.get(self.NATS_REPLICAS, "1")),
            storage=storage,
            create=strtobool(self.env.get(self.CREATE_TABLE, "yes")),
        )

    # -- recorders

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        stream = self.stream_name()
        if purpose != "events":
            stream = f"{stream}_{_STREAM_CHARS.sub('_', purpose)}"
        return JetStreamAggregateRecorder(self._conn, stream, self._settings())

    def application_recorder(self) -> ApplicationRecorder:
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        cls: type[JetStreamApplicationRecorder] = (
            resolve_topic(topic) if topic else JetStreamApplicationRecorder
        )
        return cls(self._conn, self.stream_name(), self._settings())

    def tracking_recorder(
        self, tracking_recorder_class: type[TrackingRecorder] | None = None
    ) -> TrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = resolve_topic(topic) if topic else JetStreamTrackingRecorder
        cls = cast(type[JetStreamTrackingRecorder], tracking_recorder_class)
        return cls(self._conn, self.stream_name(), self._settings())

    def process_recorder(self) -> ProcessRecorder:
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        cls: type[JetStreamProcessRecorder] = (
            resolve_topic(topic) if topic else JetStreamProcessRecorder
        )
        return cls(self._conn, self.stream_name(), self._settings())

    def close(self) -> None:
        """Close the NATS connection and stop the factory's event-loop thread."""
        self._conn.close()
        super().close()
