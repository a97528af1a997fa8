"""Unknown outcomes: the server stores the message but the acknowledgement is lost.

The broker is real; only the client's *reply* is dropped, after the request really
reached the server, which is what a cut connection or a timeout looks like to a writer.
(The fault suite with a TCP proxy and cluster failover builds on this.)
"""

from __future__ import annotations

import pytest

from aether import Event
from aether.store import JetStreamEventStore

from ._faults import lose_acks
from .conftest import StoreFactory


def ev(actor: str, version: int) -> Event:
    return Event(event_type="Deposited", actor_id=actor, version=version)


async def test_lost_ack_is_retried_and_stored_once(js_store: JetStreamEventStore) -> None:
    await js_store.save_event(ev("acc", 1))
    lost = lose_acks(js_store, times=2, after_landing=None)
    event = ev("acc", 2)
    await js_store.save_event(event)  # returns normally
    assert len(lost) == 2
    stats = js_store.stats
    assert stats.retries == 2 and stats.conflicts == 0
    assert [e.id for e in await js_store.get_events("acc")][1:] == [event.id]
    assert js_store.cached_version("acc") == 2
    await js_store.save_event(ev("acc", 3))  # the actor stays writable
    assert await js_store.get_latest_version("acc") == 3


async def test_lost_ack_then_another_writer_is_still_ours(open_store: StoreFactory) -> None:
    """Our event landed, then someone appended after it, before our retry."""
    mine = await open_store()
    other = await open_store()
    await mine.save_event(ev("acc", 1))

    async def other_writes() -> None:
        await other.save_event(ev("acc", 3))

    lose_acks(mine, times=1, after_landing=other_writes)
    event = ev("acc", 2)
    await mine.save_event(event)  # not a conflict with itself
    assert mine.stats.conflicts == 0
    stored = await other.get_events("acc")
    assert [e.version for e in stored] == [1, 2, 3]
    assert stored[1].id == event.id


async def test_lost_ack_of_a_real_conflict_still_conflicts(open_store: StoreFactory) -> None:
    """The retry must not mistake someone else's event for ours."""
    mine = await open_store()
    other = await open_store()
    await mine.save_event(ev("acc", 1))
    await other.save_event(ev("acc", 2))  # mine's cache is stale: its attempt is refused
    lose_acks(mine, times=1, after_landing=None)
    with pytest.raises(Exception, match="version conflict") as info:
        await mine.save_event(ev("acc", 2))
    assert info.value.current_version == 2  # type: ignore[attr-defined]
    assert [e.version for e in await other.get_events("acc")] == [1, 2]


async def test_lost_ack_of_an_atomic_batch(js_store: JetStreamEventStore) -> None:
    await js_store.save_event(ev("acc", 1))
    lose_acks(js_store, times=1, after_landing=None)
    batch = [ev("acc", 2), ev("acc", 3), ev("acc", 4)]
    await js_store.save_events(batch)
    stored = await js_store.get_events("acc")
    assert [e.id for e in stored][1:] == [e.id for e in batch]
    assert js_store.stats.conflicts == 0
    await js_store.save_event(ev("acc", 5))
    assert await js_store.get_latest_version("acc") == 5
