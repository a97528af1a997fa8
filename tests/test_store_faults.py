"""Regression tests: no cache content, operator action or foreign message bends the
version rule (issue "store correctness"). Each test is one fault found against a real
server, reduced to its smallest input; ``tests/test_store_model.py`` covers the
neighbours of each with a stateful differential property test.

The rule they all follow (``src/aether/store/_append.py``): a cached tail may choose the
expected sequence of a publish, and nothing else; every outcome decided without a
publish is decided from a tail read from the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import nats
import pytest
from nats.aio.client import Client

from aether import (
    ActorSnapshot,
    Event,
    EventTooLargeError,
    InvalidEventError,
    StoreClosedError,
    VersionConflictError,
)
from aether.errors import JetStreamNotEnabledError, StreamNotFoundError
from aether.store import JetStreamConfig, JetStreamEventStore
from aether.store._cache import CacheEntry
from aether.testing import NatsServer

from ._proxy import NatsProxy
from ._stores import StoreFactory, ev, unique, versions

_LONG = timedelta(seconds=60)


async def recreate_and_write(nc: Client, s1: JetStreamEventStore, other: StoreFactory) -> None:
    """Delete s1's stream; another store recreates it and writes B, B, then A v100, so
    that A's last message sits at stream sequence 3 again, as s1's cache remembers."""
    await nc.jetstream().delete_stream(s1.stream_name)
    s2 = await other()
    await s2.save_event(ev("B", 1))
    await s2.save_event(ev("B", 2))
    await s2.save_event(ev("A", 100))
    last = await nc.jetstream().get_last_msg(s1.stream_name, s1.subject_for("A"))
    assert last.seq == 3  # the fault's precondition: the cached sequence is A's tail again


async def wait_until(condition: Callable[[], bool], limit: float = 10) -> None:
    """Poll a client-side condition that has no event to wait on (nats-py's connection
    state), bounded by *limit* seconds."""
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def write_a_three(s1: JetStreamEventStore) -> None:
    for version in (1, 2, 3):
        await s1.save_event(ev("A", version))
    assert s1.cached_version("A") == 3


# -- fault 1: the stream deleted and recreated under a warm cache ---------------------------


async def test_a_recreated_stream_is_noticed_through_its_advisories(
    open_store: StoreFactory, nc: Client
) -> None:
    name = unique("recreate")
    s1 = await open_store(name)
    await write_a_three(s1)
    await recreate_and_write(nc, s1, lambda: open_store(name))
    # The advisory reached s1's connection while the other store recreated and wrote.
    with pytest.raises(VersionConflictError) as info:
        await s1.save_event(ev("A", 4))
    assert info.value.current_version == 100
    assert await versions(s1, "A") == [100]
    await s1.save_event(ev("A", 101))
    assert await versions(s1, "A") == [100, 101]


async def test_a_recreation_missed_while_disconnected_is_noticed_after_reconnect(
    open_store: StoreFactory, nats_url: str, nc: Client
) -> None:
    """No advisory can reach a client that is cut off: after a reconnect the store asks
    the server for the stream's identity before trusting its cache."""
    name = unique("partition")
    async with NatsProxy([nats_url]) as proxy:
        client = await nats.connect(
            servers=proxy.urls, reconnect_time_wait=0.05, max_reconnect_attempts=-1
        )
        try:
            s1 = await JetStreamEventStore.open(client, name)
            await write_a_three(s1)
            proxy.partition()
            await wait_until(lambda: not client.is_connected)
            await recreate_and_write(nc, s1, lambda: open_store(name))
            proxy.heal()
            await wait_until(lambda: client.is_connected)
            assert client.stats["reconnects"] >= 1  # the fault happened
            assert s1.cached_version("A") == 3  # nothing told the store
            with pytest.raises(VersionConflictError) as info:
                await s1.save_event(ev("A", 4))
            assert info.value.current_version == 100
            assert await versions(s1, "A") == [100]
            await s1.close()
        finally:
            await client.close()


# -- fault 2: the caller mutates the Event while its save is in flight ----------------------


async def test_mutating_an_event_during_its_save_changes_nothing(
    js_store: JetStreamEventStore,
) -> None:
    for version in (1, 2, 3, 4):
        await js_store.save_event(ev("A", version))
    event = ev("A", 5)
    saving = asyncio.ensure_future(js_store.save_event(event))
    await asyncio.sleep(0)  # the save has encoded the event and is waiting for its ack
    event.version = 1
    await saving
    assert js_store.cached_version("A") == 5  # what was stored, not the live object
    with pytest.raises(VersionConflictError) as info:
        await js_store.save_event(ev("A", 3))
    assert info.value.current_version == 5
    assert await versions(js_store, "A") == [1, 2, 3, 4, 5]


