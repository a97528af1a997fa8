"""Replays of large events (issue fault 7): a replay must never overflow the client.

nats-server drops a client whose outbound buffer exceeds ``max_pending`` (64 MiB by
default) as a "Slow Consumer", and nats-py drops messages of a subscription holding more
than its pending limits. A replay used to keep two pull requests of ``replay_batch_size``
messages in flight whatever their size: 1,000 events of 100 KB at once. It now also bounds
the bytes its pull requests may bring (``max_bytes``), and goes on after a pull the server
ended at that bound. All the replays on one connection share one byte budget (the
server's buffer is per connection): many at once do not overflow it either.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import timedelta
from typing import Any, cast

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from aether import Event, JetStreamError
from aether.store import JetStreamConfig, JetStreamEventStore, _replay

from ._stores import unique

MEMORY = JetStreamConfig(storage="memory")


class Conn:
    """A connection that never reconnects and records every error it reports."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.nc = Client()

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(exc)

    def assert_intact(self) -> None:
        """Still connected, never reconnected, no error: neither nats-py's "Slow
        Consumer" nor the reset with which the server cuts off a slow consumer."""
        assert self.nc.is_connected
        assert self.nc.stats["reconnects"] == 0
        assert not [e for e in self.errors if isinstance(e, nats.errors.SlowConsumerError)]
        assert self.errors == []
        # Every replay has ended: the connection's replay budget is whole again.
        budget = _replay._BUDGETS.get(self.nc)
        assert budget is None or budget.available == budget.capacity


@pytest.fixture
async def conn(nats_url: str) -> AsyncIterator[Conn]:
    c = Conn()
    await c.nc.connect(nats_url, allow_reconnect=False, error_cb=c.on_error)
    yield c
    await c.nc.close()


@contextlib.asynccontextmanager
async def opened(
    nats_url: str, nc: Client, config: JetStreamConfig = MEMORY
) -> AsyncIterator[JetStreamEventStore]:
    """A store on *nc* and a fresh stream, deleted afterwards (it holds a lot of data)."""
    store = await JetStreamEventStore.open(nc, unique("big"), config)
    try:
        yield store
    finally:
        async with await nats.connect(nats_url) as admin:
            js = admin.jetstream()
            for stream in (store.stream_name, f"{store.stream_name}_snapshots"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream)


def blob_event(actor: str, version: int, size: int) -> Event:
    return Event(event_type="Blob", actor_id=actor, version=version, data={"blob": "x" * size})


async def write(store: JetStreamEventStore, actor: str, sizes: list[int], per_batch: int) -> None:
    """Append events of *sizes* (data bytes) to *actor*, *per_batch* per atomic batch."""
    for start in range(0, len(sizes), per_batch):
        chunk = sizes[start : start + per_batch]
        await store.save_events(
            [blob_event(actor, start + i + 1, size) for i, size in enumerate(chunk)],
            expected_version=start,
        )


def check(events: list[Event], sizes: list[int]) -> None:
    assert [e.version for e in events] == list(range(1, len(sizes) + 1))
    assert [len(e.data["blob"]) for e in events] == sizes


def near_max_payload(nc: Client) -> int:
    # save_event refuses a payload above max_payload - 256 - len(id) (id: a 36-char uuid);
    # the event's JSON envelope around its data takes a few hundred bytes.
    return nc.max_payload - 256 - 36 - 1024


@pytest.mark.slow
@pytest.mark.parametrize(
    ("count", "size", "per_batch"),
    [(1100, 100_000, 50), (160, None, 8)],
    ids=["1100x100KB", "160x1MB"],
)
async def test_replay_of_large_events_keeps_the_connection(
    nats_url: str, conn: Conn, count: int, size: int | None, per_batch: int
) -> None:
    """The regression: 110 MB (or 160 MB) of history on one connection that cannot
    reconnect. Before the fix the server cut the client off as a slow consumer."""
    sizes = [size or near_max_payload(conn.nc)] * count
    async with opened(nats_url, conn.nc) as store:
        await write(store, "big", sizes, per_batch)
        retries = store.stats.retries

        check(await store.get_events("big"), sizes)
        conn.assert_intact()

        streamed = [event async for event in store.iter_events("big")]
        check(streamed, sizes)
        conn.assert_intact()
        assert store.stats.retries == retries  # no stalled replay resumed either


async def test_pull_ended_by_max_bytes_is_continued(nats_url: str, conn: Conn) -> None:
    """500 events of 40 KB are 20 MB: more than one pull may bring, so a replay with
    batches of 500 needs more pulls than the message count alone calls for."""
    sizes = [40_000] * 500
    config = JetStreamConfig(storage="memory", replay_batch_size=500)
    async with opened(nats_url, conn.nc, config) as store:
        await write(store, "acct", sizes, 100)
        before = conn.nc.stats["out_msgs"]
        check(await store.get_events("acct"), sizes)
        # Besides the pulls: the consumer's creation and deletion.
        pulls = conn.nc.stats["out_msgs"] - before - 2
        assert pulls >= 3  # 20 MB at most 8 MiB a pull
        conn.assert_intact()


