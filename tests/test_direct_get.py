"""Loading histories with batched direct gets (no consumer), on real nats-server.

A replay starts with direct gets of ``direct_batch_size`` messages and goes on with a
consumer only when more than one further batch is left. What must hold whatever answers
a direct get: the result equals the consumer path's (differential sweep over lengths,
batch sizes and starting versions), and it reflects every acknowledged write even when
the answer comes from something other than the stream itself (a mirror, a foreign
responder) or when direct gets are switched off or forbidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from aether import ActorSnapshot
from aether.store import JetStreamConfig, JetStreamEventStore, _replay
from aether.testing import NatsServer

from ._stores import StoreFactory, ev, unique


class ConsumerSpy:
    """Counts the replay consumers created (Replayer._create_consumer calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.created = 0
        real = _replay.Replayer._create_consumer

        async def counting(replayer: _replay.Replayer, *args: Any) -> Any:
            self.created += 1
            return await real(replayer, *args)

        monkeypatch.setattr(_replay.Replayer, "_create_consumer", counting)


async def write(store: JetStreamEventStore, actor: str, count: int) -> None:
    for first in range(1, count + 1, 100):
        await store.save_events([ev(actor, v) for v in range(first, min(first + 100, count + 1))])


class DirectSpy:
    """Counts the direct gets a store sends."""

    def __init__(self, store: JetStreamEventStore) -> None:
        self.sent = 0
        real = store._replay.direct.batch

        async def counting(*args: Any, **kwargs: Any) -> Any:
            self.sent += 1
            return await real(*args, **kwargs)

        store._replay.direct.batch = counting  # type: ignore[method-assign]


async def test_short_histories_load_without_a_consumer(
    open_store: StoreFactory, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With batches of 8, read by a store that has not seen the actors (cold cache): up
    to 8 events need one direct get and no consumer; longer histories go on with one
    consumer for the part after the first batch."""
    writer = await open_store(config=JetStreamConfig(direct_batch_size=8))
    reader = await open_store(writer.stream_name, JetStreamConfig(direct_batch_size=8))
    spy, direct = ConsumerSpy(monkeypatch), DirectSpy(reader)
    expected_consumers = {0: 0, 1: 0, 7: 0, 8: 0, 9: 1, 17: 1, 40: 1}
    for length, consumers in expected_consumers.items():
        actor = f"len-{length}"
        await write(writer, actor, length)
        await writer.save_event(ev("other", length + 1))  # interleaved subjects
        before, sent = spy.created, direct.sent
        assert [e.version for e in await reader.get_events(actor)] == list(range(1, length + 1))
        assert (spy.created - before, direct.sent - sent) == (consumers, 1), length


async def test_a_history_the_cache_knows_to_be_long_starts_with_a_consumer(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version cache only picks the way to read: a history it knows to be longer
    than a direct batch skips the direct get; one it believes short but that grew
    meanwhile (another writer) is still read whole."""
    store = await open_store(config=JetStreamConfig(direct_batch_size=8))
    other = await open_store(store.stream_name)
    spy, direct = ConsumerSpy(monkeypatch), DirectSpy(store)
    await write(store, "long", 14)
    await store.save_snapshot(ActorSnapshot("long", 14, {}))  # records event 14's position
    await store.save_events([ev("long", v) for v in range(15, 21)])  # the cache knows 20
    assert [e.version for e in await store.get_events("long")] == list(range(1, 21))
    assert (spy.created, direct.sent) == (1, 0)
    # From version 15 the seek starts at the beginning (cheaper than searching): still
    # 20 events to read, a consumer.
    assert [e.version for e in await store.get_events("long", 15)] == list(range(15, 21))
    assert (spy.created, direct.sent) == (2, 0)
    # The snapshot's remembered position puts the start at version 15: 6 events, direct.
    assert (await store.get_latest_snapshot("long")) is not None
    assert [e.version for e in await store.get_events("long", 15)] == list(range(15, 21))
    assert (spy.created, direct.sent) == (2, 1)
    await write(store, "grows", 3)  # the cache believes 3 ...
    await other.save_events([ev("grows", v) for v in range(4, 31)])  # ... there are 30
    assert [e.version for e in await store.get_events("grows")] == list(range(1, 31))


async def test_direct_loads_equal_consumer_loads(open_store: StoreFactory) -> None:
    """Differential: every length 0..20 (interleaved with another actor), batch sizes
    around the lengths, several starting versions: direct loads equal consumer loads."""
    plain = await open_store(config=JetStreamConfig(direct_get=False))
    stores = {
        size: await open_store(plain.stream_name, JetStreamConfig(direct_batch_size=size))
        for size in (1, 3, 8, 20)
    }
    for length in range(21):
        actor = f"a{length}"
        for version in range(1, length + 1):
            await plain.save_event(ev(actor, version))
            await plain.save_event(ev(f"noise{length}", version))
        for from_version in sorted({0, 1, 2, length // 2, length, length + 1}):
            want = [(e.version, e.position) for e in await plain.get_events(actor, from_version)]
            assert want == [
                (v, want[i][1]) for i, v in enumerate(range(max(from_version, 1), length + 1))
            ]
            for size, store in stores.items():
                got = [(e.version, e.position) for e in await store.get_events(actor, from_version)]
                assert got == want, (length, from_version, size)


async def test_large_events_cut_a_direct_answer_and_the_load_goes_on(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct answer stops at about max_payload bytes: 30 events of 100 kB do not fit
    one; the rest comes from a consumer, nothing is missed or repeated."""
    store = await open_store(config=JetStreamConfig(storage="memory"))
    spy = ConsumerSpy(monkeypatch)
    for version in range(1, 31):
        event = ev("big", version)
        event.data = {"blob": "x" * 100_000}
        await store.save_event(event)
    assert [e.version for e in await store.get_events("big")] == list(range(1, 31))
    assert spy.created == 1


# -- answers from something other than the stream itself ---------------------------------


@contextlib.asynccontextmanager
async def only_responder(
    nats_url: str, store: JetStreamEventStore, answer: Any
) -> AsyncIterator[list[dict[str, Any]]]:
    """Turn the stream's own direct gets off (an operator's STREAM.UPDATE; the store still
    believes them on) and answer them with *answer(request, reply)* from another client.
    Yields the requests seen."""
    nc = await nats.connect(nats_url)
    seen: list[dict[str, Any]] = []

    async def respond(msg: Msg) -> None:
        seen.append(json.loads(msg.data))
        await answer(nc, msg)

    try:
        info = await nc.jetstream().stream_info(store.stream_name)
        config = info.config
        config.allow_direct = False
        await nc.jetstream().update_stream(config)
        await nc.subscribe(f"$JS.API.DIRECT.GET.{store.stream_name}", cb=respond)
        await nc.flush()
        yield seen
    finally:
        await nc.close()


async def test_an_unattributed_none_is_checked_with_the_leader(
    nats_url: str, open_store: StoreFactory
) -> None:
    """A "404 no message" names no stream: it may come from a mirror that is behind. The
    store asks the leader before it believes an actor has no events."""
    store = await open_store()
    await write(store, "acc", 5)

    async def not_found(nc: Client, msg: Msg) -> None:
        await nc.publish(msg.reply, b"", headers={"Status": "404", "Description": "none"})

    async with only_responder(nats_url, store, not_found) as seen:
        assert [e.version for e in await store.get_events("acc")] == [1, 2, 3, 4, 5]
        assert seen, "the foreign responder answered the direct get"


async def test_a_stale_answer_from_a_mirror_is_topped_up_from_the_leader(
    nats_url: str, open_store: StoreFactory
) -> None:
    """An answer that names another stream (a mirror with mirror_direct, behind the
    stream) is bounded by the leader's last sequence and topped up."""
    store = await open_store()
    await write(store, "acc", 6)
    first = (await store.get_events("acc"))[0]
    assert first.position is not None
    async with await nats.connect(nats_url) as nc:
        stored = await nc.jetstream().get_msg(store.stream_name, first.position)

    async def stale_mirror(nc: Client, msg: Msg) -> None:
        headers = {
            "Nats-Stream": "a-mirror",
            "Nats-Subject": store.subject_for("acc"),
            "Nats-Sequence": str(first.position),
            "Nats-Num-Pending": "0",
        }
        await nc.publish(msg.reply, stored.data or b"", headers=headers)
        end = {"Status": "204", "Description": "EOB", "Nats-Num-Pending": "0"}
        await nc.publish(msg.reply, b"", headers=end)

    async with only_responder(nats_url, store, stale_mirror) as seen:
        assert [e.version for e in await store.get_events("acc")] == [1, 2, 3, 4, 5, 6]
        assert seen


async def test_a_malformed_direct_answer_falls_back_to_a_consumer(
    nats_url: str, open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer nats-server would not give (no sequence header) is not used: the load
    goes on with a consumer and is complete."""
    store = await open_store()
    await write(store, "acc", 4)
    spy = ConsumerSpy(monkeypatch)

    async def malformed(nc: Client, msg: Msg) -> None:
        await nc.publish(msg.reply, b"{}", headers={"Nats-Stream": store.stream_name})
        end = {"Status": "204", "Description": "EOB", "Nats-Num-Pending": "0"}
        await nc.publish(msg.reply, b"", headers=end)

    async with only_responder(nats_url, store, malformed) as seen:
        assert [e.version for e in await store.get_events("acc")] == [1, 2, 3, 4]
        assert seen
    assert spy.created == 1


async def test_direct_gets_turned_off_by_an_operator_fall_back_to_a_consumer(
    nats_url: str, open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store()
    await write(store, "acc", 3)
    spy = ConsumerSpy(monkeypatch)
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(store.stream_name)
        info.config.allow_direct = False
        await nc.jetstream().update_stream(info.config)
    finally:
        await nc.close()
    # No responders at all: answered at once by the server (503), the consumer takes over.
    assert [e.version for e in await store.get_events("acc")] == [1, 2, 3]
    assert spy.created == 1
    assert store.stream_name not in store._replay._no_direct


async def test_a_real_mirror_answering_direct_gets_never_hides_an_acknowledged_write(
    nats_url: str, open_store: StoreFactory
) -> None:
    """A real mirror with mirror_direct shares the direct gets: loads made right after
    each write still see every acknowledged event."""
    store = await open_store()
    await write(store, "acc", 3)
    mirror = unique("mirror")
    nc = await nats.connect(nats_url)
    try:
        body = {"name": mirror, "mirror": {"name": store.stream_name}, "mirror_direct": True}
        await nc.request(f"$JS.API.STREAM.CREATE.{mirror}", json.dumps(body).encode())
        # Wait until the mirror answers direct gets (it does once caught up).
        request = json.dumps({"seq": 1, "next_by_subj": store.subject_for("acc"), "batch": 1})
        for _ in range(400):
            answer = await nc.request(
                f"$JS.API.DIRECT.GET.{store.stream_name}", request.encode(), timeout=2
            )
            if (answer.headers or {}).get("Nats-Stream") == mirror:
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError("the mirror never answered a direct get")
        for version in range(4, 60):
            await store.save_event(ev("acc", version))
            assert [e.version for e in await store.get_events("acc")] == list(range(1, version + 1))
    finally:
        await nc.jetstream().delete_stream(mirror)
        await nc.close()


NO_DIRECT_USER = """
authorization {
  users: [
    {user: app, password: secret, permissions: {publish: {deny: ["$JS.API.DIRECT.GET.>"]}}}
  ]
}
"""


async def test_a_user_not_permitted_direct_gets_waits_once_then_uses_consumers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats-server drops a request the user may not publish, silently: the first direct
    get times out, and the store stops trying them on that stream."""
    spy = ConsumerSpy(monkeypatch)
    with NatsServer(config=NO_DIRECT_USER) as server:
        nc = await nats.connect(server.url, user="app", password="secret")
        try:
            config = JetStreamConfig(request_timeout=timedelta(milliseconds=500))
            store = await JetStreamEventStore.open(nc, unique("perm"), config)
            await write(store, "acc", 3)
            tried: list[int] = []
            real_batch = store._replay.direct.batch

            async def counting(*args: Any, **kwargs: Any) -> Any:
                tried.append(1)
                return await real_batch(*args, **kwargs)

            store._replay.direct.batch = counting  # type: ignore[method-assign]
            for _ in range(3):
                assert [e.version for e in await store.get_events("acc")] == [1, 2, 3]
            assert len(tried) == 1
            assert store.stream_name in store._replay._no_direct
            assert spy.created == 3
        finally:
            await nc.close()