# -- fault 3: re-saving a stored event that is no longer the latest -------------------------


async def test_resaving_an_event_that_is_no_longer_the_latest_conflicts_warm_or_cold(
    open_store: StoreFactory,
) -> None:
    s1 = await open_store()
    s2 = await open_store()
    e1 = ev("A", 1)
    await s1.save_event(e1)
    await s2.save_event(ev("A", 2))
    assert s1.cached_version("A") == 1  # warm, and stale
    for store in (s1, s2, await open_store()):  # warm-stale, warm-current, cold
        with pytest.raises(VersionConflictError) as info:
            await store.save_event(e1)
        assert info.value.current_version == 2
    assert await versions(s1, "A") == [1, 2]
    assert s1.cached_version("A") == 2  # repaired by the read


async def test_resaving_the_latest_event_returns_normally_and_writes_nothing(
    open_store: StoreFactory,
) -> None:
    s1 = await open_store()
    e1 = ev("A", 1)
    await s1.save_event(e1)
    await s1.save_event(e1)  # warm: the server confirms it is still the tail
    await (await open_store()).save_event(e1)  # cold
    assert await versions(s1, "A") == [1]


# -- fault 4: an operator purges an actor's subject -----------------------------------------


async def test_resaving_a_purged_event_stores_it_again(
    open_store: StoreFactory, nc: Client
) -> None:
    s1 = await open_store()
    events = [ev("A", version) for version in (1, 2, 3)]
    for event in events:
        await s1.save_event(event)
    await nc.jetstream().purge_stream(s1.stream_name, subject=s1.subject_for("A"))
    assert await s1.get_latest_version("A") == 0
    assert s1.cached_version("A") == 0  # an authoritative read may go backwards
    await s1.save_event(events[2])  # the id is still in the duplicate window
    assert await versions(s1, "A") == [3]
    assert s1.cached_version("A") == 3
    await s1.save_event(events[2])  # and now it is the tail: nothing more is written
    assert await versions(s1, "A") == [3]


async def test_a_warm_resave_after_a_purge_is_stored_and_a_cold_one_too(
    open_store: StoreFactory, nc: Client
) -> None:
    s1 = await open_store()
    e3 = ev("A", 3)
    await s1.save_event(e3)
    await nc.jetstream().purge_stream(s1.stream_name, subject=s1.subject_for("A"))
    cold = await open_store()
    await cold.save_event(e3)
    assert await versions(s1, "A") == [3]
    await s1.save_event(e3)  # warm and stale (its cache says seq 1): the server's tail is it
    assert await versions(s1, "A") == [3]


# -- fault 5: a batch whose last event reuses an older event's id ---------------------------


async def test_a_batch_reusing_an_older_events_id_is_refused(open_store: StoreFactory) -> None:
    s1 = await open_store()
    await s1.save_event(ev("A", 1, "req-42"))
    with pytest.raises(InvalidEventError):
        await s1.save_events([ev("A", 2, "fresh-1"), ev("A", 3, "req-42")])
    assert await versions(s1, "A") == [1]
    # With a stale cache: the reused id now belongs to an older, non-tail event.
    s2 = await open_store()
    await s2.save_event(ev("A", 2, "other-2"))
    with pytest.raises(InvalidEventError):
        await s1.save_events([ev("A", 3, "fresh-3"), ev("A", 4, "req-42")])
    with pytest.raises(InvalidEventError):
        await s1.save_event(ev("A", 3, "req-42"))
    assert await versions(s1, "A") == [1, 2]


async def test_a_single_event_reusing_another_actors_id_is_refused(
    open_store: StoreFactory,
) -> None:
    s1 = await open_store()
    await s1.save_event(ev("A", 1, "shared"))
    with pytest.raises(InvalidEventError):
        await s1.save_event(ev("B", 1, "shared"))
    assert await versions(s1, "B") == []


# -- fault 9: foreign messages outside the version range ------------------------------------


@pytest.mark.parametrize("version", ["9223372036854775808", "-7", "true", "0"])
async def test_a_foreign_version_out_of_range_is_skipped(
    js_store: JetStreamEventStore, nc: Client, version: str
) -> None:
    await js_store.save_event(ev("A", 1))
    foreign = (
        '{"id":"f-1","eventType":"X","actorId":"A","version":' + version + ',"data":{},'
        '"timestamp":"2026-01-01T00:00:00Z"}'
    )
    await nc.jetstream().publish(js_store.subject_for("A"), foreign.encode())
    assert await js_store.get_latest_version("A") == 1
    result = await js_store.get_events_with_errors("A")
    assert [e.version for e in result.events] == [1]
    assert len(result.errors) == 1
    await js_store.save_event(ev("A", 2))  # still writable
    assert await versions(js_store, "A") == [1, 2]


