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


def test_put_newer_never_replaces_a_later_message() -> None:
    cache = VersionCache(2)
    cache.put_newer("a", entry(5))
    cache.put_newer("a", entry(3))  # a read overtaken by a write: ignored
    assert cache.get("a") == entry(5)
    cache.put_newer("a", entry(7))
    assert cache.get("a") == entry(7)
    cache.put("b", entry(1))
    cache.put_newer("a", entry(2))  # ignored, but "a" still counts as recently used
    cache.put("c", entry(1))
    assert cache.get("b") is None and cache.get("a") == entry(7)


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
