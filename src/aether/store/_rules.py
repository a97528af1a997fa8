"""The version rules, shared by every backend so they cannot drift apart."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from aether.errors import InvalidEventError, VersionConflictError
from aether.event import ActorSnapshot, Event, check_actor_id


def check_read(actor_id: object, from_version: object = 0) -> None:
    """Validate the arguments of a read (replay or latest version)."""
    check_actor_id(actor_id)
    if type(from_version) is not int:
        raise InvalidEventError(f"from_version must be an int, got {type(from_version).__name__}")


def check_append(event: Event, latest: int) -> None:
    """Raise VersionConflictError unless *event* may follow an actor at *latest*."""
    if event.version <= latest or event.version < 1:
        raise VersionConflictError(event.actor_id, event.version, latest)


def encode_event(event: object) -> bytes:
    """The wire form of *event*, or InvalidEventError if it is not a valid Event."""
    if not isinstance(event, Event):
        raise InvalidEventError(f"expected an Event, got {type(event).__name__}")
    return event.to_json()


def encode_snapshot(snapshot: object) -> bytes:
    """The wire form of *snapshot*, or InvalidEventError if it is not a valid ActorSnapshot."""
    if not isinstance(snapshot, ActorSnapshot):
        raise InvalidEventError(f"expected an ActorSnapshot, got {type(snapshot).__name__}")
    return snapshot.to_json()


def encode_batch(events: Sequence[Event]) -> list[bytes]:
    """Validate a ``save_events`` batch's shape and encode it (before any I/O).

    One actor, at least one event, strictly increasing versions, distinct ids.
    """
    if isinstance(events, Event) or not isinstance(events, Sequence):
        raise InvalidEventError("save_events takes a sequence of events")
    if not events:
        raise InvalidEventError("save_events needs at least one event")
    payloads = [encode_event(event) for event in events]
    actor_id = events[0].actor_id
    for prev, event in itertools.pairwise(events):
        if event.actor_id != actor_id:
            raise InvalidEventError("save_events takes events of one actor only")
        if event.version <= prev.version:
            raise InvalidEventError("save_events needs strictly increasing versions")
    if len({event.id for event in events}) != len(events):
        raise InvalidEventError("save_events got two events with the same id")
    return payloads


def check_batch_versions(events: Sequence[Event], latest: int, expected: int | None) -> None:
    """Raise VersionConflictError unless the batch may follow an actor at *latest*."""
    first = events[0]
    if expected is not None and expected != latest:
        raise VersionConflictError(first.actor_id, first.version, latest)
    check_append(first, latest)


def check_expected_version(expected: object) -> int | None:
    """Validate ``save_events``' expected_version."""
    if expected is not None and (type(expected) is not int or expected < 0):
        raise InvalidEventError(f"expected_version must be a non-negative int, got {expected!r}")
    return expected