# -- fault 10: the stream vanishes under a live store ---------------------------------------


async def test_a_deleted_stream_raises_stream_not_found_for_writes_and_reads(
    open_store: StoreFactory, nc: Client
) -> None:
    # A long deadline: the error must come from the server's answer, not from giving up.
    store = await open_store(unique("gone"), JetStreamConfig(retry_deadline=_LONG))
    await store.save_event(ev("A", 1))
    await nc.jetstream().delete_stream(store.stream_name)
    with pytest.raises(StreamNotFoundError):
        await store.save_event(ev("A", 2))
    with pytest.raises(StreamNotFoundError):
        await store.save_events([ev("B", 1), ev("B", 2)])
    with pytest.raises(StreamNotFoundError):
        await store.get_latest_version("A")
    with pytest.raises(StreamNotFoundError):
        await store.get_events("A")
    assert store.cached_version("A") is None  # what it knew belonged to the old stream
    assert store.stats.retries == 0  # nothing was waited out


async def test_open_on_a_server_without_jetstream_fails_at_once() -> None:
    async with NatsServer(jetstream=False) as server:
        client = await nats.connect(server.url)
        try:
            with pytest.raises(JetStreamNotEnabledError):
                await JetStreamEventStore.open(
                    client, "events", JetStreamConfig(retry_deadline=_LONG)
                )
        finally:
            await client.close()


