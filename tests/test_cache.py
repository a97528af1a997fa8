"""The version cache (LRU) and per-actor locks."""

from __future__ import annotations

import asyncio

import pytest

from aether.store._cache import CacheEntry, KeyedLocks, VersionCache


def entry(v: int) -> CacheEntry:
    return CacheEntry(v, v * 10, f"e{v}")


def test_lru_eviction() -> None:
    cache = VersionCache(3)
    for i in range(3):
        cache.put(f"a{i}", entry(i))
    assert cache.get("a0") == entry(0)  # a0 is now the most recently used
    cache.put("a3", entry(3))
    assert len(cache) == 3
    assert cache.get("a1") is None
    assert cache.get("a0") == entry(0) and cache.get("a3") == entry(3)
    cache.discard("a0")
    assert cache.get("a0") is None
    with pytest.raises(ValueError):
        VersionCache(0)


def test_a_read_replaces_the_entry_unless_a_write_overtook_it() -> None:
    cache = VersionCache(2)
    cache.put("a", entry(5))
    before = cache.get("a")
    cache.put_read("a", entry(0), before)  # nothing changed meanwhile: a purge is the truth
    assert cache.get("a") == entry(0)
    before = cache.get("a")
    cache.put("a", entry(7))  # a write of this store lands while the read is in flight
    cache.put_read("a", entry(3), before)  # the read was overtaken: ignored
    assert cache.get("a") == entry(7)
    cache.put("b", entry(1))
    cache.put_read("a", entry(2), None)  # ignored, but "a" still counts as recently used
    cache.put("c", entry(1))
    assert cache.get("b") is None and cache.get("a") == entry(7)


def test_clear_ignores_what_was_learnt_before_it() -> None:
    cache = VersionCache(4)
    generation = cache.generation
    cache.put("a", entry(3), generation)
    assert cache.get("a") == entry(3)
    cache.clear()  # the stream was recreated
    assert cache.get("a") is None and len(cache) == 0
    cache.put("a", entry(3), generation)  # an append that began before the clear
    cache.put_read("b", entry(4), None, generation)
    assert cache.get("a") is None and cache.get("b") is None
    cache.put("a", entry(1), cache.generation)
    assert cache.get("a") == entry(1)


async def test_keyed_locks_serialise_one_key_and_clean_up() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def critical(key: str, name: str) -> None:
        await locks.acquire(key)
        try:
            order.append(f"{name}-in")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            order.append(f"{name}-out")
        finally:
            locks.release(key)

    await asyncio.gather(
        critical("k", "a"), critical("k", "b"), critical("k", "c"), critical("x", "d")
    )
    # a, b and c never interleave on the same key, and get it in arrival order
    assert [x for x in order if x[0] in "abc"] == [
        "a-in",
        "a-out",
        "b-in",
        "b-out",
        "c-in",
        "c-out",
    ]
    assert len(locks) == 0


async def test_cancelled_waiter_gives_up_its_place() -> None:
    locks = KeyedLocks()
    await locks.acquire("k")
    cancelled = asyncio.create_task(locks.acquire("k"))
    patient = asyncio.create_task(locks.acquire("k"))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    locks.release("k")
    await asyncio.sleep(0)
    assert patient.done()  # the lock skipped the cancelled waiter
    locks.release("k")
    assert len(locks) == 0


async def test_waiter_cancelled_after_handover_passes_the_lock_on() -> None:
    locks = KeyedLocks()
    await locks.acquire("k")
    first = asyncio.create_task(locks.acquire("k"))
    second = asyncio.create_task(locks.acquire("k"))
    await asyncio.sleep(0)
    locks.release("k")  # hands the lock to `first` ...
    first.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0)
    assert second.done()  # the lock was passed on, not lost
    locks.release("k")
    assert len(locks) == 0
