"""Bounded memory (issue 3, point 7): the version cache and replay.

- ``VersionCache`` on its own: 200,000 actors through a 1,000-entry cache never hold more
  than 1,000 entries, in exact LRU order (checked against an independent model), and the
  memory the bounded cache keeps is a small fraction of an unbounded one's.
- A JetStream store with ``version_cache_size=1000`` writes 200,000 distinct actors from
  128 concurrent tasks (about 25 s on 2 shared cores, memory storage for the stream since
  the server's storage plays no part in the client's cache): the cache never exceeds the
  bound, ends holding exactly the 1,000 most recently written actors in LRU order, a hit
  moves an actor to the young end, and evicted actors stay correct (a stale version is
  still a ``VersionConflictError`` with the true current version, ``get_latest_version``
  is right, the next version is accepted), nothing is lost, no lock is left behind.
- ``iter_events`` over a 100,000-event actor: the peak memory traced while iterating
  (without keeping the events) is about what 10,000 events take, far below what holding
  the history takes, and under a bound derived from the replay batch size.

The cache's size is read through the store's private ``_cache`` (``VersionCache`` has no
public accessor but ``len``), its LRU order through ``VersionCache._entries``; reading it
there does not touch the order, whereas ``cached_version`` (a ``get``) would.
No timing assertions.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nats.aio.client import Client

from aether import Event, VersionConflictError
from aether.store import JetStreamConfig, JetStreamEventStore
from aether.store._cache import CacheEntry, VersionCache

from ._stores import StoreFactory

pytestmark = pytest.mark.fault

CACHE_BOUND = 1_000
ACTORS = 200_000
WRITERS = 128  # concurrent asyncio tasks writing actors
HISTORY = 100_000
SMALL_HISTORY = HISTORY // 10
BATCH = 1_000  # save_events batch size (the server's atomic batch limit)


def lru_order(cache: VersionCache) -> list[str]:
    """The cached actor ids, least recently used first, without touching the order."""
    return list(cache._entries)


# -- the cache on its own ---------------------------------------------------------------------


def test_version_cache_holds_the_bound_in_lru_order_over_200k_actors() -> None:
    cache = VersionCache(CACHE_BOUND)
    last_use: dict[str, int] = {}  # the model: when each key was last put or found
    tick = 0

    def use(key: str) -> None:
        nonlocal tick
        tick += 1
        last_use[key] = tick

    hot = "hot"
    cache.put(hot, CacheEntry(1, 1, None))
    use(hot)
    for i in range(ACTORS):
        key = f"actor-{i}"
        cache.put(key, CacheEntry(1, i + 2, key))
        use(key)
        assert len(cache) <= CACHE_BOUND
        if i % 100 == 0:  # a hot actor, used every 100 writes, is never evicted
            assert cache.get(hot) is not None
            use(hot)
        if i % 997 == 0 and i >= CACHE_BOUND:  # an evicted actor is not found (nor revived)
            assert cache.get(f"actor-{i - CACHE_BOUND}") is None
    assert len(cache) == CACHE_BOUND
    youngest = sorted(last_use, key=last_use.__getitem__)[-CACHE_BOUND:]
    assert lru_order(cache) == youngest
    assert hot in youngest and "actor-0" not in youngest


def test_bounded_cache_memory_is_a_fraction_of_an_unbounded_one(
    record_property: Callable[[str, object], None],
) -> None:
    def retained(max_size: int) -> int:
        """Bytes still allocated after 200,000 actors went through a cache of *max_size*."""
        gc.collect()
        tracemalloc.start()
        try:
            cache = VersionCache(max_size)
            for i in range(ACTORS):
                cache.put(f"actor-{i}", CacheEntry(i, i, None))
            size, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(cache) == min(max_size, ACTORS)
        return size

    bounded, unbounded = retained(CACHE_BOUND), retained(ACTORS)
    record_property("retained_bytes", {"bounded": bounded, "unbounded": unbounded})
    print(f"VersionCache, {ACTORS} actors: bounded keeps {bounded} B, unbounded {unbounded} B")
    # 200x fewer entries; allow for the fixed costs of the OrderedDict and the loop.
    assert bounded < unbounded / 50, (bounded, unbounded)


# -- through a JetStream store ----------------------------------------------------------------


async def test_store_cache_stays_bounded_and_correct_with_200k_actors(
    open_store: StoreFactory, nc: Client
) -> None:
    config = JetStreamConfig(version_cache_size=CACHE_BOUND, storage="memory")
    store = await open_store(config=config)
    other = await open_store(config=config)  # another process, as far as NATS knows
    completed: list[str] = []
    largest = 0
    todo = iter(range(ACTORS))

    async def writer() -> None:
        nonlocal largest
        for i in todo:
            actor = f"actor-{i}"
            await store.save_event(Event("Opened", actor, 1, {"i": i}))
            # save_event put the actor in the cache in the same event-loop step as it
            # returned here, so `completed` is the order of the cache's puts.
            completed.append(actor)
            largest = max(largest, len(store._cache))

    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    assert len(completed) == ACTORS
    assert largest == CACHE_BOUND  # reached, never exceeded
    assert lru_order(store._cache) == completed[-CACHE_BOUND:]
    assert store.stats.cache_misses == ACTORS and store.stats.stale_cache_repairs == 0

    # LRU: a hit makes the least recently used actor the youngest; new actors then evict
    # the next-oldest ones instead.
    oldest, *next_oldest = lru_order(store._cache)[:11]
    await store.save_event(Event("Touched", oldest, 2))
    assert lru_order(store._cache)[-1] == oldest
    for n in range(10):
        await store.save_event(Event("Opened", f"late-{n}", 1))
    order = lru_order(store._cache)
    assert oldest in order and not set(next_oldest) & set(order)
    assert len(order) == CACHE_BOUND

    # Evicted actors stay correct: the server, not the cache, decides.
    evicted = completed[: ACTORS - CACHE_BOUND : 2_000]
    assert not set(evicted) & set(order)
    for n, actor in enumerate(evicted):
        current = 1
        if n % 2:
            await other.save_event(Event("Elsewhere", actor, 2))
            current = 2
        with pytest.raises(VersionConflictError) as info:
            await store.save_event(Event("Stale", actor, 1))
        assert info.value.current_version == current
        assert await store.get_latest_version(actor) == current
        await store.save_event(Event("Next", actor, current + 1))
        assert len(store._cache) <= CACHE_BOUND
    extra = 1 + 10 + len(evicted) + len(evicted) // 2  # touched, late, next, elsewhere
    reader = await open_store(config=config)
    assert [e.version for e in await reader.get_events(evicted[1])] == [1, 2, 3]
    assert await reader.get_latest_version(completed[0]) == 2  # evicted[0]: 1, then 2
    stream = await nc.jetstream().stream_info(store.stream_name)
    assert stream.state.messages == ACTORS + extra  # every acknowledged write is there
    assert len(store._locks) == 0  # no per-actor lock left behind


# -- replay -----------------------------------------------------------------------------------


async def write_history(store: JetStreamEventStore, actor: str, n: int) -> None:
    for first in range(1, n + 1, BATCH):
        await store.save_events(
            [
                Event("Deposited", actor, v, {"amount": v, "currency": "EUR", "note": "deposit"})
                for v in range(first, min(first + BATCH, n + 1))
            ]
        )


async def traced_peak(run: Callable[[], Awaitable[object]]) -> tuple[int, int]:
    """(peak, still allocated) bytes traced while *run* ran, from a collected heap."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        kept = await run()
        now, peak = tracemalloc.get_traced_memory()
        del kept
    finally:
        tracemalloc.stop()
    return peak - start, now - start


