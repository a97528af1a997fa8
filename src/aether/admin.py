"""Administering aether's streams on a NATS server: list, inspect, create, delete, and
list a stream's actors.

For tools and operators (the ``aether`` command line is built on this module alone); a
service only needs :meth:`JetStreamEventStore.open <aether.store.JetStreamEventStore.open>`.
Every method talks to the server through the store's own request policy (a request that
gets no answer is sent again until ``retry_deadline``), and every error is one of aether's
exceptions, never a raw NATS error code:

- :class:`~aether.errors.StreamNotFoundError`: no such stream;
- :class:`~aether.errors.StreamExistsError`: :meth:`StreamAdmin.create_stream` found it;
- :class:`~aether.errors.UnsuitableStreamError`: the stream exists but is not an aether
  event stream (``setting == "subjects"``), is another (namespace, name) pair's
  (``"metadata"``), or has settings under which the store's contract cannot hold;
- :class:`~aether.store.InvalidConfigError`: a stream name or namespace aether cannot use;
- :class:`~aether.errors.JetStreamNotEnabledError`, raised at once;
- :class:`~aether.errors.StoreUnavailableError`: no answer within ``retry_deadline``;
- :class:`~aether.errors.JetStreamError`: any other refusal (e.g. permissions).

A store's events live in a JetStream stream named from its (namespace, name) pair (see
:class:`StreamRef`) and its snapshots in a second stream, ``<stream>_snapshots``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nats.aio.client import Client

from aether.errors import StreamNotFoundError
from aether.store._jsapi import (
    JsApi,
    atomic_publish_supported,
    require_jetstream,
)
from aether.store._provision import Stream, StreamSettings, create, find, owner
from aether.store._subjects import (
    META_KIND,
    NAMESPACE_SEPARATOR,
    PARKED_SUFFIX,
    SNAPSHOTS_SUFFIX,
    decode_actor_token,
    encode_actor_id,
    legacy_stream_name,
    parse_stream_name,
    real_stream_name,
)
from aether.store.config import InvalidConfigError, JetStreamConfig
from aether.store.jetstream import JetStreamEventStore

__all__ = ["ActorInfo", "ActorListing", "StreamAdmin", "StreamInfo", "StreamRef"]

#: get_latest_version requests in flight at once while listing actors.
_ACTOR_READS_IN_FLIGHT = 64


@dataclass(frozen=True)
class StreamRef:
    """A store's events stream, named as its user opens it: ``(namespace, name)``.

    ``stream_name`` is the JetStream stream :meth:`JetStreamEventStore.open
    <aether.store.JetStreamEventStore.open>` creates for the pair: *name* alone without a
    namespace, else ``<escaped namespace>__<name>``, an injective mapping. (A stream made
    by an aether version before that mapping may have another name; the admin methods
    find it as the store does, and :attr:`StreamInfo.stream_name` says which it is.)
    """

    name: str = "events"
    namespace: str = ""

    def __post_init__(self) -> None:
        # InvalidConfigError for a bad namespace or name, as open() would raise.
        JetStreamConfig(namespace=self.namespace).events_stream_for(self.name)

    @classmethod
    def parse(cls, stream: str = "events", namespace: str = "") -> StreamRef:
        """The store named *stream* in *namespace*; without a namespace, *stream* may also
        be a namespaced store's JetStream name (``tenant-a__bank`` is ``bank`` in namespace
        ``tenant-a``): a store's own name never contains ``__``, so this is unambiguous.

        Raises InvalidConfigError (``field`` ``"stream_name"`` or ``"namespace"``) for a name
        no store can have.
        """
        if not namespace and isinstance(stream, str) and NAMESPACE_SEPARATOR in stream:
            try:
                namespace, stream = parse_stream_name(stream)
            except ValueError as exc:
                raise InvalidConfigError("stream_name", str(exc)) from None
        return cls(stream, namespace)

    @property
    def stream_name(self) -> str:
        """The JetStream stream ``open`` creates for this pair."""
        return real_stream_name(self.namespace, self.name)

    def describe(self, stream_name: str | None = None) -> str:
        """``'events'``, or ``'bank' in namespace 'acme' (JetStream stream 'acme__bank')``.

        *stream_name*: the stream actually found, if not :attr:`stream_name` (an older one).
        """
        real = stream_name or self.stream_name
        if not self.namespace and real == self.name:
            return repr(self.name)
        where = f" in namespace {self.namespace!r}" if self.namespace else ""
        return f"{self.name!r}{where} (JetStream stream {real!r})"


@dataclass(frozen=True)
class StreamInfo:
    """One aether event stream as the server holds it.

    - ``namespace``, ``name``: the pair a store opens it with (from the stream's aether
      metadata; a stream without metadata: no namespace and its JetStream name);
      ``stream_name``: the JetStream stream.
    - ``settings``: its real settings (retention as ``settings.max_age``, None meaning
      forever; replicas, storage, duplicate window, limits, creation time).
    - ``actors``: subjects holding messages (one per actor; a foreign writer's subjects
      count too, see :attr:`ActorListing.skipped_subjects`); ``events``: messages;
      ``bytes``: bytes stored; ``first_position``: the stream sequence (an event's
      ``position``) of its first message, 0 when empty; ``last_position``: the last
      sequence the stream assigned (after a purge, that of a message no longer there).
    - ``snapshot_stream``: its snapshot stream, None if it has none; ``snapshots``: the
      snapshots stored there (one per actor at most).
    - ``has_metadata``: False for a stream recognised only by its subjects
      (``<name>.events.>``): made by Go Aether or an early aether.
    - :attr:`ref`: the pair to name it with in the admin methods and ``open``.
    """

    namespace: str
    name: str
    stream_name: str
    settings: StreamSettings
    actors: int
    events: int
    bytes: int
    first_position: int
    last_position: int
    snapshot_stream: str | None = None
    snapshots: int = 0
    has_metadata: bool = True

    @property
    def ref(self) -> StreamRef:
        """The pair to open the store with."""
        return StreamRef(self.name, self.namespace)


@dataclass(frozen=True)
class ActorInfo:
    """An actor of a stream: its latest version and the messages stored for it."""

    actor_id: str
    version: int
    events: int


@dataclass(frozen=True)
class ActorListing:
    """What :meth:`StreamAdmin.list_actors` found.

    ``actors``: sorted by id, at most the limit asked for; ``matching``: how many actors
    matched the prefix before the limit; ``skipped_subjects``: subjects in the stream
    that are not aether's encoding of an actor id (a foreign writer's), not listed;
    ``stream_name``: the JetStream stream listed (an older aether's may be named
    otherwise than :attr:`StreamRef.stream_name`).
    """

    actors: list[ActorInfo]
    matching: int
    skipped_subjects: int
    stream_name: str


class StreamAdmin:
    """Administration of aether's streams through the caller's connected client *nc*.

    ``request_timeout`` bounds one request and ``retry_deadline`` how long an unanswered
    request is sent again (then StoreUnavailableError), as in
    :class:`~aether.store.JetStreamConfig`; InvalidConfigError unless both are positive.
    Nothing is cached: every call asks the server. An existing stream counts as usable
    (:meth:`stream_info`, :meth:`delete_stream`) if a store with the default
    :class:`~aether.store.JetStreamConfig` could use it.
    """

    def __init__(
        self,
        nc: Client,
        *,
        request_timeout: timedelta = timedelta(seconds=2),
        retry_deadline: timedelta = timedelta(seconds=30),
    ) -> None:
        for name, value in (
            ("request_timeout", request_timeout),
            ("retry_deadline", retry_deadline),
        ):
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise InvalidConfigError(name, f"must be a positive timedelta, got {value!r}")
        self._nc = nc
        self._request_timeout = request_timeout
        self._retry_deadline = retry_deadline
        self._api = JsApi(
            nc,
            request_timeout=request_timeout.total_seconds(),
            retry_deadline=retry_deadline.total_seconds(),
        )

    async def check_jetstream(self) -> None:
        """Raise JetStreamNotEnabledError at once if the server (or the account) has no
        JetStream. One request; a slow server is not an error here."""
        await require_jetstream(self._nc, self._request_timeout.total_seconds())

    async def list_streams(self) -> list[StreamInfo]:
        """Every aether event stream on the server, sorted by (namespace, name).

        A stream is aether's if its metadata says ``aether.kind = events`` and names the
        pair whose store uses it (so a copy of a stream under another name is not
        listed), or, without aether metadata, if its only subjects are
        ``<name>.events.>`` and a store can be opened on *name* (Go Aether's layout).
        Snapshot streams are not listed on their own: see :attr:`StreamInfo.snapshots`.
        One request per page of the server's stream list.
        """
        await self.check_jetstream()
        infos: list[Mapping[str, Any]] = []
        while True:
            answer = await self._api.call("STREAM.LIST", {"offset": len(infos)})
            page = answer.get("streams") or []
            infos.extend(page)
            if not page or len(infos) >= int(answer.get("total", 0)):
                break
        by_name = {str(info["config"]["name"]): info for info in infos}
        found = []
        for name, info in by_name.items():
            stream = Stream.from_info(info)
            pair = _store_of(stream.settings)
            if pair is not None:
                snapshots = by_name.get(name + SNAPSHOTS_SUFFIX)
                found.append(
                    _stream_info(
                        *pair, stream, None if snapshots is None else Stream.from_info(snapshots)
                    )
                )
        found.sort(key=lambda s: (s.namespace, s.name, s.stream_name))
        return found

    async def stream_info(self, ref: StreamRef) -> StreamInfo:
        """The events stream of *ref* (found as a store finds it, an older aether's
        stream included), with its snapshot stream's count. Two requests, at once.

        Raises StreamNotFoundError if there is none, UnsuitableStreamError if the stream
        of that name is not one a store could use (the duplicate window aside: that
        depends on the writers' retry settings, which the admin does not know).
        """
        await self.check_jetstream()
        events, snapshots = await find(self._api, ref.namespace, ref.name, None)
        return _stream_info(ref.namespace, ref.name, events, snapshots)

    async def create_stream(
        self, ref: StreamRef, config: JetStreamConfig | None = None
    ) -> StreamInfo:
        """Create the events and snapshot streams of *ref* as ``open`` would, with
        *config*'s ``stream_retention`` (None: events kept forever), ``replica_count``,
        ``storage`` and ``duplicate_window`` (``config.namespace`` is not used: *ref*
        names the pair).

        Raises StreamExistsError if the events stream (an older aether's for the pair
        included) or the snapshot stream exists, also when a concurrent creation of the
        same stream wins (even with the same settings): exactly one creation succeeds,
        and an existing stream's settings are changed only by its operator.
        """
        await self.check_jetstream()
        events, snapshots = await create(
            self._api,
            ref.namespace,
            ref.name,
            config or JetStreamConfig(),
            atomic=atomic_publish_supported(self._nc),
        )
        return _stream_info(ref.namespace, ref.name, events, snapshots)

    async def delete_stream(self, ref: StreamRef) -> StreamInfo:
        """Delete *ref*'s parked-event and snapshot streams, then its events stream: every
        snapshot, parked-event record and event of the store, irrevocably. Returns the
        stream as it was just before.

        Snapshots go first, so that an interrupted deletion never leaves snapshots of
        deleted events for a new stream of the same name to pick up. Only a stream a
        store could use is deleted: raises StreamNotFoundError if there is none and
        UnsuitableStreamError if the stream of that name is not aether's (the operator
        deletes such a stream with NATS's own tools). Live stores on the stream hear of
        the deletion through JetStream's advisories and drop their caches: their reads
        and appends then raise StreamNotFoundError, until a store's ``open`` creates the
        stream anew, which they then use as it is.
        """
        info = await self.stream_info(ref)
        parked = info.stream_name + PARKED_SUFFIX  # durable subscriptions' parked events
        for name in (parked, info.snapshot_stream, info.stream_name):
            if name is not None:
                with contextlib.suppress(StreamNotFoundError):  # deleted meanwhile: done too
                    await self._api.call(f"STREAM.DELETE.{name}", stream=name)
        return info

    async def list_actors(
        self, ref: StreamRef, *, prefix: str = "", limit: int | None = None
    ) -> ActorListing:
        """The actors of *ref*'s stream whose id starts with *prefix*, sorted by id, at
        most *limit* of them (None: all), each with its latest version.

        The server lists the stream's subjects with their message counts (paged
        ``STREAM.INFO`` requests with a subject filter); each listed actor's latest
        version is then read as ``get_latest_version`` reads it (one request per actor,
        several in flight). Memory grows with the number of actors in the stream.
        Raises StreamNotFoundError / UnsuitableStreamError as :meth:`stream_info`.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be None or >= 0, got {limit}")
        config = JetStreamConfig(
            namespace=ref.namespace,
            request_timeout=self._request_timeout,
            retry_deadline=self._retry_deadline,
            # The config's own rule (window >= retries); this store never appends, so the
            # stream's window is never judged (attach checks it at the first append).
            duplicate_window=max(
                JetStreamConfig().duplicate_window, self._request_timeout + self._retry_deadline
            ),
        )
        async with await JetStreamEventStore.attach(self._nc, ref.name, config) as store:
            stream = store.stream_name
            event_prefix = f"{stream}.events."
            counts = await self._subject_counts(stream, event_prefix + ">")
            found: dict[str, int] = {}
            skipped = 0
            for subject, count in counts.items():
                actor_id = _actor_id_of(subject[len(event_prefix) :])
                if actor_id is None:
                    skipped += 1
                elif actor_id.startswith(prefix):
                    found[actor_id] = count
            shown = sorted(found)[:limit]
            limiter = asyncio.Semaphore(_ACTOR_READS_IN_FLIGHT)

            async def latest(actor_id: str) -> int:
                async with limiter:
                    return await store.get_latest_version(actor_id)

            versions = await asyncio.gather(*(latest(a) for a in shown))
        actors = [ActorInfo(a, v, found[a]) for a, v in zip(shown, versions, strict=True)]
        return ActorListing(actors, len(found), skipped, stream)

    async def _subject_counts(self, stream: str, subjects: str) -> dict[str, int]:
        """Every subject of *stream* matching *subjects* and its message count."""
        counts: dict[str, int] = {}
        while True:
            answer = await self._api.call(
                f"STREAM.INFO.{stream}",
                {"subjects_filter": subjects, "offset": len(counts)},
                stream=stream,
            )
            page = (answer.get("state") or {}).get("subjects") or {}
            counts.update(page)
            if not page or len(counts) >= int(answer.get("total", 0)):
                return counts


def _store_of(settings: StreamSettings) -> tuple[str, str] | None:
    """The (namespace, name) of the store whose events stream *settings* is, if any: the
    pair in its aether metadata if that pair's store uses this stream, else for a stream
    without aether metadata holding only ``<name>.events.>``, ``("", name)`` if a store
    can be opened on *name*."""
    name = settings.name
    found = owner(settings)
    if found is not None:
        kind, namespace, stream_name = found
        try:
            names = {real_stream_name(namespace, stream_name)}
        except ValueError:
            return None
        names.add(legacy_stream_name(namespace, stream_name) or "")
        return (namespace, stream_name) if kind == "events" and name in names else None
    if settings.subjects != (f"{name}.events.>",):
        return None
    try:
        real_stream_name("", name)
    except ValueError:  # e.g. "orders__v2": no store can be opened on it
        return None
    return "", name


def _stream_info(namespace: str, name: str, events: Stream, snapshots: Stream | None) -> StreamInfo:
    state: Mapping[str, Any] = events.info.get("state") or {}
    snapshot_state: Mapping[str, Any] = (
        {} if snapshots is None else snapshots.info.get("state") or {}
    )
    return StreamInfo(
        namespace=namespace,
        name=name,
        stream_name=events.settings.name,
        settings=events.settings,
        actors=int(state.get("num_subjects", 0)),
        events=int(state.get("messages", 0)),
        bytes=int(state.get("bytes", 0)),
        first_position=int(state.get("first_seq", 0)) if state.get("messages") else 0,
        last_position=int(state.get("last_seq", 0)),
        snapshot_stream=None if snapshots is None else snapshots.settings.name,
        snapshots=int(snapshot_state.get("messages", 0)),
        has_metadata=META_KIND in events.settings.metadata,
    )


def _actor_id_of(token: str) -> str | None:
    """The actor id whose subject token is *token*, or None if aether never writes it."""
    try:
        actor_id = decode_actor_token(token)
    except (UnicodeError, ValueError):
        return None
    return actor_id if actor_id and encode_actor_id(actor_id) == token else None
