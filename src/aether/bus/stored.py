""":class:`EventStored`: the notice a store publishes on the bus after each append."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from aether import _json
from aether.errors import InvalidEventError

__all__ = ["INTERNAL_NAMESPACE", "EventStored"]

#: The namespace stores publish :class:`EventStored` to. It is reserved: it carries only
#: ``EventStored`` (and ``EventStored`` goes nowhere else), and only a subscription to
#: exactly this pattern receives it: wildcards such as ``>`` or ``*`` never match it.
INTERNAL_NAMESPACE: Final[Literal["__internal__"]] = "__internal__"


@dataclass(frozen=True, slots=True)
class EventStored:
    """An event was appended: its id, actor, version, position in the store, timestamp.

    A store created with ``bus=`` publishes one to :data:`INTERNAL_NAMESPACE` after each
    successful append (and none when an append fails). It is a notice, not the event:
    read the event from the store (``position`` orders the store's events across actors).
    """

    event_id: str
    actor_id: str
    version: int
    position: int
    timestamp: datetime

    def to_json(self) -> bytes:
        """``{"eventId","actorId","version","position","timestamp"}`` (timestamp RFC 3339
        in UTC). Raises :class:`~aether.errors.InvalidEventError` for a malformed one."""
        for name in ("event_id", "actor_id"):
            value = getattr(self, name)
            if type(value) is not str or not value:
                raise InvalidEventError(f"EventStored.{name} must be a non-empty str")
        for name in ("version", "position"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= _json.INT64_MAX:
                raise InvalidEventError(f"EventStored.{name} must be an int in 0..2**63-1")
        wire: dict[str, Any] = {
            "eventId": self.event_id,
            "actorId": self.actor_id,
            "version": self.version,
            "position": self.position,
            "timestamp": _json.utc_timestamp(self.timestamp, "EventStored.timestamp"),
        }
        return _json.encode(wire)

    @classmethod
    def from_json(cls, raw: bytes | str) -> EventStored:
        """Decode :meth:`to_json`'s form. Raises InvalidEventError (a ValueError)."""
        try:
            obj = _json.loads(raw)
            if type(obj) is not dict:
                raise ValueError(f"must be a JSON object, not {type(obj).__name__}")
            stored = cls(
                _json.require(obj, "eventId", str),
                _json.require(obj, "actorId", str),
                _json.require(obj, "version", int),
                _json.require(obj, "position", int),
                _json.parse_timestamp(obj.get("timestamp")),
            )
            if not stored.event_id or not stored.actor_id:
                raise ValueError("eventId and actorId must not be empty")
            if not (
                0 <= stored.version <= _json.INT64_MAX and 0 <= stored.position <= _json.INT64_MAX
            ):
                raise ValueError("version and position must be in 0..2**63-1")
        except ValueError as exc:  # JSONDecodeError included
            raise InvalidEventError(f"malformed EventStored: {exc}") from exc
        return stored