async def count_in_order(events: AsyncIterator[Event]) -> int:
    """Iterate without keeping anything; check the versions are 1..n in order."""
    expected = 1
    async for event in events:
        assert event.version == expected
        expected += 1
    return expected - 1


async def test_iter_events_memory_stays_flat_over_100k_events(
    open_store: StoreFactory, record_property: Callable[[str, object], None]
) -> None:
    store = await open_store(config=JetStreamConfig(storage="memory"))
    await write_history(store, "big", HISTORY)
    await write_history(store, "small", SMALL_HISTORY)

    async def iterate(actor: str, n: int) -> None:
        assert await count_in_order(store.iter_events(actor)) == n

    peak_small, _ = await traced_peak(lambda: iterate("small", SMALL_HISTORY))
    peak_big, left_big = await traced_peak(lambda: iterate("big", HISTORY))
    _, held_small = await traced_peak(lambda: store.get_events("small"))  # kept: a list
    record_property(
        "traced_bytes",
        {"peak_10k": peak_small, "peak_100k": peak_big, "held_10k": held_small},
    )
    print(f"iter_events traced peak: 10k {peak_small}, 100k {peak_big}; 10k held {held_small}")

    # Ten times the history, about the same peak: memory does not grow with the length.
    assert peak_big < 2 * peak_small, (peak_big, peak_small)
    # Holding the 100,000 events would take ~10x what 10,000 take; iterating takes < 5%.
    assert peak_big < 0.05 * held_small * (HISTORY / SMALL_HISTORY), (peak_big, held_small)
    # iter_events keeps at most two pull batches (2 x replay_batch_size messages) in
    # flight. Each buffered message is a ~100-byte payload plus nats-py's Msg, its subject
    # and reply strings, well under 4 KiB; decoding holds one Event at a time.
    bound = 2 * store.config.replay_batch_size * 4096
    assert peak_big < bound, (peak_big, bound)
    assert left_big < 256 * 1024  # nothing of the replay stays allocated