async def test_a_closed_store_stops_listening(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.close()
    await store.close()  # idempotent
    assert store._advisories is None


# -- found by the adversarial review: batches -----------------------------------------------


async def test_a_stale_batch_whose_first_id_is_taken_conflicts_like_a_cold_store(
    open_store: StoreFactory,
) -> None:
    """An atomic batch checks its ids before the expected sequence, so a 10201 answer to a
    batch sent from a stale cached tail says nothing of the tail: the version rule on the
    server's tail decides first, as it would for a cold store."""
    s1 = await open_store()
    s2 = await open_store()
    await s1.save_event(ev("x", 1, "id-1"))
    await s2.save_event(ev("x", 2, "id-2"))
    assert s1.cached_version("x") == 1
    for store in (s1, await open_store()):  # warm and stale, then cold
        with pytest.raises(VersionConflictError) as info:
            await store.save_events([ev("x", 2, "id-1"), ev("x", 3, "id-3")])
        assert info.value.current_version == 2
    assert await versions(s1, "x") == [1, 2]


async def test_resaving_a_batch_that_others_appended_after_conflicts_warm_or_cold(
    open_store: StoreFactory,
) -> None:
    s1 = await open_store()
    s2 = await open_store()
    await s1.save_event(ev("x", 1))
    batch = [ev("x", 2), ev("x", 3)]
    await s2.save_events(batch)
    await s2.save_event(ev("x", 4))
    for store in (s1, s2, await open_store()):
        with pytest.raises(VersionConflictError) as info:
            await store.save_events(batch)
        assert info.value.current_version == 4
    await s2.save_events([ev("x", 5), ev("x", 6)])
    batch = [ev("x", 7), ev("x", 8)]
    await s1.save_events(batch)
    await s1.save_events(batch)  # the whole batch is the tail: already stored
    await (await open_store()).save_events(batch)
    assert await versions(s1, "x") == [1, 2, 3, 4, 5, 6, 7, 8]


async def test_an_event_over_the_streams_max_msg_size_is_too_large(
    open_store: StoreFactory, nc: Client
) -> None:
    name = unique("small")
    await nc.jetstream().add_stream(
        name=name,
        subjects=[f"{name}.events.>"],
        max_msg_size=2048,
        duplicate_window=120,
    )
    store = await open_store(name)
    with pytest.raises(EventTooLargeError):
        await store.save_event(Event("Big", "x", 1, {"blob": "b" * 4096}))
    await store.save_event(ev("x", 1))
    assert await versions(store, "x") == [1]


async def test_resaving_the_newest_valid_event_under_a_malformed_tail_returns_normally(
    js_store: JetStreamEventStore, nc: Client
) -> None:
    """The latest event is the newest *valid* one: a foreign writer's malformed message
    after it changes neither the latest version nor what a re-save finds there."""
    single, batch = ev("a", 1), [ev("b", 1), ev("b", 2)]
    await js_store.save_event(single)
    await js_store.save_events(batch)
    for actor in ("a", "b"):
        await nc.jetstream().publish(js_store.subject_for(actor), b'{"id": "x", "version": ')
    await js_store.save_event(single)
    await js_store.save_events(batch)
    await (await JetStreamEventStore.attach(nc, js_store.stream_name)).save_events(batch)
    with pytest.raises(VersionConflictError) as info:
        await js_store.save_events([ev("b", 2), ev("b", 3)])
    assert info.value.current_version == 2
    assert await versions(js_store, "a") == [1]
    assert await versions(js_store, "b") == [1, 2]
    await js_store.save_event(ev("a", 2))
    assert await versions(js_store, "a") == [1, 2]


# -- found by review --------------------------------------------------------------------------


async def test_a_tail_read_just_before_the_stream_is_recreated_is_not_used(
    open_store: StoreFactory, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The append reads the tail from the server (the actor's tail message was deleted,
    so the cache is stale), and the stream is recreated right after that read: what was
    read belongs to the old stream and must not choose the expected sequence."""
    name = unique("race")
    s1 = await open_store(name)
    for version in (1, 2, 3):
        await s1.save_event(ev("A", version))
    await nc.jetstream().delete_msg(s1.stream_name, 3)  # A's tail is now v2 at seq 2
    read_tail = s1._read_tail
    recreated = False

    async def read_then_recreate(actor_id: str, subject: str) -> CacheEntry:
        nonlocal recreated
        tail = await read_tail(actor_id, subject)
        if not recreated:
            recreated = True
            generation = s1._cache.generation
            await nc.jetstream().delete_stream(s1.stream_name)
            s2 = await open_store(name)
            await s2.save_event(ev("B", 1))
            await s2.save_event(ev("A", 100))  # A's tail at seq 2, as just read
            await wait_until(lambda: s1._cache.generation != generation)  # advisory heard
        return tail

    monkeypatch.setattr(s1, "_read_tail", read_then_recreate)
    with pytest.raises(VersionConflictError) as info:
        await s1.save_event(ev("A", 3))
    assert recreated
    assert info.value.current_version == 100
    assert await versions(s1, "A") == [100]


async def test_mutating_a_snapshot_during_its_save_changes_nothing(
    js_store: JetStreamEventStore,
) -> None:
    await js_store.save_event(ev("A", 5))
    await js_store.save_snapshot(ActorSnapshot("A", 7, {"s": 7}))
    older = ActorSnapshot("A", 5, {"s": 5})
    saving = asyncio.ensure_future(js_store.save_snapshot(older))
    await asyncio.sleep(0)  # encoded, waiting for the stored snapshot
    older.version = 100
    await saving
    latest = await js_store.get_latest_snapshot("A")
    assert latest is not None and latest.version == 7


async def test_a_foreign_snapshot_of_another_actor_is_ignored(
    js_store: JetStreamEventStore, nc: Client
) -> None:
    subject = js_store.subject_for("A").replace(".events.", ".snapshots.")
    foreign = b'{"actorId":"B","version":3,"state":{},"timestamp":"2026-01-01T00:00:00Z"}'
    await nc.jetstream().publish(subject, foreign)
    assert await js_store.get_latest_snapshot("A") is None


async def test_a_closed_store_refuses_appends_and_still_reads(
    js_store: JetStreamEventStore,
) -> None:
    await js_store.save_event(ev("A", 1))
    await js_store.close()
    with pytest.raises(StoreClosedError):
        await js_store.save_event(ev("A", 2))
    assert await versions(js_store, "A") == [1]


async def test_the_id_of_a_purged_event_saved_again_stays_taken(
    open_store: StoreFactory, nc: Client
) -> None:
    """Found by the model test: a purged event stored again without a msg id left no trace
    of where its id lives, so another event could reuse the id. The re-store goes under a
    derived msg id that the next one to meet the purged sequence finds."""
    s1, s2 = await open_store(), await open_store()
    e1 = ev("A", 1)
    await s1.save_event(e1)
    for _ in range(3):  # purged and stored again, more than once
        await nc.jetstream().purge_stream(s1.stream_name, subject=s1.subject_for("A"))
        await s2.save_event(e1)
        await s1.save_event(e1)  # the same event: already stored
    for reuse in (ev("A", 2, e1.id), ev("B", 1, e1.id)):
        for store in (s1, s2, await open_store()):
            with pytest.raises(InvalidEventError):
                await store.save_event(reuse)
    assert [e.id for e in await s1.get_events("A")] == [e1.id]
    assert await versions(s1, "B") == []
