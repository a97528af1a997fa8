"""The seek (``aether.store._seek``) driven against a model stream, without a server.

A model stream is a dict ``sequence -> (subject, version or None)``: the actor's
subject ``"a"`` interleaved with other actors' messages, versions increasing along
``"a"`` with gaps, and malformed messages (version None) where a foreign writer put them.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from aether.store._seek import Found, Mark, Read, ReadAt, ReadLast, ReadNext, Start, seek

Stream = dict[int, tuple[str, int | None]]


def run(stream: Stream, from_version: int, mark: Mark | None = None, min_skip: int = 0):
    """(start, reads made) of the seek for actor subject "a" of *stream*."""
    plan = seek(from_version, mark, min_skip=min_skip)
    answer: Found | None = None
    reads: list[Read] = []
    while True:
        try:
            read = plan.send(answer)
        except StopIteration as done:
            start: Start = done.value
            return start, reads
        reads.append(read)
        answer = _answer(stream, read)


def _answer(stream: Stream, read: Read) -> Found | None:
    ours = sorted(seq for seq, (subject, _) in stream.items() if subject == "a")
    match read:
        case ReadAt(seq):
            hit = [s for s in ours if s == seq]
        case ReadNext(seq):
            hit = [s for s in ours if s >= seq][:1]
        case ReadLast():
            hit = ours[-1:]
    return Found(hit[0], stream[hit[0]][1]) if hit else None


@st.composite
def streams(draw: st.DrawFn, malformed: bool = False) -> Stream:
    """A stream of up to 200 messages; the actor's versions increase, with gaps."""
    stream: Stream = {}
    version = 0
    for seq in range(1, draw(st.integers(0, 200)) + 1):
        kind = draw(st.sampled_from(["ours", "other", "bad"] if malformed else ["ours", "other"]))
        if kind == "ours":
            version += draw(st.integers(1, 3))
            stream[seq] = ("a", version)
        elif kind == "other":
            stream[seq] = ("b", draw(st.integers(1, 50)))
        else:
            stream[seq] = ("a", None)
    return stream


def events(stream: Stream) -> list[tuple[int, int]]:
    """(sequence, version) of the actor's well-formed events."""
    return [(s, v) for s, (subject, v) in stream.items() if subject == "a" and v is not None]


def wanted(stream: Stream, from_version: int) -> list[int]:
    return [s for s, v in events(stream) if v >= from_version]


def unwanted(stream: Stream, from_version: int) -> list[int]:
    return [s for s, v in events(stream) if v < from_version]


@given(streams(malformed=True), st.integers(0, 400), st.integers(0, 50))
def test_never_starts_past_a_wanted_event(stream: Stream, from_version: int, min_skip: int) -> None:
    start, _ = run(stream, from_version, min_skip=min_skip)
    assert all(seq >= start.seq for seq in wanted(stream, from_version))
    assert not start.mark_is_stale


@given(streams(), st.integers(2, 400))
def test_a_search_over_a_well_formed_subject_is_tight_and_logarithmic(
    stream: Stream, from_version: int
) -> None:
    start, reads = run(stream, from_version, min_skip=0)
    assert all(seq >= start.seq for seq in wanted(stream, from_version))
    # Tight: no older event of the actor is read past after the start.
    assert all(seq < start.seq for seq in unwanted(stream, from_version))
    assert len(reads) <= 2 + math.ceil(math.log2(max(len(stream), 1) + 1))


@given(streams(malformed=True), st.integers(0, 400), st.integers(1, 300), st.integers(1, 300))
def test_any_mark_right_or_wrong_is_safe(
    stream: Stream, from_version: int, mark_version: int, mark_seq: int
) -> None:
    mark = Mark(mark_version, mark_seq)
    start, reads = run(stream, from_version, mark)
    assert all(seq >= start.seq for seq in wanted(stream, from_version))
    held = stream.get(mark_seq)
    right = held is not None and held == ("a", mark_version)
    if mark_version < from_version and from_version > 1:
        assert reads[0] == ReadAt(mark_seq)  # checked before use
        assert start.mark_is_stale is not right
    else:
        assert not start.mark_is_stale


def test_nothing_to_skip_needs_no_read() -> None:
    stream: Stream = {1: ("a", 1), 2: ("a", 2)}
    for from_version in (-1, 0, 1):
        assert run(stream, from_version) == (Start(1), [])


def test_a_right_mark_just_before_the_wanted_version_costs_one_read() -> None:
    stream: Stream = {s: ("a", s) for s in range(1, 5001)}
    start, reads = run(stream, 4001, Mark(4000, 4000), min_skip=1000)
    assert (start, reads) == (Start(4001), [ReadAt(4000)])


def test_a_mark_from_a_recreated_stream_is_reported_stale() -> None:
    # The mark says version 40 sits at 40; the recreated stream holds version 3 there.
    stream: Stream = {s: ("a", s - 37) for s in range(38, 60)}
    start, reads = run(stream, 41, Mark(40, 40))
    assert reads[0] == ReadAt(40)
    assert start.mark_is_stale
    assert all(seq >= start.seq for seq in wanted(stream, 41))


def test_few_older_events_are_read_rather_than_searched() -> None:
    stream: Stream = {s: ("a", s) for s in range(1, 100)}
    assert run(stream, 50, min_skip=1000) == (Start(1), [])
    start, reads = run(stream, 50, min_skip=10)
    assert start == Start(50) and reads[0] == ReadLast()


def test_a_malformed_probe_falls_back_to_the_beginning() -> None:
    stream: Stream = {s: ("a", s) for s in range(1, 101)}
    stream[50] = ("a", None)
    start, _ = run(stream, 90)
    assert start == Start(1)


def test_a_subject_ending_before_the_version_starts_after_its_end() -> None:
    stream: Stream = {1: ("a", 1), 2: ("b", 1), 3: ("a", 2)}
    assert run(stream, 10)[0] == Start(4)
    assert run({}, 10)[0] == Start(1)


@given(streams(malformed=True), st.integers(0, 400), st.data())
def test_a_right_mark_is_used_and_safe(
    stream: Stream, from_version: int, data: st.DataObject
) -> None:
    ours = events(stream)
    if not ours:
        return
    mark_seq, mark_version = data.draw(st.sampled_from(ours))
    start, _ = run(stream, from_version, Mark(mark_version, mark_seq))
    assert all(seq >= start.seq for seq in wanted(stream, from_version))
    assert not start.mark_is_stale
    if from_version > 1 and mark_version < from_version:
        assert start.seq > mark_seq  # nothing up to the mark is read again
