"""The append decision of the JetStream store, as a pure function of what is known.

An append is decided from a *tail*: what is known of the last message on the actor's
subject (its stream sequence, the newest valid version, the event id). A tail comes
either from the version cache or from the server (the stream leader). The server checks
only one thing for us: that the subject's last sequence is still the one the append
names (``Nats-Expected-Last-Subject-Sequence``). Everything else (the version rule, "this
event is already stored") is decided here, and the rule of this module is:

    **a cached tail may choose the expected sequence of a publish, and nothing else.**

A publish made from a cached tail succeeds only if the server agrees that nothing was
written after it, which makes its version check as good as a fresh one (within one
stream incarnation: the store drops its cache when the stream is recreated). Any outcome
decided *without* a publish, a conflict or "already stored", needs a tail read from the
server. So a warm ``save_event`` is one round trip, and no cache content can make the
store answer differently from a cold store.

The module holds the two pure halves of the append state machine: :func:`decide` (what
to do with a tail in hand) and :func:`classify` (what the server's answer to a publish
says). ``JetStreamEventStore._attempt`` drives them with I/O: read, publish, look up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aether.event import Event
from aether.store._cache import CacheEntry
from aether.store._jsapi import (
    BATCH_DUPLICATE_MSG_ID,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_IN_FLIGHT,
)
from aether.store._rules import EncodedEvent, conflicts


@dataclass(frozen=True, slots=True)
class PendingAppend:
    """What one ``save_event``/``save_events`` call appends, captured when it was encoded.

    The caller's :class:`~aether.Event` objects are mutable and may change while the
    append is in flight; every decision, header and cache entry uses these copies.
    """

    actor_id: str
    subject: str
    versions: tuple[int, ...]
    ids: tuple[str, ...]
    payloads: tuple[bytes, ...]
    expected_version: int | None

    @classmethod
    def of(
        cls, subject: str, batch: Sequence[EncodedEvent], expected_version: int | None
    ) -> PendingAppend:
        """The append of *batch*, as :mod:`aether.store._rules` encoded it."""
        return cls(
            actor_id=batch[0].actor_id,
            subject=subject,
            versions=tuple(encoded.version for encoded in batch),
            ids=tuple(encoded.id for encoded in batch),
            payloads=tuple(encoded.payload for encoded in batch),
            expected_version=expected_version,
        )

    @classmethod
    def single(cls, subject: str, encoded: EncodedEvent) -> PendingAppend:
        """The append of one event (the hot path: no intermediate lists)."""
        return cls(
            encoded.actor_id, subject, (encoded.version,), (encoded.id,), (encoded.payload,), None
        )

    @property
    def last_version(self) -> int:
        return self.versions[-1]

    @property
    def last_id(self) -> str:
        return self.ids[-1]

    def is_at(self, tail: CacheEntry) -> bool:
        """Whether *tail* is this append's last event (same id **and** version)."""
        return tail.event_id == self.ids[-1] and tail.version == self.versions[-1]

    def is_event(self, event: Event) -> bool:
        """Whether a stored *event* is this append's last event (actor, id and version)."""
        return (event.actor_id, event.id, event.version) == (
            self.actor_id,
            self.ids[-1],
            self.versions[-1],
        )

    def conflicts_with(self, latest: int) -> bool:
        """The version rule (:func:`_rules.conflicts`) against an actor at *latest*."""
        return conflicts(self.versions[0], latest, self.expected_version)


class Step(Enum):
    """What to do next with a tail in hand."""

    PUBLISH = "publish"  # append, expecting the tail's sequence
    READ = "read"  # the tail is cached and would decide an outcome: read it from the server
    STORED = "stored"  # the server's tail is this single event: nothing to write
    CHECK_BATCH = "check batch"  # the server's tail is this batch's last event: are the
    # events before it the rest of the batch? (then STORED, else CONFLICT)
    CONFLICT = "conflict"  # the server's tail forbids the append


def decide(append: PendingAppend, tail: CacheEntry, *, from_server: bool) -> Step:
    """The next step for *append* given *tail* (from the server, or else the cache)."""
    if append.is_at(tail):
        if not from_server:
            return Step.READ
        return Step.STORED if len(append.ids) == 1 else Step.CHECK_BATCH
    if append.conflicts_with(tail.version):
        return Step.CONFLICT if from_server else Step.READ
    return Step.PUBLISH


class Answer(Enum):
    """What the server's answer to a publish (or an atomic batch's commit) says."""

    STORED = "stored"  # appended, at answer["seq"]
    DUPLICATE = "duplicate"  # the id is in the duplicate window: nothing stored now;
    # answer["seq"] is where that id was stored
    MOVED_ON = "moved on"  # wrong last sequence: someone wrote after the tail we sent
    ID_TAKEN = "id taken"  # an atomic batch carries an id of the duplicate window (which
    # one, and where it was stored, the server does not say)
    REFUSED = "refused"  # any other error


def classify(answer: Mapping[str, Any]) -> Answer:
    """Classify a decoded publish answer (a JetStream PubAck or an error)."""
    error = answer.get("error")
    if error is None:
        return Answer.DUPLICATE if answer.get("duplicate") else Answer.STORED
    code = error.get("err_code")
    if code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
        return Answer.MOVED_ON
    if code == BATCH_DUPLICATE_MSG_ID:
        return Answer.ID_TAKEN
    return Answer.REFUSED
