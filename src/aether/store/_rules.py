"""The rules every store applies, in one place, so the backends cannot drift apart.

The in-memory store is a faithful stand-in for the JetStream one: both call these
functions, so both accept and refuse exactly the same input, with the same exceptions.

**Bad input** raises :class:`InvalidEventError` before anything is written or read:

- an event: every check of :meth:`Event.to_json` (actor id, version 1..=2**63-1, event
  type, id, command id, metadata, timestamp, data), plus the store limit on the actor id:
  its subject token (``_subjects.encode_actor_id``) is at most
  ``_subjects.MAX_TOKEN_LENGTH`` characters;
- a batch (``save_events``): a sequence (not one Event) of 1 ..= :data:`MAX_BATCH_SIZE`
  valid events of one actor, versions strictly increasing, ids distinct;
  ``expected_version`` ``None`` or an int in 0..=2**63-1;
- a snapshot: the actor id rules, a version in 1..=2**63-1 (like the events it summarises:
  there is no snapshot of no events, so not 0), a JSON-serialisable ``state``;
- a read (``get_events``, ``iter_events``, ``get_events_with_errors``,
  ``get_latest_version``, ``get_latest_snapshot``): the actor id rules (a too-long id is
  refused, not answered with "no events"), ``from_version`` an int (any: it is a filter).

**Versions**: an append (or a batch's first event) needs a version greater than the
actor's latest, and, with ``expected_version``, the latest must equal it; otherwise
:class:`VersionConflictError` with the current version (never for bad input).

**Decoding** applies the same rules as encoding (:func:`decode_event`,
:func:`decode_snapshot`): a stored message that no store could have written is malformed
(a ``ReplayError``), never an event that could, say, make its actor unwritable.

A store decides from the values captured when it encoded (:func:`prepare_event`,
:func:`prepare_batch`, :func:`prepare_snapshot`), never from the caller's objects, which
the caller may change while a save is in flight.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple, cast

from aether import _json
from aether.errors import InvalidEventError, VersionConflictError
from aether.event import MAX_VERSION, MIN_VERSION, ActorSnapshot, Event
from aether.event import check_actor_id as _check_actor_type
from aether.store._subjects import MAX_TOKEN_LENGTH, encode_actor_id

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_TOKEN_LENGTH",
    "MAX_VERSION",
    "MIN_VERSION",
    "EncodedEvent",
    "EncodedSnapshot",
    "check_actor_id",
    "check_expected_version",
    "check_read",
    "check_versions",
    "conflicts",
    "decode_event",
    "decode_snapshot",
    "encode_event",
    "encode_snapshot",
    "prepare_batch",
    "prepare_event",
    "prepare_snapshot",
]

#: Most events in one ``save_events`` call: JetStream's limit on an atomic batch.
MAX_BATCH_SIZE = 1000

# An id of at most this many characters always fits: a character is at most 4 UTF-8
# bytes, each at most 3 token characters ("_XX").
_ALWAYS_FITS = MAX_TOKEN_LENGTH // 12


class EncodedEvent(NamedTuple):
    """An event as a store encoded it: the values checked, and the bytes that hold them."""

    actor_id: str
    version: int
    id: str
    payload: bytes


class EncodedSnapshot(NamedTuple):
    """A snapshot as a store encoded it."""

    actor_id: str
    version: int
    payload: bytes


def check_actor_id(actor_id: object) -> None:
    """Raise InvalidEventError unless *actor_id* is a non-empty str whose subject token
    fits (at most ``MAX_TOKEN_LENGTH`` characters once encoded)."""
    _check_actor_type(actor_id)
    _check_token_length(cast(str, actor_id))  # a str: just checked


def _check_token_length(actor_id: str) -> None:
    if len(actor_id) > _ALWAYS_FITS:
        encode_actor_id(actor_id)  # raises InvalidEventError if the token is too long


def check_read(actor_id: object, from_version: object = 0) -> None:
    """Validate the arguments of a read (replay, latest version or latest snapshot)."""
    check_actor_id(actor_id)
    if type(from_version) is not int:
        raise InvalidEventError(f"from_version must be an int, got {type(from_version).__name__}")


# -- encoding -------------------------------------------------------------------------------


def prepare_event(event: object) -> EncodedEvent:
    """Validate and encode *event*, capturing the values it was encoded with.

    Raises InvalidEventError if it is not a valid Event.
    """
    if not isinstance(event, Event):
        raise InvalidEventError(f"expected an Event, got {type(event).__name__}")
    wire = event._validated_wire()
    actor_id: str = wire["actorId"]
    _check_token_length(actor_id)
    return EncodedEvent(actor_id, wire["version"], wire["id"], _json.encode(wire))


def prepare_batch(events: object) -> list[EncodedEvent]:
    """Validate and encode a ``save_events`` batch (before any I/O): a sequence of 1 ..=
    ``MAX_BATCH_SIZE`` valid events of one actor, strictly increasing versions, distinct
    ids. Raises InvalidEventError."""
    if isinstance(events, Event) or not isinstance(events, Sequence):
        raise InvalidEventError("save_events takes a sequence of events")
    if not events:
        raise InvalidEventError("save_events needs at least one event")
    if len(events) > MAX_BATCH_SIZE:
        raise InvalidEventError(
            f"save_events takes at most {MAX_BATCH_SIZE} events (JetStream's atomic batch "
            f"limit), got {len(events)}"
        )
    batch = [prepare_event(event) for event in events]
    actor_id = batch[0].actor_id
    for prev, encoded in itertools.pairwise(batch):
        if encoded.actor_id != actor_id:
            raise InvalidEventError("save_events takes events of one actor only")
        if encoded.version <= prev.version:
            raise InvalidEventError("save_events needs strictly increasing versions")
    if len({encoded.id for encoded in batch}) != len(batch):
        raise InvalidEventError("save_events got two events with the same id")
    return batch


def prepare_snapshot(snapshot: object) -> EncodedSnapshot:
    """Validate and encode *snapshot*, capturing its actor id and version.

    Raises InvalidEventError if it is not a valid ActorSnapshot.
    """
    if not isinstance(snapshot, ActorSnapshot):
        raise InvalidEventError(f"expected an ActorSnapshot, got {type(snapshot).__name__}")
    wire = snapshot._validated_wire()
    actor_id: str = wire["actorId"]
    _check_token_length(actor_id)
    return EncodedSnapshot(actor_id, wire["version"], _json.encode(wire))


def encode_event(event: object) -> bytes:
    """The wire form of *event*, or InvalidEventError if it is not a valid Event."""
    return prepare_event(event).payload


def encode_snapshot(snapshot: object) -> bytes:
    """The wire form of *snapshot*, or InvalidEventError if it is not a valid ActorSnapshot."""
    return prepare_snapshot(snapshot).payload


# -- decoding -------------------------------------------------------------------------------


def decode_event(raw: bytes | str) -> Event:
    """The event stored as *raw*, under the rules a store encodes with.

    Raises InvalidEventError (a ValueError) if no store could have written it.
    """
    event = Event.from_json(raw)
    _check_decoded_actor_id(event.actor_id, "event")
    return event


def decode_snapshot(raw: bytes | str) -> ActorSnapshot:
    """The snapshot stored as *raw*, under the rules a store encodes with.

    Raises InvalidEventError (a ValueError) if no store could have written it.
    """
    snapshot = ActorSnapshot.from_json(raw)
    _check_decoded_actor_id(snapshot.actor_id, "snapshot")
    return snapshot


def _check_decoded_actor_id(actor_id: str, what: str) -> None:
    # The one store rule the event model does not know: the encoded length of the id.
    try:
        _check_token_length(actor_id)
    except InvalidEventError as exc:
        raise InvalidEventError(f"malformed {what}: {exc}") from exc


# -- versions -------------------------------------------------------------------------------


def conflicts(first_version: int, latest: int, expected: int | None = None) -> bool:
    """The version rule: True unless an append whose first version is *first_version* may
    follow an actor at version *latest* (and *latest* is *expected*, if given)."""
    return first_version <= latest or (expected is not None and expected != latest)


def check_versions(
    actor_id: str, first_version: int, latest: int, expected: int | None = None
) -> None:
    """Raise VersionConflictError if :func:`conflicts`."""
    if conflicts(first_version, latest, expected):
        raise VersionConflictError(actor_id, first_version, latest)


def check_expected_version(expected: object) -> int | None:
    """Validate ``save_events``' expected_version: None, or a version (0 for "no events
    yet" up to 2**63-1). Raises InvalidEventError."""
    if expected is not None and (type(expected) is not int or not 0 <= expected <= MAX_VERSION):
        raise InvalidEventError(
            f"expected_version must be None or an int in 0..={MAX_VERSION}, got {expected!r:.80}"
        )
    return expected
