"""``JetStreamEventStore.subscribe`` against real servers: writer processes, foreign
writers, faults, a leader change, a long history. (What both stores share is in the
contract suite, ``aether.testing.contract``, section "subscriptions".)

The truth a subscription is checked against is read back afterwards, through the
per-actor reads: the positions of every stored event, in order. A subscription must
yield exactly those (filtered: those its filter passes), each once. Waits are for
conditions, each guarded against a hang only; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import multiprocessing
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import nats
import pytest
from nats.aio.client import Client

from aether import Event, ReplayError, StoreUnavailableError, StreamNotFoundError
from aether.bus import SubscriptionFilter
from aether.store import (
    InMemoryEventStore,
    JetStreamConfig,
    JetStreamEventStore,
    Subscription,
    _replay,
)
from aether.store._subscription import _MIN_PULL_BYTES, _JetStreamFeed
from aether.testing import NatsCluster, NatsServer

from ._stores import StoreFactory, store_factory, unique
from ._subscribe_writers import run_writer
from ._workload import Writer, wait_for_progress

GUARD = 120.0  # seconds: a guard against a hang, never a speed requirement
ROOT = Path(__file__).resolve().parent.parent


async def until(condition: Callable[[], bool | Awaitable[bool]], guard: float = GUARD) -> None:
    """Wait until *condition* (a function, possibly async) holds."""
    async with asyncio.timeout(guard):
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.01)


async def take(sub: Subscription, n: int) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(GUARD):
        while len(events) < n:
            events.append(await anext(sub))
    return events


class Reader:
    """A task reading a subscription into a list until it is closed."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.events: list[Event] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for event in self.sub:
            self.events.append(event)

    async def finish_at(self, last_position: int) -> list[Event]:
        """Wait until the subscription has read up to *last_position*, close it, and
        return what it yielded (raising whatever the iterator raised)."""
        await until(lambda: self.sub.position >= last_position or self.task.done())
        await self.sub.close()
        await self.task
        return self.events


async def stored_events(store: JetStreamEventStore, actors: Iterable[str]) -> list[Event]:
    """Every stored event of *actors*, in position order (the per-actor reads)."""
    events = [e for actor in actors for e in await store.get_events(actor)]
    events.sort(key=lambda e: e.position or 0)
    return events


async def stream_state(nc: Client, stream: str) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
    state: dict[str, Any] = json.loads(msg.data)["state"]
    return state


def positions(events: Iterable[Event]) -> list[int]:
    return [e.position or 0 for e in events]


# -- writers in other OS processes -----------------------------------------------------------

ACTORS_PER_WRITER = 12
EVENT_TYPES = SubscriptionFilter(event_types={"Opened", "Withdrawn"}, actor_pattern="during-*")


