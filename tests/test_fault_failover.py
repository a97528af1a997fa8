"""Crashes of real servers while writers append: leader failover on R3, server restarts.

Every test SIGKILLs nats-server processes under live writers and then audits the stream
against what each writer was told: nothing acknowledged is lost or stored twice, and no
writer is told that its own event conflicted. Waits are for conditions (a new leader,
writers making progress), never fixed sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from aether import Event, StoreUnavailableError, VersionConflictError
from aether.store import JetStreamConfig, JetStreamEventStore
from aether.store._direct import DirectBatch
from aether.store._jsapi import StoredMsg
from aether.testing import NatsCluster, NatsServer

from ._stores import unique
from ._workload import Audit, Writer, audit, wait_for_progress

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    """A cluster of its own: these tests crash nodes."""
    with NatsCluster(size=3) as c:
        yield c


@pytest.fixture
async def connect(cluster: NatsCluster) -> AsyncIterator[list[str]]:
    """Yields the cluster's URLs; afterwards every node is up and the cluster ready."""
    yield cluster.urls
    if len(cluster.running()) < cluster.size:
        await asyncio.to_thread(cluster.start)


async def client(servers: list[str]) -> Client:
    # Reconnect quickly and forever: the store's retry deadline decides when to give up.
    return await nats.connect(servers=servers, reconnect_time_wait=0.2, max_reconnect_attempts=-1)


R3 = JetStreamConfig(replica_count=3)


def report(name: str, result: Audit, **faults: int) -> None:
    extra = " ".join(f"{k}={v}" for k, v in faults.items())
    print(
        f"\n[{name}] written={result.written} {extra} retries={result.retries} "
        f"lost={result.lost} duplicates={result.duplicates} "
        f"spurious_conflicts={result.spurious_conflicts}"
    )


async def test_writers_survive_two_leader_crashes(cluster: NatsCluster, connect: list[str]) -> None:
    stream = unique("failover")
    clients = [await client(connect) for _ in range(4)]
    try:
        stores = [await JetStreamEventStore.open(nc, stream, R3) for nc in clients]
        writers = [Writer(stores[i % 4], f"acc-{i}") for i in range(12)]
        reader = await JetStreamEventStore.open(clients[0], stream, R3)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in writers]
        await wait_for_progress(writers, 5)
        kills = 0
        for _ in range(2):
            leader = await asyncio.to_thread(cluster.leader_of, stream)
            cluster.kill(leader)
            kills += 1
            await asyncio.to_thread(cluster.wait_for_leader, stream, 60, exclude={leader})
            # Authoritative right after the change: at least every acknowledged write,
            # at most the one a writer may have in flight.
            for writer in writers:
                before = len(writer.acked)
                latest = await reader.get_latest_version(writer.actor)
                assert before <= latest <= len(writer.acked) + 1
            await wait_for_progress(writers, 5)  # writes resume with a node down
            await asyncio.to_thread(cluster.start, leader)
            await wait_for_progress(writers, 5)
        stop.set()
        await asyncio.gather(*tasks)
        assert [f for w in writers for f in w.failed] == []  # no exception while a quorum is up
        result = await audit(reader, writers)
        report("leader failover", result, kills=kills)
        assert result.lost == result.duplicates == result.spurious_conflicts == 0
        assert result.stored == result.written
        assert result.retries > 0  # the writers did meet the crashes
        for writer in writers:
            assert await reader.get_latest_version(writer.actor) == len(writer.acked)
    finally:
        for nc in clients:
            await nc.close()


async def test_replay_after_a_leader_change_has_every_acknowledged_event(
    cluster: NatsCluster, connect: list[str]
) -> None:
    stream = unique("reads")
    writer_nc, reader_nc = await client(connect), await client(connect)
    try:
        store = await JetStreamEventStore.open(writer_nc, stream, R3)
        acked: dict[str, list[str]] = {}
        for n in range(8):
            batch = [Event("Opened", f"acc-{n}", v) for v in range(1, 26)]
            await store.save_events(batch)
            acked[batch[0].actor_id] = [e.id for e in batch]
        for _ in range(2):
            leader = await asyncio.to_thread(cluster.leader_of, stream)
            cluster.kill(leader)
            # A reader with a cold cache asks at once, during the election.
            reader = await JetStreamEventStore.open(reader_nc, stream, R3)
            for actor, ids in acked.items():
                assert await reader.get_latest_version(actor) == len(ids)
                assert [e.id for e in await reader.get_events(actor)] == ids
            for actor, ids in acked.items():  # and writes go on at the new leader
                event = Event("Deposited", actor, len(ids) + 1)
                await store.save_event(event)
                ids.append(event.id)
            await asyncio.to_thread(cluster.start, leader)
    finally:
        await writer_nc.close()
        await reader_nc.close()


async def test_replay_tops_up_what_a_lagging_replica_did_not_deliver(
    cluster: NatsCluster, connect: list[str]
) -> None:
    """A replay consumer hosted on a follower may trail the leader; the store fills the
    gap from the leader. The lag is simulated by a consumer that stops early."""
    nc = await client(connect)
    try:
        config = JetStreamConfig(replica_count=3, direct_get=False)
        store = await JetStreamEventStore.open(nc, unique("lag"), config)
        events = [Event("Deposited", "acc", v) for v in range(1, 41)]
        await store.save_events(events)
        replayer = store._replay
        real_drain = replayer._drain
        truncated = 0

        async def lagging_drain(
            stream: str, name: str, pending: int, batch: int
        ) -> AsyncGenerator[list[StoredMsg], None]:
            nonlocal truncated
            truncated += 1
            async for messages in real_drain(stream, name, min(pending, 30), batch):
                yield messages

        replayer._drain = lagging_drain  # type: ignore[method-assign]
        assert [e.id for e in await store.get_events("acc")] == [e.id for e in events]
        assert [e.version async for e in store.iter_events("acc", 35)] == list(range(35, 41))
        # Each replay drained a lagging consumer at least once (more if a loaded machine
        # made a consumer stall and the replay resume with a new one).
        assert truncated >= 2
    finally:
        await nc.close()


