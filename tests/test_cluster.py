"""Replicated (R3) streams on a real 3-node JetStream cluster.

A clustered leader answers differently from a single server: a re-sent message may meet
"duplicate message id is in process" while the first copy commits, and racing writers
may meet a "wrong last sequence" without a number while another write is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aether import Event, VersionConflictError
from aether.store import JetStreamConfig
from aether.testing import NatsCluster

from ._faults import AckDropper
from ._stores import StoreFactory, store_factory

pytestmark = pytest.mark.cluster


@pytest.fixture
async def open_r3_store(nats_cluster: NatsCluster) -> AsyncIterator[StoreFactory]:
    async with store_factory(nats_cluster.urls, JetStreamConfig(replica_count=3)) as factory:
        yield factory


def ev(actor: str, version: int) -> Event:
    return Event(event_type="Deposited", actor_id=actor, version=version)


async def test_lost_acks_on_a_replicated_stream(open_r3_store: StoreFactory) -> None:
    store = await open_r3_store()
    dropper = AckDropper(store)
    saved = []
    for version in range(1, 21):
        dropper.drop_next(version % 2)
        event = ev("acc", version)
        await store.save_event(event)  # never a JetStreamError for an event that landed
        saved.append(event.id)
    assert dropper.dropped == 10
    assert [e.id for e in await store.get_events("acc")] == saved
    assert store.stats.conflicts == 0


async def test_lost_ack_of_a_batch_on_a_replicated_stream(open_r3_store: StoreFactory) -> None:
    store = await open_r3_store()
    dropper = AckDropper(store)
    stored = []
    for start in range(1, 16, 3):
        dropper.drop_next(1)
        batch = [ev("acc", v) for v in range(start, start + 3)]
        await store.save_events(batch)
        stored += [e.id for e in batch]
    assert dropper.dropped == 5
    assert [e.id for e in await store.get_events("acc")] == stored


async def test_racing_writers_on_one_actor(open_r3_store: StoreFactory) -> None:
    stores = [await open_r3_store() for _ in range(6)]
    acknowledged: list[Event] = []

    async def writer(store_index: int) -> None:
        store = stores[store_index]
        for _ in range(15):
            version = (store.cached_version("hot") or 0) + 1
            while True:
                event = ev("hot", version)
                try:
                    await store.save_event(event)
                except VersionConflictError as exc:
                    version = exc.current_version + 1
                    continue
                acknowledged.append(event)
                break

    await asyncio.gather(*(writer(i) for i in range(len(stores))))
    stored = await stores[0].get_events("hot")
    assert [e.version for e in stored] == list(range(1, 91))
    assert {e.id for e in stored} == {e.id for e in acknowledged}
    assert await stores[-1].get_latest_version("hot") == 90