@pytest.mark.slow
async def test_writer_processes_before_during_and_after_the_start(nats_url: str) -> None:
    """Writer processes append to many actors before the subscriptions start, while they
    catch up, and once they are live. Each subscription yields exactly the stream's
    events (a filtered one: exactly those its filter passes), in position order, each
    once; one closed mid-way and resumed with ``after=<last position handled>`` yields,
    in two parts, exactly the same."""
    stream = unique("subproc")
    async with store_factory([nats_url]) as open_store:
        writer_store = await open_store(stream)  # creates the stream
        reader = await open_store(stream)  # the subscriptions' own connection
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=3, mp_context=context) as pool:

            def spawn(prefix: str, events: int) -> asyncio.Future[list[str]]:
                return loop.run_in_executor(
                    pool, run_writer, nats_url, stream, prefix, ACTORS_PER_WRITER, events
                )

            # Before: a backlog.
            await asyncio.gather(spawn("before-0", 150), spawn("before-1", 150))
            backlog = (await stream_state(writer_store._nc, stream))["last_seq"]
            # During: three writers start; the subscriptions start once they are going.
            during = [spawn(f"during-{i}", 300) for i in range(3)]

            async def writing() -> bool:
                return bool((await stream_state(writer_store._nc, stream))["last_seq"] > backlog)

            await until(writing)
            everything = Reader(reader.subscribe())
            filtered = Reader(reader.subscribe(filter=EVENT_TYPES))
            first_part: list[Event] = []
            async with reader.subscribe() as sub:
                async for event in sub:
                    first_part.append(event)
                    if len(first_part) == backlog + 100:  # in the middle of "during"
                        break
            resumed = Reader(reader.subscribe(after=first_part[-1].position or 0))
            await asyncio.gather(*during)
            # After: once a subscription has caught up, more writers.
            await until(lambda: everything.sub.caught_up)
            await asyncio.gather(spawn("after-0", 150), spawn("after-1", 150))

        prefixes = ["before-0", "before-1", "during-0", "during-1", "during-2"]
        prefixes += ["after-0", "after-1"]
        actors = [f"{p}-{j}" for p in prefixes for j in range(ACTORS_PER_WRITER)]
        truth = await stored_events(writer_store, actors)
        state = await stream_state(writer_store._nc, stream)
        assert len(truth) == state["messages"] == state["last_seq"]  # every message an event
        last = state["last_seq"]

        # The subscription started while the "during" writers were going: its backlog
        # (what was stored at its start) ends among their events.
        feed: Any = everything.sub._feed
        assert backlog < feed.target < backlog + 3 * 300, (backlog, feed.target)
        got = await everything.finish_at(last)
        assert positions(got) == positions(truth)
        assert [e.id for e in got] == [e.id for e in truth]
        assert everything.sub.stats.delivered == len(truth)

        got_filtered = await filtered.finish_at(last)
        wanted = [e for e in truth if EVENT_TYPES.matches(e)]
        assert positions(got_filtered) == positions(wanted) and wanted
        stats = filtered.sub.stats
        assert stats.delivered + stats.filtered_out == len(truth)

        rest = await resumed.finish_at(last)
        assert positions(first_part + rest) == positions(truth)
        assert first_part[-1].position is not None and first_part[-1].position > backlog


# -- foreign writers ------------------------------------------------------------------------


async def test_malformed_foreign_messages_are_skipped_and_counted(
    js_store: JetStreamEventStore, nc: Client
) -> None:
    """Messages no store could have written, on the events subjects (not JSON, not an
    event, an event on another actor's subject, a subject that is no actor's token), in
    the backlog and live: skipped and counted, the position moves past them, and the
    events around them are all yielded."""
    js = nc.jetstream()
    prefix = f"{js_store.stream_name}.events."
    alice = Event("Opened", "alice", 1).to_json()
    foreign = [
        (prefix + "x", b"not json"),
        (prefix + "x", b'{"foo": 1}'),
        (prefix + "bob", alice),  # alice's event on bob's subject
        (prefix + "a.b", Event("Opened", "a.b", 1).to_json()),  # "a.b" encodes as a_2Eb
        (prefix + "_41", Event("Opened", "A", 1).to_json()),  # "A" is its own token
    ]
    good = [Event("Opened", "carol", 1), Event("Deposited", "carol", 2)]
    await js_store.save_event(good[0])
    for subject, data in foreign[:3]:
        await js.publish(subject, data)
    await js_store.save_event(good[1])
    async with js_store.subscribe() as sub:
        assert await take(sub, 2) == good
        assert sub.stats.malformed == 3 and sub.caught_up
        for subject, data in foreign[3:]:  # live
            await js.publish(subject, data)
        late = Event("Deposited", "carol", 3)
        await js_store.save_event(late)
        assert await take(sub, 1) == [late]
        stats = sub.stats
        assert (stats.malformed, stats.delivered) == (5, 3)
        assert sub.position == (await stream_state(nc, js_store.stream_name))["last_seq"]
        # And at the end: the position reaches a trailing malformed message.
        ack = await js.publish(prefix + "x", b"\xff")
        waiting = asyncio.ensure_future(anext(sub))
        await until(lambda: sub.position == ack.seq)
        assert sub.stats.malformed == 6 and not waiting.done()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting


