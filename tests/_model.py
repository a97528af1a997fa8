"""A pure-Python model of the event store contract (DESIGN.md "Store semantics").

Used by ``test_store_model.py``: the state machine runs every operation against the real
stores and against this model, and compares outcomes and histories. The model is meant
to be obviously right rather than fast: it keeps the whole event stream as a list.

The model's rules:

- The stream is a list of messages in stream order, each on one actor's subject. A
  message is *valid* iff it decodes as an Event of that actor with a version in
  1..2**63-1. An actor's history is its subject's valid events in stream order;
  ``latest(actor)`` is the version of the newest one (0 if none).
- ``save_event(e)``: bad input -> invalid. If the actor's newest valid event has e's
  (id, version): returns, nothing written. Else if e.version <= latest: conflict(latest).
  Else if e.id is the id of an event currently stored in the stream (any actor): invalid.
  Else appended. A purged event, or one lost with a deleted stream, is no longer stored.
- ``save_events(batch, expected_version)``: bad input -> invalid. If the actor's newest
  len(batch) valid events have the batch's (id, version)s: returns (the brief said "the
  newest valid event has the last event's (id, version)"; that also answers "stored" for
  a batch of which only the last event was stored, alone: see test_store_model.py's
  docstring). Else if expected_version is not None
  and != latest: conflict(latest). Else if batch[0].version <= latest: conflict(latest).
  Else if any id is stored: invalid. Else if the batch has several events and any id was
  used in the stream's duplicate window (any message published with that Nats-Msg-Id in
  this incarnation of the stream, even if purged since): invalid. Else all appended.
  (JetStream refuses such a batch with one answer that names no id, so the store cannot
  tell a live id from a purged one; a single event can, and is stored again. A
  one-event ``save_events`` is a single publish.)
- Snapshots: stored iff strictly newer than the stored one.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aether import Event

MAX_VERSION = 2**63 - 1
MAX_ID_LENGTH = 256

#: (event_type, actor_id, version, id, data): what "equal events" means here.
Key = tuple[str, str, int, str, Any]

#: ("ok",) | ("conflict", current_version) | ("invalid",) | ("raised", repr)
Outcome = tuple[Any, ...]
OK: Outcome = ("ok",)
INVALID: Outcome = ("invalid",)


def conflict(current: int) -> Outcome:
    return ("conflict", current)


def key_of(event: Event) -> Key:
    return (event.event_type, event.actor_id, event.version, event.id, copy.deepcopy(event.data))


def valid_event(event: object) -> bool:
    """Whether *event* is acceptable input to a save (only the fields the tests vary are
    checked in depth; the rest must merely have the right types)."""
    if not isinstance(event, Event):
        return False
    return (
        type(event.actor_id) is str
        and bool(event.actor_id)
        and type(event.event_type) is str
        and bool(event.event_type)
        and type(event.version) is int
        and 1 <= event.version <= MAX_VERSION
        and type(event.id) is str
        and 0 < len(event.id) <= MAX_ID_LENGTH
        and event.id.isprintable()
        and " " not in event.id
        and type(event.data) is dict
        and isinstance(event.timestamp, datetime)
        and event.timestamp.tzinfo is not None
    )


def valid_batch(events: object, expected_version: object) -> bool:
    if not isinstance(events, list | tuple) or not events:
        return False
    if not all(valid_event(e) for e in events):
        return False
    if len({e.actor_id for e in events}) != 1 or len({e.id for e in events}) != len(events):
        return False
    if any(b.version <= a.version for a, b in itertools.pairwise(events)):
        return False
    return expected_version is None or (type(expected_version) is int and expected_version >= 0)


@dataclass
class Message:
    """One message on an actor's subject: *event* is its valid event, or None."""

    actor: str
    event: Key | None


@dataclass
class StoreModel:
    stream: list[Message] = field(default_factory=list)
    snapshots: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    #: ids the stream's duplicate window holds (this incarnation; tests outlive no window)
    window_ids: set[str] = field(default_factory=set)

    # -- queries -------------------------------------------------------------------------

    def history(self, actor: str) -> list[Key]:
        return [m.event for m in self.stream if m.actor == actor and m.event is not None]

    def tail(self, actor: str) -> Key | None:
        history = self.history(actor)
        return history[-1] if history else None

    def latest(self, actor: str) -> int:
        tail = self.tail(actor)
        return 0 if tail is None else tail[2]

    def stored_ids(self) -> set[str]:
        return {m.event[3] for m in self.stream if m.event is not None}

    def events_from(self, actor: str, from_version: int) -> list[Key]:
        return [k for k in self.history(actor) if k[2] >= from_version]

    # -- writes --------------------------------------------------------------------------

    def save_event(self, event: Event) -> Outcome:
        if not valid_event(event):
            return INVALID
        return self._append([key_of(event)], None)

    def save_events(self, events: list[Event], expected_version: object) -> Outcome:
        if not valid_batch(events, expected_version):
            return INVALID
        assert expected_version is None or isinstance(expected_version, int)
        return self._append([key_of(e) for e in events], expected_version)

    def _append(self, keys: list[Key], expected_version: int | None) -> Outcome:
        actor = keys[0][1]
        history = self.history(actor)
        if [(k[3], k[2]) for k in history[-len(keys) :]] == [(k[3], k[2]) for k in keys]:
            return OK  # already stored, every event of it, and nothing after: a retry
        latest = self.latest(actor)
        if expected_version is not None and expected_version != latest:
            return conflict(latest)
        if keys[0][2] <= latest:
            return conflict(latest)
        stored = self.stored_ids()
        if any(k[3] in stored for k in keys):
            return INVALID
        if len(keys) > 1 and any(k[3] in self.window_ids for k in keys):
            return INVALID
        self.stream.extend(Message(actor, k) for k in keys)
        self.window_ids.update(k[3] for k in keys)
        return OK

    def save_snapshot(self, actor: str, version: int, state: dict[str, Any]) -> Outcome:
        current = self.snapshots.get(actor)
        if current is None or version > current[0]:
            self.snapshots[actor] = (version, copy.deepcopy(state))
        return OK

    # -- operator actions (JetStream only) -----------------------------------------------

    def purge(self, actor: str) -> None:
        self.stream = [m for m in self.stream if m.actor != actor]

    def delete_stream(self, snapshots_too: bool) -> None:
        self.stream = []
        self.window_ids = set()
        if snapshots_too:
            self.snapshots = {}

    def foreign(self, actor: str, event: Key | None) -> None:
        """A foreign writer appended a message to *actor*'s subject (*event*: its valid
        event, or None for one that is not a valid event of *actor*)."""
        self.stream.append(Message(actor, event))
        if event is not None:  # published with Nats-Msg-Id = its id, as Go Aether does
            self.window_ids.add(event[3])
