"""The event model: :class:`Event`, :class:`ActorSnapshot` and the metadata keys.

The JSON wire form uses the same keys as Go Aether, so both libraries can read each
other's payloads::

    {"id", "eventType", "actorId", "commandId"?, "version", "data", "metadata"?, "timestamp"}

Validation happens when an event is encoded (``to_json``, which every store calls), not
when it is constructed: events are plain mutable dataclasses, and a store must reject a
bad one whenever it was made bad.

Decoding (``from_json``, ``from_dict``) applies the very same checks, so a message that
no encoder would have written (a foreign writer's version ``2**63``, ``0`` or ``-7``, an
empty event type, an id with spaces) is refused with :class:`InvalidEventError`, and a
store skips it as a malformed message instead of letting it become the actor's latest
version. The rules (one function, :func:`_check_fields`, used both ways):

- ``actor_id``: a non-empty ``str``. (Stores add a length limit: ``aether.store._rules``.)
- ``version``: an ``int`` (not a ``bool``) in ``MIN_VERSION..=MAX_VERSION``, 1..=2**63-1.
- ``event_type``: a non-empty ``str``.
- ``id``: a non-empty ``str`` of at most ``MAX_ID_LENGTH`` printable characters, no spaces.
- ``command_id``: a ``str`` or ``None``; ``metadata``: a ``dict[str, str]``.
- ``timestamp``: a timezone-aware ``datetime`` that fits in UTC (on the wire: RFC 3339).
- ``data``: a ``dict`` whose values survive a JSON round trip. ``from_json`` checks only
  that it is a dict (what orjson decodes is JSON by construction) and how deep it nests
  (with a cheap bracket count first); ``from_dict``, whose input may come from anywhere,
  checks it in full.

Snapshots follow the same actor id and version rules: a snapshot summarises at least one
event, so its version is 1..=2**63-1 too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aether import _json
from aether.errors import InvalidEventError

#: Metadata key of the id shared by every event of one flow (``Event.correlation_id``).
CORRELATION_ID = "correlationId"
#: Metadata key of the id of the event or command that caused this one.
CAUSATION_ID = "causationId"
#: Metadata key of the user on whose behalf the event happened.
USER_ID = "userId"
#: Metadata key of the distributed-tracing trace id.
TRACE_ID = "traceId"
#: Metadata key of the distributed-tracing span id.
SPAN_ID = "spanId"

#: Longest accepted event id (it travels in the Nats-Msg-Id header).
MAX_ID_LENGTH = 256
#: Lowest event (and snapshot) version. 0 means "no event yet": an unknown actor's latest.
MIN_VERSION = 1
#: Highest event (and snapshot) version: Go Aether's int64. A foreign message with a
#: larger one would make its actor unwritable, so it does not decode.
MAX_VERSION = _json.INT64_MAX


def _new_id() -> str:
    return str(uuid.uuid4())


def _now() -> datetime:
    return datetime.now(UTC)


def _metadata_property(key: str, doc: str) -> property:
    def get(self: Event) -> str | None:
        return self.metadata.get(key)

    def set_(self: Event, value: str | None) -> None:
        if value is None:
            self.metadata.pop(key, None)
        else:
            self.metadata[key] = value

    return property(get, set_, doc=doc)


@dataclass(eq=True)
class Event:
    """One versioned fact about one actor.

    ``id`` is also the JetStream ``Nats-Msg-Id``: saving the same event object twice
    stores it once. ``version`` must be strictly greater than the actor's latest version,
    and in 1..=2**63-1. Defaults: ``data`` empty, ``id`` a new uuid4 string, ``timestamp``
    now (UTC).

    ``position`` is where the event sits in the store it was read from: the JetStream
    stream sequence (the in-memory store numbers its events 1, 2, 3, ... across all
    actors). Every event a store returns has it (``get_events``, ``iter_events``,
    ``subscribe``, ...); it is None on an event not read from a store. It orders a
    store's events across actors, and ``subscribe(after=position)`` resumes after it.
    Not part of the wire form, of ``==`` or of the hash; keyword-only.
    """

    event_type: str
    actor_id: str
    version: int
    data: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=_new_id)
    command_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=_now)
    position: int | None = field(default=None, compare=False, kw_only=True)

    correlation_id = _metadata_property(CORRELATION_ID, "Id shared by every event of one flow.")
    causation_id = _metadata_property(CAUSATION_ID, "Id of the event or command that caused this.")
    user_id = _metadata_property(USER_ID, "The user on whose behalf the event happened.")
    trace_id = _metadata_property(TRACE_ID, "Distributed-tracing trace id.")
    span_id = _metadata_property(SPAN_ID, "Distributed-tracing span id.")

    def with_metadata_from(self, other: Event) -> Event:
        """Copy *other*'s metadata keys that this event does not set yet; returns ``self``.

        Use it to carry correlation, user and trace context from a causing event.
        """
        for key, value in other.metadata.items():
            self.metadata.setdefault(key, value)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The validated wire form as a dict. Raises InvalidEventError."""
        wire = self._validated_wire()
        _json.check_depth(wire["data"], "data")
        wire["timestamp"] = _json.format_timestamp(wire["timestamp"], "timestamp")
        return wire

    def to_json(self) -> bytes:
        """Encode to the JSON wire form. Raises InvalidEventError for a malformed event."""
        return _json.encode(self._validated_wire())

    def _validated_wire(self) -> dict[str, Any]:
        """The checked wire dict. Every field is read once, so the dict holds exactly the
        values that were checked (stores take the actor id, version and id from it)."""
        event_type, actor_id, version, event_id = (
            self.event_type,
            self.actor_id,
            self.version,
            self.id,
        )
        data, command_id, metadata = self.data, self.command_id, self.metadata
        _check_fields(event_type, actor_id, version, event_id, command_id, metadata)
        _json.check_json_object(data, "data")
        wire: dict[str, Any] = {
            "id": event_id,
            "eventType": event_type,
            "actorId": actor_id,
            "version": version,
            "data": data,
            # A UTC datetime here: orjson formats it (the fast path of saves).
            "timestamp": _json.utc_timestamp(self.timestamp, "timestamp"),
        }
        if command_id is not None:
            wire["commandId"] = command_id
        if metadata:
            wire["metadata"] = metadata
        return wire

    @classmethod
    def from_dict(cls, obj: object) -> Event:
        """Decode the wire form, given as a dict from any JSON parser.

        Applies every check :meth:`to_json` applies, ``data`` included in full.
        Raises InvalidEventError (a ValueError) if malformed.
        """
        event = cls._from_wire(obj)
        try:
            _json.check_json_object(event.data, "data")
            _json.check_depth(event.data, "data")
        except InvalidEventError as exc:
            raise InvalidEventError(f"malformed event: {exc}") from exc
        return event

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        """Decode JSON bytes. Raises InvalidEventError (a ValueError) if malformed.

        The same checks as :meth:`to_json`; ``data``, decoded by a strict JSON parser,
        is only checked for its type and nesting depth.
        """
        try:
            obj = _json.loads(raw)
        except _json.JSONDecodeError as exc:
            raise InvalidEventError(f"event is not valid JSON: {exc}") from exc
        event = cls._from_wire(obj)
        if _json.may_nest_too_deeply(raw):
            try:
                _json.check_depth(event.data, "data")
            except InvalidEventError as exc:
                raise InvalidEventError(f"malformed event: {exc}") from exc
        return event

    @classmethod
    def _from_wire(cls, obj: object) -> Event:
        """The event a wire dict describes, with every check but ``data``'s contents."""
        if type(obj) is not dict:
            raise InvalidEventError(f"event must be a JSON object, not {type(obj).__name__}")
        get = obj.get
        # Any: each value is checked below, before the event is built.
        event_type: Any = get("eventType")
        actor_id: Any = get("actorId")
        version: Any = get("version")
        event_id: Any = get("id")
        command_id: Any = get("commandId")
        data: Any = get("data")
        metadata: Any = get("metadata")
        # Go encodes a nil map as null; a null commandId is an absent one.
        if data is None:
            data = {}
        if metadata is None:
            metadata = {}
        try:
            _check_fields(event_type, actor_id, version, event_id, command_id, metadata)
            if type(data) is not dict:
                raise InvalidEventError(f"data must be a dict, not {type(data).__name__}")
            timestamp = _json.parse_timestamp(get("timestamp"))
        except ValueError as exc:  # InvalidEventError included
            raise InvalidEventError(f"malformed event: {exc}") from exc
        return cls(event_type, actor_id, version, data, event_id, command_id, metadata, timestamp)


