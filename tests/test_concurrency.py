"""Real concurrency: several OS processes, each with its own store, racing on shared actors."""

from __future__ import annotations

import multiprocessing
import uuid
from concurrent.futures import ProcessPoolExecutor

import nats
import pytest

from aether.store import JetStreamEventStore

from ._writer_process import run_writer


@pytest.mark.parametrize("trust_cache", [False, True], ids=["read-then-write", "stale-cache"])
async def test_processes_racing_on_shared_actors(nats_url: str, trust_cache: bool) -> None:
    stream = "race" + uuid.uuid4().hex[:8]
    actors = ["acc-1", "acc.2", "acc 3"]
    processes, appends = 4, 100
    async with await nats.connect(nats_url) as nc:
        await JetStreamEventStore.open(nc, stream)  # create it once, before the race

    context = multiprocessing.get_context("spawn")
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool,
    ):
        start = manager.Barrier(processes, timeout=60)
        futures = [
            pool.submit(run_writer, nats_url, stream, actors, appends, trust_cache, start)
            for _ in range(processes)
        ]
        results = [f.result(timeout=120) for f in futures]

    acknowledged = [ack for acks, _, _ in results for ack in acks]
    assert len(acknowledged) == processes * appends
    total_repairs = sum(repairs for _, _, repairs in results)
    if trust_cache:
        # Stale caches were used for every guess: the server caught them and the stores
        # repaired their entries.
        assert total_repairs > 0

    async with await nats.connect(nats_url) as nc:
        reader = await JetStreamEventStore.open(nc, stream)
        for actor in actors:
            stored = await reader.get_events(actor)
            acked_here = {(eid, v) for eid, a, v in acknowledged if a == actor}
            # Every version exactly once, contiguous (writers used latest + 1) ...
            assert [e.version for e in stored] == list(range(1, len(stored) + 1))
            # ... every acknowledged event present, nothing unacknowledged present.
            assert {(e.id, e.version) for e in stored} == acked_here
        await nc.jetstream().delete_stream(stream)
