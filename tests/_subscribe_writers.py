"""Writer processes for the subscription tests: each appends to actors of its own.

An actor of writer *prefix* is ``<prefix>-<j>``; its first event is ``Opened``, later ones
``Deposited`` or ``Withdrawn``; every seventh append is a batch of three (``save_events``).
Each writer is the only writer of its actors, so it never meets a conflict.
"""

from __future__ import annotations

import asyncio

import nats

from aether import Event
from aether.store import JetStreamEventStore


async def _write(url: str, stream: str, prefix: str, actors: int, events: int) -> list[str]:
    nc = await nats.connect(url)
    try:
        store = await JetStreamEventStore.open(nc, stream)
        versions = [0] * actors
        acked: list[str] = []
        i = 0
        while len(acked) < events:
            j = i % actors
            actor = f"{prefix}-{j}"
            n = 3 if i % 7 == 3 else 1
            batch = []
            for _ in range(n):
                versions[j] += 1
                v = versions[j]
                kind = "Opened" if v == 1 else "Deposited" if v % 3 else "Withdrawn"
                batch.append(Event(kind, actor, v, {"i": i, "v": v}))
            if n == 1:
                await store.save_event(batch[0])
            else:
                await store.save_events(batch)
            acked.extend(e.id for e in batch)
            i += 1
        return acked
    finally:
        await nc.close()


def run_writer(url: str, stream: str, prefix: str, actors: int, events: int) -> list[str]:
    """Append at least *events* events to actors ``<prefix>-0`` .. ``<prefix>-<actors-1>``
    (in a process of its own); the ids of the acknowledged events."""
    return asyncio.run(_write(url, stream, prefix, actors, events))