@pytest.mark.parametrize("pulls", [1, 2])
@pytest.mark.parametrize("batch", [1, 3, 10, 500])
async def test_pulls_ended_by_bytes_and_by_count_mixed(
    nats_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch, batch: int, pulls: int
) -> None:
    """The smallest budget (each pull admits one message of max_payload, no more; one or
    two pulls in flight), events of random sizes: pulls end by their byte bound, their
    message count, or the end of the subject in every order, and each is followed by the
    next."""
    one_message = conn.nc.max_payload + _replay._REPLAY_MSG_OVERHEAD
    monkeypatch.setattr(_replay, "_REPLAY_BYTES_IN_FLIGHT", pulls * one_message)
    assert _replay._replay_window(conn.nc.max_payload) == (pulls, one_message)
    rng = random.Random(7)
    sizes = [rng.choice([10, 1_000, 30_000, 200_000, 600_000]) for _ in range(120)]
    config = JetStreamConfig(storage="memory", replay_batch_size=batch)
    async with opened(nats_url, conn.nc, config) as store:
        await write(store, "mix", sizes, 20)
        check(await store.get_events("mix"), sizes)
        # A replay from the middle starts its consumer past the first message.
        tail = await store.get_events("mix", from_version=61)
        assert [e.version for e in tail] == list(range(61, 121))
        conn.assert_intact()


