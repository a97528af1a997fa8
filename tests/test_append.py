"""The append state machine's pure halves (``aether.store._append``), without a server."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether.store._append import Answer, PendingAppend, Step, classify, decide
from aether.store._cache import EMPTY, CacheEntry
from aether.store._rules import EncodedEvent


def pending(
    *versions: int, ids: tuple[str, ...] = (), expected: int | None = None
) -> PendingAppend:
    ids = ids or tuple(f"id-{v}" for v in versions)
    batch = [EncodedEvent("a", v, i, b"{}") for v, i in zip(versions, ids, strict=True)]
    return PendingAppend.of("s.events.a", batch, expected)


def test_a_publishable_append_is_published_whatever_the_tail_source() -> None:
    for from_server in (False, True):
        assert decide(pending(4), CacheEntry(3, 17, "x"), from_server=from_server) is Step.PUBLISH
        assert decide(pending(1), EMPTY, from_server=from_server) is Step.PUBLISH
        assert decide(pending(4, 5), CacheEntry(3, 17, "x"), from_server=from_server) is (
            Step.PUBLISH
        )


def test_a_cached_tail_never_decides_an_outcome() -> None:
    """The rule of the module: conflict and "already stored" need the server's tail."""
    assert decide(pending(3), CacheEntry(3, 17, "x"), from_server=False) is Step.READ
    assert decide(pending(3), CacheEntry(3, 17, "id-3"), from_server=False) is Step.READ
    assert decide(pending(2, 3), CacheEntry(3, 17, "id-3"), from_server=False) is Step.READ
    assert decide(pending(5, expected=2), CacheEntry(3, 17, "x"), from_server=False) is (Step.READ)


def test_the_servers_tail_decides() -> None:
    assert decide(pending(3), CacheEntry(3, 17, "x"), from_server=True) is Step.CONFLICT
    assert decide(pending(3), CacheEntry(3, 17, "id-3"), from_server=True) is Step.STORED
    assert decide(pending(2, 3), CacheEntry(3, 17, "id-3"), from_server=True) is (Step.CHECK_BATCH)
    assert decide(pending(5, expected=2), CacheEntry(3, 17, "x"), from_server=True) is (
        Step.CONFLICT
    )
    # Same id, other version: not this event (an id reused), so the version rule decides.
    assert decide(pending(4), CacheEntry(3, 17, "id-4"), from_server=True) is Step.PUBLISH


@given(
    versions=st.lists(st.integers(1, 50), min_size=1, max_size=4, unique=True).map(sorted),
    latest=st.integers(0, 60),
    tail_is_ours=st.booleans(),
    expected=st.none() | st.integers(0, 60),
    from_server=st.booleans(),
)
def test_decide_follows_the_version_rule(
    versions: list[int], latest: int, tail_is_ours: bool, expected: int | None, from_server: bool
) -> None:
    append = pending(*versions, expected=expected)
    tail = CacheEntry(latest, 99, append.last_id if tail_is_ours else "other")
    step = decide(append, tail, from_server=from_server)
    ours = tail_is_ours and latest == versions[-1]
    forbidden = versions[0] <= latest or (expected is not None and expected != latest)
    if not ours and not forbidden:
        assert step is Step.PUBLISH
    elif not from_server:
        assert step is Step.READ
    elif ours:
        assert step is (Step.STORED if len(versions) == 1 else Step.CHECK_BATCH)
    else:
        assert step is Step.CONFLICT


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"stream": "s", "seq": 5}, Answer.STORED),
        ({"stream": "s", "seq": 5, "duplicate": True}, Answer.DUPLICATE),
        (
            {"error": {"code": 400, "err_code": 10071, "description": "wrong last sequence: 4"}},
            Answer.MOVED_ON,
        ),
        (
            {"error": {"code": 400, "err_code": 10164, "description": "wrong last sequence"}},
            Answer.MOVED_ON,
        ),
        ({"error": {"code": 400, "err_code": 10201}}, Answer.ID_TAKEN),
        (
            {"error": {"code": 500, "err_code": 10054, "description": "message size exceeds"}},
            Answer.REFUSED,
        ),
    ],
)
def test_classify(answer: dict[str, Any], expected: Answer) -> None:
    assert classify(answer) is expected


def test_a_pending_append_is_what_was_encoded() -> None:
    append = pending(2, 3, ids=("x", "y"), expected=1)
    assert (append.versions, append.ids, append.last_version, append.last_id) == (
        (2, 3),
        ("x", "y"),
        3,
        "y",
    )
    single = PendingAppend.single("s.events.a", EncodedEvent("a", 7, "z", b"{}"))
    assert single == PendingAppend.of("s.events.a", [EncodedEvent("a", 7, "z", b"{}")], None)
