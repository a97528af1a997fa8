"""Where a replay from a version starts: the seek, as a pure function.

Replaying an actor from a snapshot should cost the events after the snapshot, not the
whole history. An actor's versions increase along its subject, so the first message
with ``version >= from_version`` can be found by a binary search over stream sequences,
one read of "the first message of the subject at or after sequence N" per step.

:func:`seek` holds only that decision. It does no I/O: it is a generator that yields the
:data:`Read` it needs next and is sent the :class:`Found` message (or None), and returns
the :class:`Start`. The store drives it against the server
(``JetStreamEventStore._seek``); tests drive it against a list. Its rules:

- Nothing to skip (``from_version <= 1``): start at 1 without a read.
- A *mark* (the stream sequence of a snapshot's event, remembered from the snapshot) is
  a hint, checked with one read before use: the stream may have been recreated, the
  subject purged. A wrong mark is reported (:attr:`Start.mark_is_stale`) and not used.
- When at most ``min_skip`` older events would be read past, reading them is cheaper
  than ~log2(stream length) searching reads: start without searching.
- Where the order cannot be trusted (a malformed message met on the way) start at the
  beginning, or just after a checked mark: the result is the same, only slower. Never a
  start past a wanted event.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

__all__ = [
    "SEEK_MIN_SKIP",
    "Found",
    "Mark",
    "Read",
    "ReadAt",
    "ReadLast",
    "ReadNext",
    "Seek",
    "Start",
    "seek",
]

#: Events; reading past this many costs about as much as a search.
SEEK_MIN_SKIP = 1000


@dataclass(frozen=True, slots=True)
class Found:
    """A message read from the actor's subject: its stream sequence, and the version of
    the event it holds (None: malformed, or not this actor's event)."""

    seq: int
    version: int | None


@dataclass(frozen=True, slots=True)
class Mark:
    """A remembered position: the actor's event *version* was stored at sequence *seq*."""

    version: int
    seq: int


@dataclass(frozen=True, slots=True)
class ReadAt:
    """Read the message at exactly *seq*; answer None if absent or on another subject."""

    seq: int


@dataclass(frozen=True, slots=True)
class ReadNext:
    """Read the subject's first message at or after *seq*; None if there is none."""

    seq: int


@dataclass(frozen=True, slots=True)
class ReadLast:
    """Read the subject's last message; None if the subject is empty."""


Read = ReadAt | ReadNext | ReadLast


@dataclass(frozen=True, slots=True)
class Start:
    """Where to replay from (a stream sequence: every wanted event is at or after it),
    and whether the mark given was found wrong (forget it)."""

    seq: int
    mark_is_stale: bool = False


Seek = Generator[Read, Found | None, Start]


def seek(from_version: int, mark: Mark | None = None, *, min_skip: int = SEEK_MIN_SKIP) -> Seek:
    """The replay start for ``version >= from_version`` (see the module docstring).

    Yields reads, is sent each one's answer, returns a :class:`Start`. About
    log2(stream length) reads when it searches; none when ``from_version <= 1``.
    """
    if from_version <= 1:
        return Start(1)
    low = 1  # the answer lies in [low, high]; high's message qualifies
    stale = False
    skipped = from_version - 1
    if mark is not None and mark.version < from_version:
        at = yield ReadAt(mark.seq)
        if at is not None and at.version == mark.version:
            low = mark.seq + 1
            if from_version == mark.version + 1:
                return Start(low)
            skipped -= mark.version
        else:
            stale = True
    floor = low  # safe whatever the search meets: a checked mark, or the beginning
    if skipped <= min_skip:
        return Start(low, stale)
    last = yield ReadLast()
    if last is None or last.version is None:
        return Start(floor, stale)
    if last.version < from_version:
        return Start(last.seq + 1, stale)  # nothing to read
    high = last.seq
    while low < high:
        probe = yield ReadNext((low + high) // 2)
        if probe is None or probe.version is None:
            return Start(floor, stale)
        if probe.version >= from_version:
            high = (low + high) // 2
        else:
            low = probe.seq + 1  # every message up to the probe is too old
    return Start(low, stale)
