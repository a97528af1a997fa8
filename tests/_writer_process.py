"""A writer process for the concurrency tests: its own connection, its own store."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import nats

from aether import Event, VersionConflictError
from aether.store import JetStreamEventStore


async def _write(
    url: str, stream: str, actors: list[str], appends: int, trust_cache: bool, start: Any
) -> Any:
    nc = await nats.connect(url)
    try:
        store = await JetStreamEventStore.open(nc, stream)
        start.wait()  # a barrier: every process starts racing at once
        acknowledged: list[tuple[str, str, int]] = []
        conflicts = 0
        for i in range(appends):
            actor = actors[(i + os.getpid()) % len(actors)]
            # trust_cache: guess from the (possibly stale) cache, the way Go Aether's
            # SaveEvent trusts it; otherwise ask the server first.
            cached = store.cached_version(actor) if trust_cache else None
            version = (cached if cached is not None else await store.get_latest_version(actor)) + 1
            while True:
                event = Event(
                    event_type="Deposited",
                    actor_id=actor,
                    version=version,
                    data={"pid": os.getpid(), "i": i},
                )
                try:
                    await store.save_event(event)
                except VersionConflictError as exc:
                    conflicts += 1
                    version = exc.current_version + 1
                    continue
                acknowledged.append((event.id, actor, version))
                break
        stats = store.stats
        return acknowledged, conflicts, stats.stale_cache_repairs
    finally:
        await nc.close()


def run_writer(
    url: str, stream: str, actors: list[str], appends: int, trust_cache: bool, start: Any
) -> Any:
    return asyncio.run(_write(url, stream, actors, appends, trust_cache, start))