async def test_large_events_grow_the_pulls(open_store: StoreFactory) -> None:
    """Events larger than a pull's first byte limit (a pull then brings nothing and the
    next asks for twice as much) are delivered, in catch-up and live."""
    store = await open_store(config=JetStreamConfig(storage="memory"))
    blob = "x" * 300_000
    first = [Event("Blob", f"big-{i % 3}", i // 3 + 1, {"blob": blob}) for i in range(9)]
    for event in first:
        await store.save_event(event)
    async with store.subscribe() as sub:
        assert [e.id for e in await take(sub, 9)] == [e.id for e in first]
        small, large = Event("Small", "s", 1), Event("Blob", "big-0", 4, {"blob": blob * 2})
        await store.save_event(small)
        await store.save_event(large)
        assert [e.id for e in await take(sub, 2)] == [small.id, large.id]


def _budget_held(store: JetStreamEventStore) -> int:
    """The bytes of the store connection's shared replay budget held now."""
    budget = _replay._BUDGETS[store._nc]
    return budget.capacity - budget.available


async def _all_waiting_live(subs: list[Subscription], last: int) -> None:
    """Wait until every subscription has read up to *last* and its pull is waiting at the
    server (a heartbeat came for it: the consumer has nothing more to deliver)."""

    feeds = [cast(_JetStreamFeed, sub._feed) for sub in subs]
    assert all(isinstance(feed, _JetStreamFeed) for feed in feeds)

    def waiting() -> bool:
        return all(
            sub.position >= last and sub.caught_up and feed._idle
            for sub, feed in zip(subs, feeds, strict=True)
        )

    await until(waiting)


async def test_idle_subscriptions_after_a_large_catch_up_hold_the_minimum_budget(
    open_store: StoreFactory,
) -> None:
    """Regression: a catch-up of large events grows the pulls (up to 8 MiB); once caught
    up, the pull left waiting at the server must be a small one: each idle subscription
    holds ``_MIN_PULL_BYTES`` of the connection's replay budget, and a replay on the same
    connection finds the rest free."""
    store = await open_store(config=JetStreamConfig(storage="memory"))
    blob = "x" * 200_000
    for i in range(60):
        await store.save_event(Event("Blob", "big", i + 1, {"blob": blob}))
    await store.save_event(Event("Small", "small", 1))
    subs = [store.subscribe() for _ in range(2)]
    readers = [Reader(sub) for sub in subs]
    await _all_waiting_live(subs, 61)
    assert _budget_held(store) == len(subs) * _MIN_PULL_BYTES
    assert [e.version for e in await store.get_events("small")] == [1]
    for reader in readers:
        assert len(await reader.finish_at(61)) == 61


async def test_many_idle_subscriptions_on_one_connection_leave_the_budget_free(
    open_store: StoreFactory,
) -> None:
    """Regression: 300 idle subscriptions on one connection (past the 256 that once
    filled the budget with 64 KiB each) hold ``_MIN_PULL_BYTES`` each, leave room for a
    replay, and all see a new event."""
    store = await open_store(config=JetStreamConfig(storage="memory"))
    await store.save_events([Event("Opened", "x", v + 1, {"pad": "p" * 200}) for v in range(50)])
    subs = [store.subscribe() for _ in range(300)]
    readers = [Reader(sub) for sub in subs]
    await _all_waiting_live(subs, 50)
    assert _budget_held(store) == len(subs) * _MIN_PULL_BYTES
    budget = _replay._BUDGETS[store._nc]
    assert budget.available >= budget.capacity // 2
    assert len(await store.get_events("x")) == 50
    await store.save_event(Event("Closed", "x", 51))
    for reader in readers:
        assert positions(await reader.finish_at(51)) == list(range(1, 52))


async def test_caught_up_when_the_stream_ends_with_a_message_that_is_no_event(
    nats_url: str, nc: Client
) -> None:
    """On an operator's stream that also holds another subject, the backlog's last
    message may be no event: the subscription never reads it, yet becomes caught up once
    the stream leader confirms that no event is left before it."""
    name = unique("ops")
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.events.>", f"{name}.audit"])
    try:
        config = JetStreamConfig(request_timeout=timedelta(seconds=0.5))
        store = await JetStreamEventStore.attach(nc, name, config)
        event = Event("Opened", "a", 1)
        await store.save_event(event)
        await js.publish(f"{name}.audit", b"not an event, not on an events subject")
        async with store.subscribe() as sub:
            assert await take(sub, 1) == [event]
            assert not sub.caught_up  # the backlog ends at the audit message
            await until(lambda: sub.caught_up)
            assert sub.position == 1 and sub.stats.malformed == 0
    finally:
        await js.delete_stream(name)


# -- the stream going away --------------------------------------------------------------------


@pytest.mark.parametrize("recreated", [False, True], ids=["deleted", "recreated"])
async def test_deleted_stream_raises_stream_not_found(
    open_store: StoreFactory, nc: Client, recreated: bool
) -> None:
    """A subscription whose stream is deleted (or deleted and created again: a new
    history whose positions say nothing of the old one's) raises StreamNotFoundError from
    the iterator, and is closed."""
    stream = unique("gone")
    store = await open_store(stream)
    await store.save_event(Event("Opened", "a", 1))
    sub = store.subscribe()
    await take(sub, 1)
    await nc.jetstream().delete_stream(store.stream_name)
    if recreated:
        again = await open_store(stream)
        await again.save_event(Event("Opened", "a", 1))
        await again.save_event(Event("Opened", "b", 1))
    with pytest.raises(StreamNotFoundError):
        async with asyncio.timeout(GUARD):
            await anext(sub)
    assert sub.closed
    with pytest.raises(StopAsyncIteration):
        await anext(sub)


# -- faults ---------------------------------------------------------------------------------


async def reconnecting(url: str) -> Client:
    # Reconnect quickly and forever: the store's retry deadline decides when to give up.
    return await nats.connect(url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)


@pytest.mark.fault
async def test_server_restart_mid_subscription_loses_and_repeats_nothing(
    fresh_nats_server: NatsServer,
) -> None:
    """SIGKILL the only server (file storage) under live writers and a subscription
    reading them, restart it on the same data: the subscription recreates its consumer
    after the last event received and yields exactly the stream's events."""
    config = JetStreamConfig(storage="file", request_timeout=timedelta(milliseconds=500))
    stream = unique("restart")
    writer_nc = await reconnecting(fresh_nats_server.url)
    reader_nc = await reconnecting(fresh_nats_server.url)
    try:
        writer_store = await JetStreamEventStore.open(writer_nc, stream, config)
        store = await JetStreamEventStore.open(reader_nc, stream, config)
        writers = [Writer(writer_store, f"acc-{i}") for i in range(6)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in writers]
        await wait_for_progress(writers, 30)
        reader = Reader(store.subscribe())
        await until(lambda: len(reader.events) >= 20)
        fresh_nats_server.kill()
        await until(lambda: not reader_nc.is_connected)
        await asyncio.to_thread(fresh_nats_server.restart)
        await wait_for_progress(writers, 30)
        await until(lambda: reader.sub.caught_up)
        stop.set()
        await asyncio.gather(*tasks)
        assert [f for w in writers for f in w.failed] == []
        truth = await stored_events(store, [w.actor for w in writers])
        got = await reader.finish_at(positions(truth)[-1])
        print(f"\n[subscribe across a server restart] events={len(truth)} {reader.sub.stats}")
        assert positions(got) == positions(truth)
        assert [e.id for e in got] == [e.id for e in truth]
        assert reader.sub.stats.restarts >= 1
    finally:
        await writer_nc.close()
        await reader_nc.close()


@pytest.mark.fault
async def test_past_the_deadline_unavailable_then_resume_after_position(
    fresh_nats_server: NatsServer,
) -> None:
    """With the server down past ``retry_deadline`` the iterator raises
    StoreUnavailableError (the subscription is then closed); once the server is back, a
    subscription resumed with ``after=sub.position`` goes on exactly after it."""
    config = JetStreamConfig(
        request_timeout=timedelta(milliseconds=500), retry_deadline=timedelta(seconds=1)
    )
    nc = await reconnecting(fresh_nats_server.url)
    try:
        store = await JetStreamEventStore.open(nc, unique("down"), config)
        before = [Event("Opened", f"d-{i}", 1) for i in range(3)]
        for event in before:
            await store.save_event(event)
        sub = store.subscribe()
        assert await take(sub, 3) == before
        fresh_nats_server.kill()
        with pytest.raises(StoreUnavailableError):
            async with asyncio.timeout(GUARD):
                await anext(sub)
        assert sub.closed
        await asyncio.to_thread(fresh_nats_server.restart)
        after = [Event("Deposited", f"d-{i}", 2) for i in range(3)]
        for event in after:
            await store.save_event(event)
        async with store.subscribe(after=sub.position) as resumed:
            assert await take(resumed, 3) == after
    finally:
        await nc.close()


@pytest.mark.fault
async def test_consumer_deleted_under_a_live_subscription(
    js_store: JetStreamEventStore, nc: Client
) -> None:
    """An operator (or the server) deletes the subscription's consumer: it is recreated
    after the last event received, and nothing is lost or repeated."""
    first = [Event("Opened", f"c-{i}", 1) for i in range(5)]
    for event in first:
        await js_store.save_event(event)
    async with js_store.subscribe() as sub:
        assert await take(sub, 5) == first
        feed: Any = sub._feed
        name = feed.consumer
        await nc.jetstream().delete_consumer(js_store.stream_name, name)
        second = [Event("Deposited", f"c-{i}", 2) for i in range(5)]
        for event in second:
            await js_store.save_event(event)
        assert await take(sub, 5) == second
        assert feed.consumer != name and sub.stats.restarts >= 1


@pytest.mark.fault
@pytest.mark.parametrize("lost", [3, 10], ids=["then-a-message", "then-a-heartbeat"])
async def test_a_message_lost_on_the_way_is_detected_and_read_again(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch, lost: int
) -> None:
    """A message the server delivered that never reaches the subscription (nats-py drops
    what passes a subscription's pending limits) is a gap in the consumer's delivery
    sequence: the next message shows it, or, if it was the last, the consumer's next
    idle heartbeat. The consumer is recreated after the last message received, and the
    lost event is yielded in its place. (The loss is injected in the client's callback.)"""
    store = await open_store(config=JetStreamConfig(request_timeout=timedelta(seconds=0.5)))
    events = [Event("Opened", f"l-{i}", 1) for i in range(10)]
    for event in events:
        await store.save_event(event)
    nc = store._nc
    real_subscribe = nc.subscribe
    dropped: list[str] = []

    async def lossy_subscribe(subject: str, *args: Any, cb: Any = None, **kwargs: Any) -> Any:
        if cb is None:
            return await real_subscribe(subject, *args, **kwargs)
        inner = cb

        async def lossy(msg: Any) -> None:
            if not dropped and msg.reply and msg.reply.split(".")[5] == str(lost):
                dropped.append(msg.reply)  # the lost message: never handed on
                return
            await inner(msg)

        kwargs["cb"] = lossy
        return await real_subscribe(subject, *args, **kwargs)

    monkeypatch.setattr(nc, "subscribe", lossy_subscribe)
    async with store.subscribe() as sub:
        got = await take(sub, 10)
        assert [e.id for e in got] == [e.id for e in events]
        assert len(dropped) == 1 and sub.stats.restarts >= 1


async def test_close_and_garbage_collection_delete_the_consumer(
    js_store: JetStreamEventStore, nc: Client
) -> None:
    """``close()`` deletes the subscription's server-side consumer; so does dropping a
    subscription without closing it (its ``__del__`` stops its task)."""
    await js_store.save_event(Event("Opened", "g", 1))
    stream = js_store.stream_name

    async def consumers() -> int:
        return int((await stream_state(nc, stream))["consumer_count"])

    sub = js_store.subscribe()
    await take(sub, 1)
    assert await consumers() == 1
    await sub.close()
    await until(lambda: _is(consumers, 0))
    dropped = js_store.subscribe()
    await take(dropped, 1)
    assert await consumers() == 1
    del dropped
    gc.collect()
    await until(lambda: _is(consumers, 0))


async def _is(count: Callable[[], Awaitable[int]], expected: int) -> bool:
    return await count() == expected


@pytest.mark.cluster
@pytest.mark.fault
async def test_leader_changes_on_r3_lose_nothing(nats_cluster: NatsCluster) -> None:
    """On an R3 stream, a subscription (started on a backlog, so that ``caught_up`` is
    seen to cover every event acknowledged before it started) keeps going while the node
    hosting its consumer, then the stream leader, are SIGKILLed under live writers: it
    yields exactly the stream's events."""
    config = JetStreamConfig(replica_count=3, request_timeout=timedelta(milliseconds=500))
    stream = unique("subr3")
    clients = [
        await nats.connect(
            servers=nats_cluster.urls, reconnect_time_wait=0.2, max_reconnect_attempts=-1
        )
        for _ in range(2)
    ]
    killed: list[int] = []
    try:
        writer_store = await JetStreamEventStore.open(clients[0], stream, config)
        store = await JetStreamEventStore.open(clients[1], stream, config)
        writers = [Writer(writer_store, f"acc-{i}") for i in range(6)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in writers]
        await wait_for_progress(writers, 10)
        acked_before = {e.id for w in writers for e in w.acked}
        reader = Reader(store.subscribe())
        await until(lambda: reader.sub.caught_up)
        assert acked_before <= {e.id for e in list(reader.events)}
        feed: Any = reader.sub._feed
        for round_ in range(2):
            if round_ == 0:  # the node hosting the consumer
                info = await clients[1].jetstream().consumer_info(stream, feed.consumer)
                victim = nats_cluster.names.index(info.cluster.leader)
            else:  # the stream leader
                victim = await asyncio.to_thread(nats_cluster.leader_of, stream)
            restarts = reader.sub.stats.restarts
            nats_cluster.kill(victim)
            killed.append(victim)
            await asyncio.to_thread(nats_cluster.wait_for_leader, stream, 60, exclude={victim})
            await wait_for_progress(writers, 10)
            if round_ == 0:  # its consumer was lost: it made a new one

                def restarted(before: int = restarts) -> bool:
                    return reader.sub.stats.restarts > before

                await until(restarted)
            await asyncio.to_thread(nats_cluster.start, victim)
            killed.remove(victim)
            await wait_for_progress(writers, 10)
        stop.set()
        await asyncio.gather(*tasks)
        assert [f for w in writers for f in w.failed] == []
        truth = await stored_events(store, [w.actor for w in writers])
        got = await reader.finish_at(positions(truth)[-1])
        print(f"\n[subscribe across leader changes] events={len(truth)} {reader.sub.stats}")
        assert positions(got) == positions(truth)
        assert [e.id for e in got] == [e.id for e in truth]
    finally:
        for client in clients:
            await client.close()
        for victim in killed:
            await asyncio.to_thread(nats_cluster.start, victim)


# -- bounded memory ---------------------------------------------------------------------------

HISTORY = 100_000
SHORT_HISTORY = 20_000


async def write_history(store: JetStreamEventStore, n: int) -> None:
    """*n* small events over ten actors, in atomic batches of 1,000."""
    for first in range(0, n, 1000):
        actor = f"h-{(first // 1000) % 10}"
        version = first // 10_000 * 1000
        await store.save_events(
            [
                Event("Deposited", actor, version + v, {"amount": v, "note": "deposit"})
                for v in range(1, 1001)
            ]
        )


async def traced_catch_up(store: JetStreamEventStore, n: int) -> tuple[int, int]:
    """(traced peak bytes, most messages buffered) while a subscription reads *n* events
    without keeping them."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        count, expected = 0, 1
        async with store.subscribe() as sub:
            async for event in sub:
                assert event.position == expected
                expected += 1
                count += 1
                if count == n:
                    break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    feed: Any = sub._feed
    return peak - start, feed.peak_buffered


def rss_catch_up(url: str, stream: str, n: int) -> dict[str, int]:
    """Peak RSS growth of a catch-up of *n* events, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-m", "tests._subscribe_rss", url, stream, str(n)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=GUARD,
    ).stdout
    result: dict[str, int] = json.loads(out)
    assert result["events"] == n
    return result


@pytest.mark.fault
async def test_catch_up_over_100k_events_runs_in_bounded_memory(
    open_store: StoreFactory, nats_url: str, record_property: Callable[[str, object], None]
) -> None:
    """Catch-up over 100,000 events holds no more than over 20,000: at most two pull
    batches of messages are buffered, the memory traced in-process stays under a bound
    derived from the batch size, and the peak RSS growth of a process doing only the
    catch-up does not grow with the history."""
    short_name, long_name = unique("mem20k"), unique("mem100k")
    memory = JetStreamConfig(storage="memory")
    short, long = await open_store(short_name, memory), await open_store(long_name, memory)
    await write_history(short, SHORT_HISTORY)
    await write_history(long, HISTORY)

    traced_short, buffered_short = await traced_catch_up(short, SHORT_HISTORY)
    traced_long, buffered_long = await traced_catch_up(long, HISTORY)
    rss_short = await asyncio.to_thread(rss_catch_up, nats_url, short_name, SHORT_HISTORY)
    rss_long = await asyncio.to_thread(rss_catch_up, nats_url, long_name, HISTORY)
    growth_short = rss_short["peak"] - rss_short["rss_before"]
    growth_long = rss_long["peak"] - rss_long["rss_before"]
    measured = {
        "traced_20k": traced_short,
        "traced_100k": traced_long,
        "buffered_20k": buffered_short,
        "buffered_100k": buffered_long,
        "rss_growth_20k": growth_short,
        "rss_growth_100k": growth_long,
        "rss_peak_buffered_100k": rss_long["peak_buffered"],
    }
    record_property("subscribe_memory", measured)
    print(f"subscribe catch-up memory: {measured}")

    batch = long.config.replay_batch_size
    assert buffered_long <= 2 * batch and rss_long["peak_buffered"] <= 2 * batch
    # Each buffered message is a ~100-byte payload with its subject and ack reply (and,
    # while it passes through nats-py, a Msg): well under 4 KiB.
    bound = 2 * batch * 4096
    assert traced_long < bound, (traced_long, bound)
    assert traced_long < 2 * traced_short + 256 * 1024, (traced_long, traced_short)
    # RSS is coarser (allocator arenas): five times the history, no more than a few MiB
    # more, and far below what holding 100,000 events takes (~100 MiB).
    assert growth_long < growth_short + 8 * 1024 * 1024, (growth_long, growth_short)
    assert growth_long < 32 * 1024 * 1024, growth_long


# -- the in-memory store, across threads -----------------------------------------------------


async def test_memory_store_appends_from_other_threads_wake_subscribers() -> None:
    """The in-memory store's appends may come from any thread (each with its own event
    loop): they wake the subscriptions waiting in other loops, which yield every event in
    position order, once."""
    store = InMemoryEventStore()
    threads, per_thread = 3, 60

    def write(t: int) -> None:
        async def run() -> None:
            for v in range(1, per_thread + 1):
                await store.save_event(Event("Deposited", f"t-{t}", v))

        asyncio.run(run())

    other_loop: list[Event] = []
    ready = threading.Event()

    def subscribe_in_a_thread() -> None:
        async def run() -> None:
            async with store.subscribe() as sub:
                ready.set()
                other_loop.extend(await take(sub, threads * per_thread))

        asyncio.run(run())

    subscriber = threading.Thread(target=subscribe_in_a_thread)
    subscriber.start()
    async with store.subscribe() as sub:
        waiting = asyncio.ensure_future(take(sub, threads * per_thread))
        await asyncio.to_thread(ready.wait, GUARD)
        writers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
        for thread in writers:
            thread.start()
        here = await waiting
        for thread in writers:
            await asyncio.to_thread(thread.join, GUARD)
    await asyncio.to_thread(subscriber.join, GUARD)
    expected = list(range(1, threads * per_thread + 1))
    assert positions(here) == expected
    assert positions(other_loop) == expected
    assert [e.id for e in here] == [e.id for e in other_loop]


async def test_memory_store_catch_up_copies_a_chunk_at_a_time() -> None:
    """Catching up on a long in-memory history holds a few hundred entries at a time:
    the traced peak over 100,000 events is about that over 20,000."""
    peaks = []
    for n in (SHORT_HISTORY, HISTORY):
        store = InMemoryEventStore()
        for first in range(1, n + 1, 1000):
            await store.save_events([Event("D", "m", v) for v in range(first, first + 1000)])
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            start, _ = tracemalloc.get_traced_memory()
            count = 0
            async with store.subscribe() as sub:
                async for _ in sub:
                    count += 1
                    if count == n:
                        break
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        peaks.append(peak - start)
    assert peaks[1] < 2 * peaks[0] + 64 * 1024, peaks
    assert peaks[1] < 1024 * 1024, peaks


async def test_on_malformed_is_told_each_skipped_message_with_its_bytes(
    js_store: JetStreamEventStore, nc: Client
) -> None:
    """``on_malformed`` gets a ReplayError per skipped message (position, raw bytes,
    the error), from the iterating task, before the next event is yielded."""
    js = nc.jetstream()
    prefix = f"{js_store.stream_name}.events."
    await js_store.save_event(Event("Opened", "carol", 1))
    alice = Event("Opened", "alice", 1).to_json()
    bad = await js.publish(prefix + "x", b"not json")
    wrong = await js.publish(prefix + "bob", alice)  # alice's event on bob's subject
    await js_store.save_event(Event("Deposited", "carol", 2))
    told: list[ReplayError] = []
    async with js_store.subscribe(on_malformed=told.append) as sub:
        events = await take(sub, 2)
    assert [e.version for e in events] == [1, 2]
    assert [(t.sequence_number, t.raw_data) for t in told] == [
        (bad.seq, b"not json"),
        (wrong.seq, alice),
    ]
    assert all(isinstance(t.error, ValueError) for t in told)
    assert sub.stats.malformed == 2
