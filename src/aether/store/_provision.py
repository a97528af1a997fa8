"""Creating and checking a store's two streams: events and snapshots.

:func:`provision` (for ``open``) creates what is missing; :func:`find` (for ``attach``)
creates nothing. Both refuse, with :class:`~aether.errors.UnsuitableStreamError` and
before anything is written or changed, an existing stream under which the store's
contract cannot hold (see :func:`check_events_stream`), and otherwise keep the operator's
settings as they are: the only change ever made to an existing stream is turning on
``allow_atomic`` for atomic batches.

Streams of aether versions before the injective stream names (``<sanitised
namespace>_<name>``) are still used, but only when their metadata names exactly the
store's (namespace, name) pair (:func:`find_legacy`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from aether.errors import (
    JetStreamError,
    StreamExistsError,
    StreamNotFoundError,
    UnsuitableStreamError,
)
from aether.store._jsapi import (
    STREAM_CREATE_FAILED,
    STREAM_NAME_IN_USE,
    STREAM_NOT_FOUND,
    JsApi,
)
from aether.store._subjects import (
    MAX_STREAM_NAME_LENGTH,
    META_CREATION,
    META_KIND,
    META_NAMESPACE,
    META_STREAM,
    SNAPSHOTS_SUFFIX,
    legacy_stream_name,
    real_stream_name,
    stream_metadata,
)
from aether.store.config import JetStreamConfig

__all__ = [
    "StreamSettings",
    "check_events_stream",
    "check_snapshot_stream",
    "create",
    "find",
    "find_legacy",
    "owner",
    "provision",
]

_log = logging.getLogger("aether.store")

_CREATE_ATTEMPTS = 6


@dataclass(frozen=True)
class StreamSettings:
    """A stream's settings as the server holds them (from STREAM.INFO or STREAM.CREATE).

    Limits the server reports as ``-1`` or ``0`` ("unlimited") are None here.

    - ``name``: the JetStream stream name; ``subjects``: the subjects it stores.
    - ``retention``: ``"limits"``, ``"interest"`` or ``"workqueue"``.
    - ``storage``: ``"file"`` or ``"memory"``; ``replicas``: copies kept in a cluster.
    - ``max_age``: messages older than this are deleted (None: kept forever).
    - ``max_msgs``: messages; ``max_bytes``: bytes; ``max_msgs_per_subject``: messages per
      subject; ``max_msg_size``: bytes per message.
    - ``discard``: ``"old"`` (a limit deletes the oldest messages) or ``"new"`` (a limit
      refuses new messages); ``discard_new_per_subject``: ``"new"`` applies per subject.
    - ``duplicate_window``: how long the server remembers message ids to drop duplicates.
    - ``allow_atomic``: atomic batch publish is allowed (nats-server >= 2.12).
    - ``allow_direct``: direct gets are answered (by every replica, and by mirrors with
      ``mirror_direct``), so short histories load without a consumer.
    - ``metadata``: the stream's metadata (aether's keys, the server's ``_nats.*``).
    - ``created``: when the stream was created (UTC), as the server reports it. It tells
      a stream from one deleted and recreated under the same name, whose sequences
      restart: compare it before trusting sequences remembered from earlier.
    - ``mirror``: the stream this one mirrors (None for an ordinary stream);
      ``sealed``: nothing can be written or deleted; ``no_ack``: publishes get no answer;
      ``subject_transform``: ``(src, dest)`` rewriting incoming subjects, or None.
    """

    name: str
    subjects: tuple[str, ...]
    retention: str
    storage: str
    replicas: int
    max_age: timedelta | None
    max_msgs: int | None
    max_bytes: int | None
    max_msgs_per_subject: int | None
    max_msg_size: int | None
    discard: str
    duplicate_window: timedelta
    allow_atomic: bool
    metadata: Mapping[str, str] = field(hash=False)
    created: datetime
    discard_new_per_subject: bool = False
    mirror: str | None = None
    sealed: bool = False
    no_ack: bool = False
    subject_transform: tuple[str, str] | None = None
    allow_direct: bool = False

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> StreamSettings:
        """The settings in a STREAM.INFO (or STREAM.CREATE/UPDATE) answer."""
        config: Mapping[str, Any] = info["config"]
        mirror = config.get("mirror")
        transform = config.get("subject_transform")
        return cls(
            name=str(config["name"]),
            subjects=tuple(config.get("subjects") or ()),
            retention=str(config.get("retention", "limits")),
            storage=str(config.get("storage", "file")),
            replicas=int(config.get("num_replicas") or 1),
            max_age=_duration(config.get("max_age")),
            max_msgs=_limit(config.get("max_msgs")),
            max_bytes=_limit(config.get("max_bytes")),
            max_msgs_per_subject=_limit(config.get("max_msgs_per_subject")),
            max_msg_size=_limit(config.get("max_msg_size")),
            discard=str(config.get("discard", "old")),
            duplicate_window=_duration(config.get("duplicate_window")) or timedelta(0),
            allow_atomic=bool(config.get("allow_atomic")),
            metadata=dict(config.get("metadata") or {}),
            created=datetime.fromisoformat(str(info["created"])),
            discard_new_per_subject=bool(config.get("discard_new_per_subject")),
            mirror=str(mirror.get("name", "")) if isinstance(mirror, Mapping) else None,
            sealed=bool(config.get("sealed")),
            no_ack=bool(config.get("no_ack")),
            subject_transform=(
                (str(transform.get("src", "")), str(transform.get("dest", "")))
                if isinstance(transform, Mapping) and transform.get("dest")
                else None
            ),
            allow_direct=bool(config.get("allow_direct")),
        )


class Stream(NamedTuple):
    """A stream as the server answered STREAM.INFO (or CREATE/UPDATE) about it."""

    settings: StreamSettings
    info: Mapping[str, Any]  # the whole answer: ``config`` (for STREAM.UPDATE), ``state``

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.info["config"])

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Stream:
        return cls(StreamSettings.from_info(info), info)


async def provision(
    api: JsApi, namespace: str, stream_name: str, config: JetStreamConfig, *, atomic: bool
) -> tuple[StreamSettings, StreamSettings]:
    """The store's (events, snapshots) streams, created if missing; for ``open``.

    The events stream is ``real_stream_name(namespace, stream_name)``, or the legacy
    stream :func:`find_legacy` finds when that does not exist. Both existing streams are
    checked before anything is created or changed (UnsuitableStreamError, nothing
    written); a created events stream gets ``max_age`` from ``config.stream_retention``
    (none when None), ``config.duplicate_window`` and ``allow_direct``. ``allow_direct``,
    and with *atomic* ``allow_atomic``, are turned on if they are off: the only changes
    made to an existing stream.
    Returns both streams' settings as the server holds them.
    """
    name = real_stream_name(namespace, stream_name)
    events, snapshots = await _infos(api, name)
    if events is None:
        legacy = await find_legacy(api, namespace, stream_name)
        if legacy is not None:
            name = legacy.settings.name
            events, snapshots = legacy, await _info(api, name + SNAPSHOTS_SUFFIX)
    if events is not None:
        check_events_stream(events.settings, namespace, stream_name, config)
    if snapshots is not None:
        check_snapshot_stream(snapshots.settings, name, namespace, stream_name)
    if events is None:
        events = await _create(
            api,
            _events_body(name, namespace, stream_name, config, atomic),
            lambda s: check_events_stream(s, namespace, stream_name, config),
        )
    if snapshots is None:
        snapshots = await _create(
            api,
            _snapshots_body(name, namespace, stream_name, config),
            lambda s: check_snapshot_stream(s, name, namespace, stream_name),
        )
    missing = {
        key: True
        for key, on in (
            ("allow_atomic", events.settings.allow_atomic or not atomic),
            ("allow_direct", events.settings.allow_direct),
        )
        if not on
    }
    if missing:
        answer = await api.call(f"STREAM.UPDATE.{name}", {**events.config, **missing})
        events = Stream.from_info(answer)
    return events.settings, snapshots.settings


async def create(
    api: JsApi, namespace: str, stream_name: str, config: JetStreamConfig, *, atomic: bool
) -> tuple[Stream, Stream]:
    """Create the store's (events, snapshots) streams as :func:`provision` would, but only
    if neither exists; for the admin API.

    Raises StreamExistsError if the events stream (or a legacy one for the pair) or the
    snapshot stream exists, or if another creation of the events stream wins a race
    with this one: its body carries a token of its own, so even an identical concurrent
    creation is told apart (the server refuses a different body under a taken name).
    A snapshot stream created meanwhile by a store opening the new events stream is used.
    """
    name = real_stream_name(namespace, stream_name)
    events, snapshots = await _infos(api, name)
    legacy = None if events is not None else await find_legacy(api, namespace, stream_name)
    for existing in (events, legacy, snapshots):
        if existing is not None:
            raise StreamExistsError(existing.settings.name)
    body = _events_body(name, namespace, stream_name, config, atomic)
    body["metadata"][META_CREATION] = uuid.uuid4().hex
    created = await _create(
        api,
        body,
        lambda s: check_events_stream(s, namespace, stream_name, config),
        exclusive=True,
    )
    snapshot_stream = await _create(
        api,
        _snapshots_body(name, namespace, stream_name, config),
        lambda s: check_snapshot_stream(s, name, namespace, stream_name),
    )
    return created, snapshot_stream


async def find(
    api: JsApi, namespace: str, stream_name: str, config: JetStreamConfig | None
) -> tuple[Stream, Stream | None]:
    """The store's existing (events, snapshots) streams, creating and changing nothing;
    for ``attach`` and the admin API. The snapshot stream is None if it does not exist.

    Raises StreamNotFoundError (naming the stream ``open`` would create) if there is no
    events stream, not even a legacy one for the pair, and UnsuitableStreamError as
    :func:`provision` does, except that with *config* None the duplicate window, which
    only matters to a store that appends with *config*'s retries, is not checked.
    """
    name = real_stream_name(namespace, stream_name)
    events, snapshots = await _infos(api, name)
    if events is None:
        events = await find_legacy(api, namespace, stream_name)
        if events is None:
            raise StreamNotFoundError(name)
        snapshots = await _info(api, events.settings.name + SNAPSHOTS_SUFFIX)
    check_events_stream(events.settings, namespace, stream_name, config)
    if snapshots is not None:
        check_snapshot_stream(snapshots.settings, events.settings.name, namespace, stream_name)
    return events, snapshots


async def find_legacy(api: JsApi, namespace: str, stream_name: str) -> Stream | None:
    """The events stream an older aether made for (*namespace*, *stream_name*), if any.

    Older versions named it ``<sanitised namespace>_<stream_name>``, a name that other
    pairs share (``("acme", "prod_orders")`` and ``("acme_prod", "orders")``; ``"a.b"``
    and ``"a_b"``). The stream is used only if its aether metadata names exactly this
    pair: the pair that created it. (Older versions recorded the sanitised namespace, so
    a namespace that needed sanitising never matches: such a stream must be migrated by
    an operator, see docs/concepts.md.) Otherwise None (``provision`` then creates the
    new stream), with a warning logged if the legacy stream exists.
    """
    legacy = legacy_stream_name(namespace, stream_name)
    if legacy is None or len(legacy) > MAX_STREAM_NAME_LENGTH:
        return None
    found = await _info(api, legacy)
    if found is None:
        return None
    if owner(found.settings) == ("events", namespace, stream_name):
        return found
    _log.warning(
        "stream %r, where older aether versions kept the events of namespace %r, stream "
        "%r, is not used: its metadata names %s, not exactly this pair, so it may hold "
        "another pair's events (see 'Streams made by older versions' in docs/concepts.md "
        "to migrate it)",
        legacy,
        namespace,
        stream_name,
        _describe_owner(found.settings),
    )
    return None


def check_events_stream(
    settings: StreamSettings, namespace: str, stream_name: str, config: JetStreamConfig | None
) -> None:
    """Raise UnsuitableStreamError if the store's contract cannot hold on this events
    stream (``settings.name`` is the stream the store uses).

    Refused: a mirror, a sealed stream, ``no_ack``, a subject transform, missing subjects,
    another pair's (or a snapshot stream's) aether metadata; retention other than
    ``limits`` (interest deletes what no consumer wants, workqueue refuses replays);
    a per-subject message limit (an actor's oldest events would vanish); ``discard: new``
    with any limit or per subject (appends refused once it is reached); a duplicate window
    shorter than ``config.min_duplicate_window`` (a retried append could be stored twice;
    not checked without a *config*: see :func:`check_duplicate_window`).
    """
    s = settings
    _check_common(s, f"{s.name}.events.>", "events", namespace, stream_name)
    if s.max_msgs_per_subject is not None:
        _refuse(
            s,
            "max_msgs_per_subject",
            f"is {s.max_msgs_per_subject}; aether needs it unlimited (-1): the limit "
            "deletes an actor's oldest events, silently losing its history",
        )
    limits = {
        "max_msgs": s.max_msgs,
        "max_bytes": s.max_bytes,
        "max_age": s.max_age,
    }
    set_limits = [f"{key}={value}" for key, value in limits.items() if value is not None]
    if s.discard == "new" and set_limits:
        _refuse(
            s,
            "discard",
            f"is 'new' with limits ({', '.join(set_limits)}); aether needs discard 'old' "
            "or no limits: with 'new' the stream refuses every append once a limit is hit",
        )
    if config is not None:
        check_duplicate_window(s, config)


def check_duplicate_window(settings: StreamSettings, config: JetStreamConfig) -> None:
    """Raise UnsuitableStreamError if appends retried under *config* could outlive the
    stream's duplicate window: a retry after the window closes would be stored twice."""
    if settings.duplicate_window < config.min_duplicate_window:
        _refuse(
            settings,
            "duplicate_window",
            f"is {_seconds(settings.duplicate_window)}; aether needs at least "
            f"{_seconds(config.min_duplicate_window)} (retry_deadline + request_timeout): "
            "an append retried after the window closes would be stored twice",
        )


def check_snapshot_stream(
    settings: StreamSettings, events_stream: str, namespace: str, stream_name: str
) -> None:
    """Raise UnsuitableStreamError if the snapshot stream of *events_stream* cannot hold
    the store's snapshots: the refusals of :func:`check_events_stream` that apply to it,
    with one message per subject (``max_msgs_per_subject=1``) being aether's own setting."""
    s = settings
    _check_common(s, f"{events_stream}.snapshots.>", "snapshots", namespace, stream_name)
    limits = {"max_msgs": s.max_msgs, "max_bytes": s.max_bytes}
    set_limits = [f"{key}={value}" for key, value in limits.items() if value is not None]
    if s.discard == "new" and set_limits:
        _refuse(
            s,
            "discard",
            f"is 'new' with limits ({', '.join(set_limits)}); aether needs discard 'old' "
            "or no limits: with 'new' the stream refuses new snapshots once a limit is hit",
        )


def _check_common(
    s: StreamSettings, subjects: str, kind: str, namespace: str, stream_name: str
) -> None:
    if s.mirror is not None:
        _refuse(s, "mirror", f"the stream mirrors {s.mirror!r}: nothing can be appended to it")
    if s.sealed:
        _refuse(s, "sealed", "the stream is sealed: nothing can be appended to it")
    if s.no_ack:
        _refuse(
            s,
            "no_ack",
            "the stream does not acknowledge publishes; aether needs acks to know what was stored",
        )
    if s.subject_transform is not None:
        _refuse(
            s,
            "subject_transform",
            f"the stream rewrites incoming subjects {s.subject_transform[0]!r} to "
            f"{s.subject_transform[1]!r}; aether reads each actor at the subject it writes",
        )
    if subjects not in s.subjects:
        _refuse(
            s, "subjects", f"the stream does not hold subjects {subjects!r} (it has {s.subjects})"
        )
    stored = owner(s)
    if stored is not None and stored != (kind, namespace, stream_name):
        _refuse(
            s,
            "metadata",
            f"the stream's aether metadata names {_describe_owner(s)}, not the {kind} of "
            f"namespace {namespace!r}, stream {stream_name!r}",
        )
    if s.retention != "limits":
        why = {
            "interest": "messages no consumer is interested in are deleted, so history is lost",
            "workqueue": "the server refuses replays and deletes messages once consumed",
        }.get(s.retention, "only 'limits' keeps messages until a limit removes them")
        _refuse(s, "retention", f"is {s.retention!r}; aether needs 'limits': {why}")
    if s.discard_new_per_subject:
        _refuse(
            s,
            "discard_new_per_subject",
            "is set; aether needs it off: the stream would refuse appends to an actor once "
            "its subject is full",
        )


def owner(settings: StreamSettings) -> tuple[str, str, str] | None:
    """(kind, namespace, stream name) in the stream's aether metadata, None if none."""
    metadata = settings.metadata
    kind = metadata.get(META_KIND)
    if kind is None:
        return None
    return (kind, metadata.get(META_NAMESPACE, ""), metadata.get(META_STREAM, ""))


def _describe_owner(settings: StreamSettings) -> str:
    stored = owner(settings)
    if stored is None:
        return "no aether pair"
    kind, namespace, stream_name = stored
    return f"the {kind} of namespace {namespace!r}, stream {stream_name!r}"


def _refuse(settings: StreamSettings, setting: str, message: str) -> None:
    raise UnsuitableStreamError(settings.name, setting, message)


async def _infos(api: JsApi, name: str) -> tuple[Stream | None, Stream | None]:
    """The events stream *name* and its snapshot stream, asked for at once."""
    events, snapshots = await asyncio.gather(_info(api, name), _info(api, name + SNAPSHOTS_SUFFIX))
    return events, snapshots


async def _info(api: JsApi, name: str) -> Stream | None:
    try:
        answer = await api.call(f"STREAM.INFO.{name}")
    except JetStreamError as exc:
        if exc.err_code == STREAM_NOT_FOUND:
            return None
        raise
    return Stream.from_info(answer)


def _common(config: JetStreamConfig) -> dict[str, Any]:
    return {
        "retention": "limits",
        "discard": "old",
        "storage": config.storage,
        "num_replicas": config.replica_count,
    }


def _events_body(
    name: str, namespace: str, stream_name: str, config: JetStreamConfig, atomic: bool
) -> dict[str, Any]:
    """STREAM.CREATE of an events stream: max age from ``config.stream_retention`` (none
    when None), ``config.duplicate_window``, aether's metadata."""
    retention = config.stream_retention
    return {
        "name": name,
        "subjects": [f"{name}.events.>"],
        "max_age": 0 if retention is None else _ns(retention),
        "duplicate_window": _ns(config.duplicate_window),
        "allow_direct": True,  # short histories load with one direct get
        **({"allow_atomic": True} if atomic else {}),
        "metadata": stream_metadata("events", namespace, stream_name),
        **_common(config),
    }


def _snapshots_body(
    events_name: str, namespace: str, stream_name: str, config: JetStreamConfig
) -> dict[str, Any]:
    """STREAM.CREATE of a snapshot stream: one message (snapshot) per actor's subject."""
    return {
        "name": events_name + SNAPSHOTS_SUFFIX,
        "subjects": [f"{events_name}.snapshots.>"],
        "max_msgs_per_subject": 1,
        "metadata": stream_metadata("snapshots", namespace, stream_name),
        **_common(config),
    }


async def _create(
    api: JsApi,
    body: dict[str, Any],
    check: Callable[[StreamSettings], None],
    *,
    exclusive: bool = False,
) -> Stream:
    """Create the stream *body* describes; if another process created it meanwhile, use
    that one once *check* (raising UnsuitableStreamError) accepts its settings, or with
    *exclusive* raise StreamExistsError."""
    name = body["name"]
    attempt = 0
    while True:
        try:
            answer = await api.call(f"STREAM.CREATE.{name}", body)
            created = Stream.from_info(answer)
            # The server also answers so for an identical stream created meanwhile.
            check(created.settings)
            return created
        except JetStreamError as exc:
            if exc.err_code == STREAM_NAME_IN_USE:
                if exclusive:
                    raise StreamExistsError(name) from None
                # Created meanwhile with other settings: use it if it is suitable.
                existing = await _info(api, name)
                if existing is not None:
                    check(existing.settings)
                    return existing
                # ... and deleted again before we looked: create it after all.
            # nats-server (2.15) may fail a create that races with the deletion of the
            # account's last stream ("error creating store for stream"); it is transient.
            elif exc.err_code != STREAM_CREATE_FAILED:
                raise
            attempt += 1
            if attempt == _CREATE_ATTEMPTS:
                raise
            await asyncio.sleep(0.01 * 2**attempt)


def _ns(value: timedelta) -> int:
    return (value // timedelta(microseconds=1)) * 1000


def _duration(ns: Any) -> timedelta | None:
    if not isinstance(ns, int) or ns <= 0:
        return None
    return timedelta(microseconds=ns / 1000)


def _limit(value: Any) -> int | None:
    if not isinstance(value, int) or value <= 0:
        return None
    return value


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"