@dataclass(eq=True)
class ActorSnapshot:
    """An actor's state as of ``version`` (1..=2**63-1), so replay can start after it."""

    actor_id: str
    version: int
    state: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=_now)

    def to_json(self) -> bytes:
        """Encode as ``{"actorId","version","state","timestamp"}``. Raises InvalidEventError."""
        return _json.encode(self._validated_wire())

    def _validated_wire(self) -> dict[str, Any]:
        """The checked wire dict, each field read once (see :meth:`Event._validated_wire`)."""
        actor_id, version, state = self.actor_id, self.version, self.state
        check_actor_id(actor_id)
        check_version(version)
        _json.check_json_object(state, "state")
        return {
            "actorId": actor_id,
            "version": version,
            "state": state,
            "timestamp": _json.utc_timestamp(self.timestamp, "timestamp"),
        }

    @classmethod
    def from_json(cls, raw: bytes | str) -> ActorSnapshot:
        """Decode JSON bytes with the checks of :meth:`to_json`. Raises InvalidEventError
        (a ValueError) if malformed."""
        try:
            obj = _json.loads(raw)
            if type(obj) is not dict:
                raise InvalidEventError(f"snapshot must be a JSON object, not {type(obj).__name__}")
            actor_id: Any = obj.get("actorId")  # Any: checked below
            version: Any = obj.get("version")
            state: Any = obj.get("state")
            check_actor_id(actor_id)
            check_version(version)
            if type(state) is not dict:
                raise InvalidEventError(f"state must be a dict, not {type(state).__name__}")
            timestamp = _json.parse_timestamp(obj.get("timestamp"))
            if _json.may_nest_too_deeply(raw):
                _json.check_depth(state, "state")
        except ValueError as exc:  # InvalidEventError and orjson.JSONDecodeError included
            raise InvalidEventError(f"malformed snapshot: {exc}") from exc
        return cls(actor_id, version, state, timestamp)


