"""Real concurrency: several OS processes, each with its own store, racing on shared actors."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from ._stores import store_factory, unique
from ._writer_process import run_writer

pytestmark = pytest.mark.slow

PROCESSES, APPENDS = 4, 100


def _race(url: str, stream: str, actors: list[str], trust_cache: bool) -> list[Any]:
    """Run the writer processes, released together by a barrier; their reports."""
    context = multiprocessing.get_context("spawn")
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(max_workers=PROCESSES, mp_context=context) as pool,
    ):
        start = manager.Barrier(PROCESSES, timeout=60)
        futures = [
            pool.submit(run_writer, url, stream, actors, APPENDS, trust_cache, start)
            for _ in range(PROCESSES)
        ]
        return [f.result(timeout=120) for f in futures]


@pytest.mark.parametrize("trust_cache", [False, True], ids=["read-then-write", "stale-cache"])
async def test_processes_racing_on_shared_actors(nats_url: str, trust_cache: bool) -> None:
    stream = unique("race")
    actors = ["acc-1", "acc.2", "acc 3"]
    async with store_factory([nats_url]) as open_store:
        reader = await open_store(stream)  # creates the stream before the race
        results = await asyncio.to_thread(_race, nats_url, stream, actors, trust_cache)

        acknowledged = [ack for acks, _, _ in results for ack in acks]
        assert len(acknowledged) == PROCESSES * APPENDS
        if trust_cache:
            # Every guess came from a possibly stale cache: the server caught the stale
            # ones and the stores repaired their entries.
            assert sum(repairs for _, _, repairs in results) > 0
        for actor in actors:
            stored = await reader.get_events(actor)
            acked_here = {(eid, v) for eid, a, v in acknowledged if a == actor}
            # Every version exactly once, contiguous (writers used latest + 1) ...
            assert [e.version for e in stored] == list(range(1, len(stored) + 1))
            # ... every acknowledged event present, nothing unacknowledged present.
            assert {(e.id, e.version) for e in stored} == acked_here
