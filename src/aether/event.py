"""The event model: :class:`Event`, :class:`ActorSnapshot` and the metadata keys.

The JSON wire form uses the same keys as Go Aether, so both libraries can read each
other's payloads::

    {"id", "eventType", "actorId", "commandId"?, "version", "data", "metadata"?, "timestamp"}

Validation happens when an event is encoded (``to_json``, which every store calls), not
when it is constructed: events are plain mutable dataclasses, and a store must reject a
bad one whenever it was made bad.
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
    stores it once. ``version`` must be strictly greater than the actor's latest version.
    Defaults: ``data`` empty, ``id`` a new uuid4 string, ``timestamp`` now (UTC).
    """

    event_type: str
    actor_id: str
    version: int
    data: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=_new_id)
    command_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=_now)

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
        wire["timestamp"] = _json.format_timestamp(wire["timestamp"], "timestamp")
        return wire

    def to_json(self) -> bytes:
        """Encode to the JSON wire form. Raises InvalidEventError for a malformed event."""
        return _json.encode(self._validated_wire())

    def _validated_wire(self) -> dict[str, Any]:
        # The timestamp stays a UTC datetime here: orjson formats it (fast path of saves).
        _check_identity(self.actor_id, self.version)
        if type(self.event_type) is not str or not self.event_type:
            raise InvalidEventError("event_type must be a non-empty str")
        _check_id(self.id)
        _json.check_json_object(self.data, "data")
        wire: dict[str, Any] = {
            "id": self.id,
            "eventType": self.event_type,
            "actorId": self.actor_id,
            "version": self.version,
            "data": self.data,
            "timestamp": _json.utc_timestamp(self.timestamp, "timestamp"),
        }
        if self.command_id is not None:
            if type(self.command_id) is not str:
                raise InvalidEventError("command_id must be a str or None")
            wire["commandId"] = self.command_id
        if self.metadata:
            _check_metadata(self.metadata)
            wire["metadata"] = self.metadata
        elif type(self.metadata) is not dict:
            raise InvalidEventError("metadata must be a dict[str, str]")
        return wire

    @classmethod
    def from_dict(cls, obj: object) -> Event:
        """Decode the wire form. Raises ValueError (InvalidEventError) if malformed."""
        if type(obj) is not dict:
            raise InvalidEventError(f"event must be a JSON object, not {type(obj).__name__}")
        try:
            data = obj.get("data")
            metadata = obj.get("metadata")
            event = cls(
                event_type=_json.require(obj, "eventType", str),
                actor_id=_json.require(obj, "actorId", str),
                version=_json.require(obj, "version", int),
                # Go encodes a nil map as null.
                data={} if data is None else _json.require(obj, "data", dict),
                id=_json.require(obj, "id", str),
                command_id=_json.require(obj, "commandId", str, optional=True),
                metadata={} if metadata is None else _json.require(obj, "metadata", dict),
                timestamp=_json.parse_timestamp(obj.get("timestamp")),
            )
            _check_metadata(event.metadata)
        except InvalidEventError:
            raise
        except ValueError as exc:
            raise InvalidEventError(f"malformed event: {exc}") from exc
        return event

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        """Decode JSON bytes. Raises InvalidEventError (a ValueError) if malformed."""
        try:
            obj = _json.loads(raw)
        except _json.JSONDecodeError as exc:
            raise InvalidEventError(f"event is not valid JSON: {exc}") from exc
        return cls.from_dict(obj)


@dataclass(eq=True)
class ActorSnapshot:
    """An actor's state as of ``version``, so replay can start after it."""

    actor_id: str
    version: int
    state: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=_now)

    def to_json(self) -> bytes:
        """Encode as ``{"actorId","version","state","timestamp"}``. Raises InvalidEventError."""
        _check_identity(self.actor_id, self.version)
        _json.check_json_object(self.state, "state")
        return _json.encode(
            {
                "actorId": self.actor_id,
                "version": self.version,
                "state": self.state,
                "timestamp": _json.utc_timestamp(self.timestamp, "timestamp"),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ActorSnapshot:
        """Decode JSON bytes. Raises InvalidEventError (a ValueError) if malformed."""
        try:
            obj = _json.loads(raw)
            if type(obj) is not dict:
                raise ValueError("snapshot must be a JSON object")
            return cls(
                actor_id=_json.require(obj, "actorId", str),
                version=_json.require(obj, "version", int),
                state=_json.require(obj, "state", dict),
                timestamp=_json.parse_timestamp(obj.get("timestamp")),
            )
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            raise InvalidEventError(f"malformed snapshot: {exc}") from exc


def check_actor_id(actor_id: object) -> None:
    """Raise InvalidEventError unless *actor_id* is a non-empty str."""
    if type(actor_id) is not str or not actor_id:
        raise InvalidEventError(f"actor_id must be a non-empty str, got {actor_id!r}")


def _check_identity(actor_id: object, version: object) -> None:
    check_actor_id(actor_id)
    if type(version) is not int:
        raise InvalidEventError(f"version must be an int, got {type(version).__name__}")
    if not _json.INT64_MIN <= version <= _json.INT64_MAX:
        raise InvalidEventError(f"version {version} is outside the 64-bit range")


def _check_id(event_id: object) -> None:
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


def _check_metadata(metadata: object) -> None:
    if type(metadata) is not dict or not all(
        type(k) is str and type(v) is str for k, v in metadata.items()
    ):
        raise InvalidEventError("metadata must be a dict[str, str]")