def check_actor_id(actor_id: object) -> None:
    """Raise InvalidEventError unless *actor_id* is a non-empty str."""
    if type(actor_id) is not str or not actor_id:
        raise InvalidEventError(f"actor_id must be a non-empty str, got {actor_id!r:.80}")


def check_version(version: object) -> None:
    """Raise InvalidEventError unless *version* is an int in 1..=2**63-1 (not a bool)."""
    if type(version) is not int:
        raise InvalidEventError(f"version must be an int, got {type(version).__name__}")
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise InvalidEventError(
            f"version must be in {MIN_VERSION}..={MAX_VERSION} (a positive 64-bit int), "
            f"got {version}"
        )


def _check_fields(
    event_type: object,
    actor_id: object,
    version: object,
    event_id: object,
    command_id: object,
    metadata: object,
) -> None:
    """The checks of an event's fields but ``data`` and ``timestamp``: the same for
    encoding and decoding."""
    # check_actor_id and check_version, each called only to raise: every encode and
    # decode passes here (a replay once per message), and the calls cost more than the
    # checks.
    if type(actor_id) is not str or not actor_id:
        check_actor_id(actor_id)
    if type(version) is not int or not MIN_VERSION <= version <= MAX_VERSION:
        check_version(version)
    if type(event_type) is not str or not event_type:
        raise InvalidEventError(f"event_type must be a non-empty str, got {event_type!r:.80}")
    # The id is also the Nats-Msg-Id header: printable, no spaces, bounded.
    if (
        type(event_id) is not str
        or not event_id
        or len(event_id) > MAX_ID_LENGTH
        or not event_id.isprintable()
        or " " in event_id
    ):
        raise InvalidEventError(
            f"id must be a non-empty str of at most {MAX_ID_LENGTH} printable characters "
            f"without spaces, got {event_id!r:.80}"
        )
    if command_id is not None and type(command_id) is not str:
        raise InvalidEventError(f"command_id must be a str or None, got {command_id!r:.80}")
    if type(metadata) is not dict:
        raise InvalidEventError(f"metadata must be a dict[str, str], not {type(metadata).__name__}")
    for key, value in metadata.items():
        if type(key) is not str or type(value) is not str:
            raise InvalidEventError(
                f"metadata must be a dict[str, str], got {key!r:.40}: {value!r:.40}"
            )
