"""Unknown outcomes: the server stores the message but the acknowledgement is lost.

The broker is real; only the client's *reply* is dropped, after the request really
reached the server, which is what a cut connection or a timeout looks like to a writer.
"""

from __future__ import annotations

import pytest

from aether import Event, VersionConflictError
from aether.store import JetStreamEventStore

from ._faults import AckDropper
from ._stores import StoreFactory


def ev(actor: str, version: int) -> Event:
    return Event(event_type="Deposited", actor_id=actor, version=version)


async def test_lost_ack_is_retried_and_stored_once(js_store: JetStreamEventStore) -> None:
    await js_store.save_event(ev("acc", 1))
    dropper = AckDropper(js_store)
    dropper.drop_next(2)
    event = ev("acc", 2)
    await js_store.save_event(event)  # returns normally
    assert dropper.dropped == 2
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

    dropper = AckDropper(mine, after_landing=other_writes)
    dropper.drop_next(1)
    event = ev("acc", 2)
    await mine.save_event(event)  # not a conflict with itself
    assert dropper.dropped == 1
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
    dropper = AckDropper(mine)
    dropper.drop_next(1)
    with pytest.raises(VersionConflictError) as info:
        await mine.save_event(ev("acc", 2))
    assert dropper.dropped == 1
    assert info.value.current_version == 2
    assert [e.version for e in await other.get_events("acc")] == [1, 2]


async def test_lost_ack_of_an_atomic_batch(js_store: JetStreamEventStore) -> None:
    await js_store.save_event(ev("acc", 1))
    dropper = AckDropper(js_store)
    dropper.drop_next(1)
    batch = [ev("acc", 2), ev("acc", 3), ev("acc", 4)]
    await js_store.save_events(batch)
    assert dropper.dropped == 1
    stored = await js_store.get_events("acc")
    assert [e.id for e in stored][1:] == [e.id for e in batch]
    assert js_store.stats.conflicts == 0
    await js_store.save_event(ev("acc", 5))
    assert await js_store.get_latest_version("acc") == 5