async def test_a_pull_refused_as_more_than_pending_does_not_end_the_replay(
    nats_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages deleted after the consumer counted them: the second pull finds the first
    already covering everything left, and the server refuses it (408 Requests Pending).
    That ends only that pull: the first still brings what is left."""
    real_create = _replay.Replayer._create_consumer

    async def create_then_delete(
        replayer: _replay.Replayer, stream: str, subject: str, start_seq: int
    ) -> tuple[str, int] | None:
        created = await real_create(replayer, stream, subject, start_seq)
        js = conn.nc.jetstream()
        for seq in range(2, 41):
            await js.delete_msg(stream, seq)
        return created

    monkeypatch.setattr(_replay.Replayer, "_create_consumer", create_then_delete)
    config = JetStreamConfig(storage="memory", replay_batch_size=4, direct_get=False)
    async with opened(nats_url, conn.nc, config) as store:
        await write(store, "acct", [10] * 40, 40)
        assert [e.version for e in await store.get_events("acct")] == [1]
        assert store.stats.retries == 0
        conn.assert_intact()


async def test_a_message_larger_than_a_pull_is_an_error_not_a_loop(
    nats_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull's max_bytes admits the largest message the server accepts; should a stored
    message be larger still, each pull would end with nothing delivered. The replay
    says so instead of sending pulls forever."""
    monkeypatch.setattr(_replay, "_replay_window", lambda max_payload: (2, 4_000))
    # (A direct get always brings at least one message: the consumer's pulls are tested.)
    async with opened(nats_url, conn.nc, JetStreamConfig(direct_get=False)) as store:
        await write(store, "acct", [100, 10_000, 100], 3)
        with pytest.raises(JetStreamError, match="larger than 4000 bytes"):
            await store.get_events("acct")
        conn.assert_intact()


@pytest.mark.slow
async def test_concurrent_replays_share_the_connection_budget(nats_url: str, conn: Conn) -> None:
    """The regression: six replays of 30 MB at once on one connection. With a budget per
    replay (16 MiB each, 96 MiB in all) the server's buffer for the client passed its
    64 MiB max_pending and it cut the client off; the budget is per connection now."""
    actors = [f"big{i}" for i in range(6)]
    sizes = [100_000] * 300
    async with opened(nats_url, conn.nc) as store:
        for actor in actors:
            await write(store, actor, sizes, 50)
        # Three stores (JsApi objects) on the one connection: the budget is the connection's.
        stores = [store] + [
            await JetStreamEventStore.open(conn.nc, store.stream_name, MEMORY) for _ in range(2)
        ]
        async with asyncio.timeout(120):
            replays = await asyncio.gather(
                *(stores[i % 3].get_events(actor) for i, actor in enumerate(actors))
            )
        for events in replays:
            check(events, sizes)
        conn.assert_intact()
        assert sum(s.stats.retries for s in stores) == 0  # no stalled replay resumed either


def replay(store: JetStreamEventStore, actor: str) -> AsyncGenerator[Event, None]:
    """store.iter_events, typed as what it is (an async generator: it can be closed)."""
    return cast(AsyncGenerator[Event, None], store.iter_events(actor))


def one_pull_budget(monkeypatch: pytest.MonkeyPatch, nc: Client, pulls: int) -> int:
    """Make the connection's budget *pulls* pulls of one max-size message; returns that."""
    one_message = nc.max_payload + _replay._REPLAY_MSG_OVERHEAD
    monkeypatch.setattr(_replay, "_REPLAY_BYTES_IN_FLIGHT", pulls * one_message)
    return one_message


@pytest.mark.parametrize("budget", ["default", "one pull"])
async def test_a_replay_held_open_does_not_block_another(
    nats_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch, budget: str
) -> None:
    """A reader holds an iter_events open mid-way, not consuming, and meanwhile replays
    another large actor on the same connection. The held replay's pulls give their
    budget back when their end arrives, not when its reader gets to it: with a budget of
    one pull (which the held replay had in flight when it stopped) the other replay
    would otherwise wait forever. (request_timeout is long, so this is not the release
    of a silent pull's budget after two quiet periods.)"""
    if budget == "one pull":
        one_pull_budget(monkeypatch, conn.nc, 1)
    sizes = [100_000] * 200
    config = JetStreamConfig(storage="memory", request_timeout=timedelta(seconds=30))
    async with opened(nats_url, conn.nc, config) as store:
        await write(store, "held", sizes, 50)
        await write(store, "other", sizes, 50)
        held = replay(store, "held")
        async with contextlib.aclosing(held):
            first = [await anext(held) for _ in range(30)]
            async with asyncio.timeout(10):
                check(await store.get_events("other"), sizes)
            rest = [event async for event in held]
        check(first + rest, sizes)
        conn.assert_intact()
        assert store.stats.retries == 0


async def test_a_pull_ended_silently_does_not_hold_the_budget_forever(
    nats_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull whose bytes run out exactly ends without a status. Its replay cannot tell,
    and keeps its budget; a replay held open unconsumed would keep it for good, and with
    a budget of one pull no other replay on the connection could proceed. Here the end
    of the held replay's pull is lost on its way to the client, which looks the same:
    once nothing has arrived for two request_timeouts, the budget goes back."""
    one_pull_budget(monkeypatch, conn.nc, 1)
    real_subscribe = conn.nc.subscribe
    lossy: list[str] = []

    async def subscribe(subject: str, **kw: Any) -> Any:
        inner = kw.get("cb")
        if inner is not None and not lossy:  # the first replay's: statuses never arrive
            lossy.append(subject)

            async def cb(msg: Msg) -> None:
                if msg.reply:
                    await inner(msg)

            kw["cb"] = cb
        return await real_subscribe(subject, **kw)

    config = JetStreamConfig(
        storage="memory", direct_get=False, request_timeout=timedelta(seconds=0.5)
    )
    async with opened(nats_url, conn.nc, config) as store:
        await write(store, "acct", [10] * 10, 10)
        monkeypatch.setattr(conn.nc, "subscribe", subscribe)
        held = replay(store, "acct")
        async with contextlib.aclosing(held):
            assert (await anext(held)).version == 1
            assert lossy
            budget = _replay._BUDGETS[conn.nc]
            assert budget.available == 0  # all of it, for a pull whose end never comes
            async with asyncio.timeout(10):
                assert [e.version for e in await store.get_events("acct")] == list(range(1, 11))
            assert [e.version async for e in held] == list(range(2, 11))
        conn.assert_intact()


async def test_budget_serves_waiters_in_order() -> None:
    budget = _replay._Budget(10)
    await budget.acquire(8)
    granted: list[str] = []

    async def take(name: str, n: int) -> None:
        await budget.acquire(n)
        granted.append(name)

    large = asyncio.create_task(take("large", 5))
    small = asyncio.create_task(take("small", 1))
    await asyncio.sleep(0)  # both reach their wait
    # The small one would fit, but waits behind the large one; so does any try_acquire.
    assert granted == [] and budget.available == 2
    assert not budget.try_acquire(1)
    budget.release(2)
    await asyncio.sleep(0)
    assert granted == []  # 4 free: still not enough for the head of the queue
    budget.release(6)
    await asyncio.gather(large, small)
    assert granted == ["large", "small"] and budget.available == 4
    assert budget.try_acquire(4) and not budget.try_acquire(1)
    budget.release(4 + 5 + 1)
    assert budget.available == budget.capacity == 10
    with pytest.raises(ValueError, match="11 bytes"):
        await budget.acquire(11)
    budget.grow(12)
    await budget.acquire(11)
    assert budget.available == 1


async def test_budget_cancelled_waiter_takes_nothing() -> None:
    budget = _replay._Budget(10)
    await budget.acquire(7)
    head = asyncio.create_task(budget.acquire(6))
    behind = asyncio.create_task(budget.acquire(3))
    await asyncio.sleep(0)
    assert not behind.done()  # held back by the head of the queue
    head.cancel()
    await behind  # the head gone, the 3 free bytes go to the next one
    with pytest.raises(asyncio.CancelledError):
        await head
    assert budget.available == 0
    budget.release(7 + 3)
    assert budget.available == 10  # the cancelled waiter took nothing

    # Cancelled after its bytes were granted, before it ran again: it gives them back.
    await budget.acquire(10)
    late = asyncio.create_task(budget.acquire(4))
    await asyncio.sleep(0)
    budget.release(4)  # granted to the waiter...
    assert budget.available == 0
    late.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await late
    assert budget.available == 4
    budget.release(6)
    assert budget.available == budget.capacity
