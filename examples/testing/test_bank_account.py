"""Testing code built on aether against real nats-servers: no mocks of NATS."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from aether import Event, VersionConflictError
from aether.store import InMemoryEventStore, JetStreamConfig, JetStreamEventStore, SnapshotStore
from aether.testing import NatsCluster, NatsServer


async def balance(store: SnapshotStore, account: str) -> int:
    """The code under test: an account's balance, replayed from its events."""
    total = 0
    async for event in store.iter_events(account):
        total += event.data["amount"]
    return total


# --8<-- [start:basic]
@pytest.mark.asyncio
async def test_balance(store: JetStreamEventStore) -> None:
    await store.save_event(Event("Deposited", "acct-1", 1, {"amount": 30}))
    await store.save_event(Event("Deposited", "acct-1", 2, {"amount": 12}))
    assert await balance(store, "acct-1") == 42


# --8<-- [end:basic]


# --8<-- [start:both-backends]
@pytest.fixture(params=["memory", "jetstream"])
def any_store(request: pytest.FixtureRequest) -> SnapshotStore:
    """The same test on the in-process store and on JetStream."""
    if request.param == "memory":
        return InMemoryEventStore()
    js_store: JetStreamEventStore = request.getfixturevalue("store")
    return js_store


@pytest.mark.asyncio
async def test_balance_on_any_store(any_store: SnapshotStore) -> None:
    await any_store.save_event(Event("Deposited", "acct-1", 1, {"amount": 5}))
    assert await balance(any_store, "acct-1") == 5


# --8<-- [end:both-backends]


# --8<-- [start:two-writers]
@pytest.mark.asyncio
async def test_a_second_writer_gets_a_conflict(nats_url: str) -> None:
    # Two connections and two stores: as two processes of your service would be.
    config = JetStreamConfig(namespace=uuid.uuid4().hex)
    nc_a, nc_b = await nats.connect(nats_url), await nats.connect(nats_url)
    try:
        a = await JetStreamEventStore.open(nc_a, "bank", config)
        b = await JetStreamEventStore.open(nc_b, "bank", config)
        await a.save_event(Event("Deposited", "acct-1", 1, {"amount": 1}))
        await b.save_event(Event("Deposited", "acct-1", 2, {"amount": 2}))
        # a's cache still says version 1; the server knows better.
        with pytest.raises(VersionConflictError) as conflict:
            await a.save_event(Event("Deposited", "acct-1", 2, {"amount": 3}))
        assert conflict.value.current_version == 2
    finally:
        await nc_a.close()
        await nc_b.close()


# --8<-- [end:two-writers]


# --8<-- [start:restart]
@pytest.mark.asyncio
async def test_events_survive_a_server_restart(fresh_nats_server: NatsServer) -> None:
    nc = await nats.connect(fresh_nats_server.url)  # nats-py reconnects by default
    try:
        store = await JetStreamEventStore.open(nc, "bank")  # file storage (the default)
        await store.save_event(Event("Deposited", "acct-1", 1, {"amount": 7}))
        # The harness is synchronous: run blocking calls in a thread inside async tests.
        await asyncio.to_thread(fresh_nats_server.restart)  # same port, same data
        # The store re-sends requests while the client reconnects.
        assert await balance(store, "acct-1") == 7
    finally:
        await nc.close()


# --8<-- [end:restart]


# --8<-- [start:cluster]
@pytest.mark.cluster
@pytest.mark.asyncio
async def test_replicated_store(nats_cluster: NatsCluster) -> None:
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        config = JetStreamConfig(namespace=uuid.uuid4().hex, replica_count=3)
        store = await JetStreamEventStore.open(nc, "bank", config)
        await store.save_event(Event("Deposited", "acct-1", 1, {"amount": 9}))
        leader = await asyncio.to_thread(nats_cluster.leader_of, store.stream_name)
        assert leader in nats_cluster.running()
        assert await balance(store, "acct-1") == 9
    finally:
        await nc.close()


# --8<-- [end:cluster]


# --8<-- [start:context-manager]
@pytest.mark.asyncio
async def test_without_the_plugin() -> None:
    # NatsServer and NatsCluster are context managers (with and async with) anywhere:
    # scripts, notebooks, other test runners.
    async with NatsServer() as server:
        nc = await nats.connect(server.url)
        store = await JetStreamEventStore.open(nc, "bank")
        await store.save_event(Event("Deposited", "acct-1", 1, {"amount": 1}))
        assert await store.get_latest_version("acct-1") == 1
        await nc.close()


# --8<-- [end:context-manager]
