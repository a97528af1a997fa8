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


async def test_keyed_locks_serialise_one_key_and_clean_up() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def critical(key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(f"{name}-in")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            order.append(f"{name}-out")

    await asyncio.gather(critical("k", "a"), critical("k", "b"), critical("other", "c"))
    # a and b never interleave on the same key
    ab = [x for x in order if x[0] in "ab"]
    assert ab in (["a-in", "a-out", "b-in", "b-out"], ["b-in", "b-out", "a-in", "a-out"])
    assert len(locks) == 0


async def test_cancelled_waiter_releases_its_slot() -> None:
    locks = KeyedLocks()
    held = locks.hold("k")
    await held.__aenter__()
    waiter = asyncio.create_task(_enter(locks))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await held.__aexit__(None, None, None)
    assert len(locks) == 0


async def _enter(locks: KeyedLocks) -> None:
    async with locks.hold("k"):
        pass