async def test_a_direct_get_from_a_lagging_replica_is_topped_up_from_the_leader(
    cluster: NatsCluster, connect: list[str]
) -> None:
    """Every replica of an R3 stream answers direct gets, a follower perhaps before it
    has applied the newest acknowledged writes; the load is bounded by the leader's last
    sequence and topped up. The lag is simulated: each direct answer loses its last ten
    messages and says nothing is left."""
    nc = await client(connect)
    try:
        store = await JetStreamEventStore.open(nc, unique("lagdirect"), R3)
        events = [Event("Deposited", "acc", v) for v in range(1, 41)]
        await store.save_events(events)
        direct = store._replay.direct
        real_batch = direct.batch
        truncated = 0

        async def lagging_batch(*args: Any, **kwargs: Any) -> DirectBatch | None:
            nonlocal truncated
            answer = await real_batch(*args, **kwargs)
            if answer is not None and len(answer.messages) > 10:
                truncated += 1
                return DirectBatch(answer.messages[:-10], 0, answer.answered_by)
            return answer

        direct.batch = lagging_batch  # type: ignore[method-assign]
        assert [e.id for e in await store.get_events("acc")] == [e.id for e in events]
        assert [e.version async for e in store.iter_events("acc", 25)] == list(range(25, 41))
        assert truncated == 2  # both loads met the lag
    finally:
        await nc.close()


async def test_past_the_deadline_without_quorum_a_typed_error_and_no_loss(
    cluster: NatsCluster, connect: list[str]
) -> None:
    stream = unique("quorum")
    nc = await client(connect)
    try:
        config = JetStreamConfig(
            replica_count=3,
            request_timeout=timedelta(milliseconds=500),
            retry_deadline=timedelta(seconds=2),
        )
        store = await JetStreamEventStore.open(nc, stream, config)
        await store.save_event(Event("Opened", "acc", 1))
        leader = await asyncio.to_thread(cluster.leader_of, stream)
        followers = [i for i in range(cluster.size) if i != leader]
        cluster.kill(followers[0])
        cluster.kill(followers[1])  # the leader alone has no quorum: nothing commits
        second = Event("Deposited", "acc", 2)
        with pytest.raises(StoreUnavailableError):
            await store.save_event(second)
        await asyncio.to_thread(cluster.start)
        # The outcome was unknown; saving the same event again settles it exactly once.
        await store.save_event(second)
        await store.save_event(Event("Deposited", "acc", 3))
        assert [e.version for e in await store.get_events("acc")] == [1, 2, 3]
    finally:
        await nc.close()


@pytest.mark.parametrize("within", [True, False], ids=["within-deadline", "past-deadline"])
async def test_single_server_crash_and_restart(fresh_nats_server: NatsServer, within: bool) -> None:
    """SIGKILL the only server under live writers, restart it on the same data dir.

    Within the retry deadline every in-flight save completes. Past a short deadline the
    in-flight saves raise StoreUnavailableError: each such event may or may not be
    stored, and saving the same event again settles it. Either way the stored state
    matches what callers were told.
    """
    config = JetStreamConfig(
        storage="file",
        request_timeout=timedelta(milliseconds=500),
        retry_deadline=timedelta(seconds=60 if within else 1),
    )
    nc = await client([fresh_nats_server.url])
    try:
        store = await JetStreamEventStore.open(nc, unique("restart"), config)
        writers = [Writer(store, f"acc-{i}") for i in range(8)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in writers]
        await wait_for_progress(writers, 10)
        fresh_nats_server.kill()
        await _wait_until(lambda: not nc.is_connected)
        if not within:
            await asyncio.gather(*tasks)  # each writer's in-flight save raised
        fresh_nats_server.restart()
        unknown = 0
        if not within:
            for writer in writers:
                [(event, exc)] = writer.failed
                assert isinstance(exc, StoreUnavailableError)
                await store.save_event(event)  # lands now, or is recognised as landed
                writer.acked.append(event)
                writer.failed.clear()
                unknown += 1
            tasks = [asyncio.create_task(w.run(stop)) for w in writers]
        await wait_for_progress(writers, 10)
        stop.set()
        await asyncio.gather(*tasks)
        assert [f for w in writers for f in w.failed] == []
        result = await audit(store, writers)
        deadline = "within" if within else "past"
        report(f"server restart, {deadline} deadline", result, kills=1, unknown=unknown)
        assert result.lost == result.duplicates == result.spurious_conflicts == 0
        assert result.stored == result.written
        # The store and its cache keep working: warm saves hit, stale saves conflict.
        hits = store.stats.cache_hits
        actor = writers[0].actor
        latest = len(writers[0].acked)
        await store.save_event(Event("Deposited", actor, latest + 1))
        assert store.stats.cache_hits == hits + 1
        with pytest.raises(VersionConflictError) as conflict:
            await store.save_event(Event("Deposited", actor, latest))
        assert conflict.value.current_version == latest + 1
    finally:
        await nc.close()


async def _wait_until(condition: Callable[[], bool], guard: float = 60) -> None:
    """Poll *condition* until true; *guard* (seconds) only guards against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + guard
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
