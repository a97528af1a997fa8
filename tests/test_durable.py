"""Durable subscriptions: a server-side consumer per name, acks, parking, crashes.

Every test runs against real nats-server processes. Crash tests SIGKILL real consumer
processes (tests/_durable_consumer.py) or servers, check that the fault happened, and
compare what the consumers logged with what the stream holds. Waits are for conditions
(a delivery, a log line, a parked record), never fixed sleeps; the guards on them only
turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from aether import Event
from aether.bus import SubscriptionFilter
from aether.errors import (
    InvalidEventError,
    StoreUnavailableError,
    StreamNotFoundError,
    UnsuitableStreamError,
)
from aether.store import (
    Delivery,
    DeliverySettledError,
    DurableSubscription,
    InvalidConfigError,
    InvalidSubscriptionNameError,
    JetStreamConfig,
    JetStreamEventStore,
    ParkedEvent,
    SubscriptionConflictError,
)
from aether.store._durable import _ack_metadata
from aether.testing import NatsCluster, NatsServer

from ._stores import StoreFactory, unique

ROOT = Path(__file__).resolve().parent.parent
GUARD = 60.0  # seconds; only turns a hang into a failure


async def until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str, guard: float = GUARD
) -> None:
    """Wait until *check* (sync or async) is true, polling."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + guard
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


async def next_delivery(sub: DurableSubscription) -> Delivery:
    return await asyncio.wait_for(anext(sub), GUARD)


async def append(store: JetStreamEventStore, actors: int, versions: int) -> list[Event]:
    """Append *versions* events to each of *actors* actors (one batch per actor); returns
    them in stream order (their positions are 1.. on a fresh stream)."""
    events: list[Event] = []
    for a in range(actors):
        batch = [Event("Deposited", f"acc-{a}", v, {"n": v}) for v in range(1, versions + 1)]
        await store.save_events(batch)
        events.extend(batch)
    return events


async def consumer_info(nc: Client, stream: str, name: str) -> dict[str, Any]:
    msg = await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.{name}", b"", timeout=5)
    answer: dict[str, Any] = json.loads(msg.data)
    return answer


@pytest.fixture(autouse=True)
async def _delete_parked_streams(nats_url: str) -> AsyncIterator[None]:
    """The stores' own streams are deleted by their factory; the ``_parked`` streams the
    subscriptions made on the session server are deleted here."""
    yield
    async with await nats.connect(nats_url) as admin:
        js = admin.jetstream()
        for name in await js.streams_info():
            if name.config.name.endswith("_parked"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name.config.name)


# -- arguments --------------------------------------------------------------------------


async def test_bad_names_and_settings_are_refused_before_any_io(
    js_store: JetStreamEventStore,
) -> None:
    for name in ["", "a.b", "a b", "*", ">", "a/b", "x" * 256, 7, None]:
        with pytest.raises(InvalidSubscriptionNameError):
            js_store.durable_subscription(name)  # type: ignore[arg-type]
    assert issubclass(InvalidSubscriptionNameError, InvalidConfigError)
    assert issubclass(InvalidSubscriptionNameError, ValueError)
    for kwargs in [
        {"max_deliver": 0},
        {"max_deliver": True},
        {"max_deliver": 2.0},
        {"ack_wait": timedelta(0)},
        {"ack_wait": 30},
    ]:
        with pytest.raises(InvalidConfigError):
            js_store.durable_subscription("ok", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError):  # as subscribe(filter=...) raises
        js_store.durable_subscription("ok", filter="Deposited")  # type: ignore[arg-type]
    js_store.durable_subscription("x" * 255)  # the server's longest consumer name


# -- ack, nack, term --------------------------------------------------------------------


async def test_ack_nack_and_term(js_store: JetStreamEventStore) -> None:
    events = await append(js_store, 1, 3)
    async with js_store.durable_subscription("worker") as sub:
        first = await next_delivery(sub)
        assert (first.event, first.position, first.attempt) == (events[0], 1, 1)
        assert first.event.position == 1
        await first.ack()
        await first.ack()  # the same outcome again: a no-op
        with pytest.raises(DeliverySettledError):
            await first.nack()
        with pytest.raises(DeliverySettledError):
            await first.term()

        second = await next_delivery(sub)
        assert (second.position, second.attempt) == (2, 1)
        await second.nack()
        assert not second.parked and second.outcome == "nack"

        third = await next_delivery(sub)
        assert third.position == 3
        await third.term("cannot handle v3")
        assert third.parked and third.outcome == "term"
        with pytest.raises(DeliverySettledError):
            await third.ack()

        again = await next_delivery(sub)  # the nacked event, delivered again
        assert (again.position, again.attempt) == (2, 2)
        await again.ack()

        metrics = sub.metrics
        assert (metrics.delivered, metrics.redelivered) == (4, 1)
        assert (metrics.acked, metrics.nacked, metrics.parked) == (2, 1, 1)
        assert metrics.lag == 0
        info = await sub.info()
        assert (info.pending, info.ack_pending, info.parked) == (0, 0, 1)
        assert info.acked_position == 3  # the termed event is settled too

    [parked] = await js_store.parked("worker")
    assert isinstance(parked, ParkedEvent)
    assert (parked.position, parked.reason, parked.attempts) == (3, "term", 1)
    assert (parked.actor_id, parked.version, parked.event_id) == ("acc-0", 3, events[2].id)
    assert parked.detail == "cannot handle v3"
    assert parked.subscription == "worker"


async def test_nack_with_a_delay_is_delivered_again(js_store: JetStreamEventStore) -> None:
    await append(js_store, 1, 1)
    async with js_store.durable_subscription("delayed") as sub:
        first = await next_delivery(sub)
        await first.nack(delay=timedelta(milliseconds=300))
        again = await next_delivery(sub)
        assert (again.position, again.attempt) == (1, 2)
        await again.ack()
        with pytest.raises(ValueError):
            await again.nack(delay=-1)


async def test_an_event_not_acked_within_ack_wait_is_delivered_again(
    js_store: JetStreamEventStore,
) -> None:
    await append(js_store, 1, 1)
    sub = js_store.durable_subscription("slow", ack_wait=timedelta(seconds=1))
    async with sub:
        first = await next_delivery(sub)
        assert first.attempt == 1  # and never settled
        again = await next_delivery(sub)  # waits for the redelivery itself
        assert (again.position, again.attempt) == (1, 2)
        await again.ack()
        await first.ack()  # acking an old delivery of an acked event is harmless
        assert sub.metrics.redelivered == 1


async def test_a_redelivery_that_raced_the_ack_is_not_handed_out(
    js_store: JetStreamEventStore,
) -> None:
    await append(js_store, 1, 1)
    sub = js_store.durable_subscription("racy", ack_wait=timedelta(seconds=1))
    async with sub:
        first = await next_delivery(sub)
        # Past ack_wait the server delivers it again, into the subscription's buffer ...
        await until(lambda: len(sub._buffer) == 1, "the redelivery arrives")
        await first.ack()  # ... and only then is the first delivery acked
        await js_store.save_event(Event("Deposited", "acc-1", 1))
        second = await next_delivery(sub)
        assert (second.position, second.attempt) == (2, 1)
        await second.ack()
        assert sub.metrics.duplicates == 1
        assert (await sub.info()).ack_pending == 0


async def test_a_new_subscription_object_resumes_where_the_name_stopped(
    js_store: JetStreamEventStore,
) -> None:
    await append(js_store, 2, 5)  # positions 1..10
    async with js_store.durable_subscription("resume") as sub:
        for expected in range(1, 5):
            delivery = await next_delivery(sub)
            assert delivery.position == expected
            await delivery.ack()
    # Closing nacked what it had received but not handed out: it comes again at once.
    async with js_store.durable_subscription("resume") as sub:
        seen = []
        for _ in range(6):
            delivery = await next_delivery(sub)
            seen.append(delivery.position)
            await delivery.ack()
        assert sorted(seen) == list(range(5, 11))
        assert (await sub.info()).pending == 0


# -- parking ----------------------------------------------------------------------------


async def test_a_handler_that_keeps_failing_is_parked_on_its_last_nack(
    js_store: JetStreamEventStore,
) -> None:
    events = await append(js_store, 1, 2)
    async with js_store.durable_subscription("failing", max_deliver=3) as sub:
        attempts: list[int] = []
        others: list[int] = []
        while len(attempts) < 3:
            delivery = await next_delivery(sub)
            if delivery.position != 1:
                others.append(delivery.position)  # the next event is not held up
                await delivery.ack()
                continue
            attempts.append(delivery.attempt)
            assert delivery.is_last_attempt == (delivery.attempt == 3)
            await delivery.nack()
            assert delivery.parked == (delivery.attempt == 3)
        # Parked by the last nack itself: listed at once, not after the server's
        # max-deliveries advisory (which it sends only at its next delivery try).
        [parked] = await js_store.parked("failing")
        assert (parked.position, parked.reason, parked.attempts) == (1, "max_deliver", 3)
        assert parked.event_id == events[0].id
        assert attempts == [1, 2, 3]
        assert others == [2]
        assert sub.metrics.parked == 1
        assert sub.metrics.nacked == 2
        info = await sub.info()
        assert (info.ack_pending, info.pending, info.parked) == (0, 0, 1)


async def test_an_event_whose_last_attempt_times_out_is_parked(
    js_store: JetStreamEventStore,
) -> None:
    """Its handler never settles it (crashed or stuck): after max_deliver attempts the
    next delivery parks it without handing it out."""
    await append(js_store, 1, 1)
    sub = js_store.durable_subscription("stuck", max_deliver=2, ack_wait=timedelta(seconds=1))
    async with sub:
        first = await next_delivery(sub)
        second = await next_delivery(sub)
        assert [first.attempt, second.attempt] == [1, 2]
        more: list[Delivery] = []

        async def keep_reading() -> None:
            async for delivery in sub:
                more.append(delivery)

        reader = asyncio.create_task(keep_reading())
        try:

            async def is_parked() -> bool:
                return bool(await js_store.parked("stuck"))

            await until(is_parked, "the timed-out event is parked")
        finally:
            reader.cancel()
        [parked] = await js_store.parked("stuck")
        assert (parked.position, parked.reason, parked.attempts) == (1, "max_deliver", 2)
        assert more == []  # never handed out a third time
        assert sub.metrics.parked == 1
        info = await sub.info()
        assert (info.ack_pending, info.pending) == (0, 0)


async def test_a_malformed_message_is_parked_not_skipped(
    js_store: JetStreamEventStore, nc: Client
) -> None:
    js = nc.jetstream()
    await js.publish(js_store.subject_for("acc-0"), b"not json")
    wrong_actor = Event("Deposited", "someone-else", 1).to_json()
    await js.publish(js_store.subject_for("acc-0"), wrong_actor)
    good = Event("Deposited", "acc-1", 1)
    await js_store.save_event(good)
    async with js_store.durable_subscription("strict") as sub:
        delivery = await next_delivery(sub)
        assert (delivery.event, delivery.position) == (good, 3)
        await delivery.ack()
        assert sub.metrics.parked == 2
    parked = await js_store.parked("strict")
    assert [(p.position, p.reason, p.attempts) for p in parked] == [
        (1, "malformed", 0),
        (2, "malformed", 0),
    ]
    assert parked[0].actor_id == "acc-0"  # read from the subject
    assert "someone-else" in parked[1].detail


async def test_parking_twice_records_once_and_unpark_removes_it(
    js_store: JetStreamEventStore,
) -> None:
    await append(js_store, 1, 1)
    sub = js_store.durable_subscription("twice")
    async with sub:
        delivery = await next_delivery(sub)
        await delivery.term()
        # A second subscriber parking the same event (e.g. after a crash between the
        # record and the +TERM) records nothing new.
        await sub._park(
            delivery._reply,
            delivery._epoch,
            1,
            js_store.subject_for("acc-0"),
            delivery.event,
            attempts=1,
            reason="term",
            detail="again",
        )
    [parked] = await js_store.parked("twice")
    assert parked.detail != "again"
    assert await js_store.unpark("twice", 1) is True
    assert await js_store.unpark("twice", 1) is False
    assert await js_store.parked("twice") == []
    assert await js_store.parked("never-made") == []


async def test_a_park_whose_term_was_lost_is_not_handed_out_again(
    open_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The subscriber records the park, then its +TERM never reaches the server (the
    connection failed): the event comes again, is found parked and terminated, and no
    handler sees it a second time."""
    caplog.set_level("INFO", logger="aether.store")
    store = await open_store(config=JetStreamConfig(retry_deadline=timedelta(seconds=1)))
    await append(store, 1, 2)
    nc = store._nc
    real_request = nc.request
    dropped = 0
    armed = True

    async def request(subject: str, payload: bytes = b"", **kwargs: Any) -> Any:
        nonlocal dropped
        if armed and subject.startswith("$JS.ACK.") and payload.startswith(b"+TERM"):
            dropped += 1
            raise nats.errors.TimeoutError  # never sent: lost on the way
        return await real_request(subject, payload, **kwargs)

    nc.request = request  # type: ignore[method-assign]
    sub = store.durable_subscription("lost-term", ack_wait=timedelta(seconds=1))
    async with sub:
        first = await next_delivery(sub)
        assert first.position == 1
        with pytest.raises(StoreUnavailableError):
            await first.term("poison")  # recorded, but not terminated on the server
        assert dropped >= 1  # the fault happened
        assert first.outcome is None
        [parked] = await store.parked("lost-term")
        assert (parked.position, parked.reason) == (1, "term")
        armed = False
        second = await next_delivery(sub)
        assert second.position == 2
        await second.ack()

        async def settled() -> bool:
            info = await sub.info()
            return (info.ack_pending, info.pending, info.acked_position) == (0, 0, 2)

        handed_out: list[int] = []

        async def keep_reading() -> None:
            async for delivery in sub:
                handed_out.append(delivery.position)
                await delivery.ack()

        reader = asyncio.create_task(keep_reading())
        try:
            await until(settled, "the redelivered, parked event is terminated")
        finally:
            reader.cancel()
        assert 1 not in handed_out  # position 1 came again, and no handler saw it
        assert "position 1, already parked, is terminated" in caplog.text
    assert len(await store.parked("lost-term")) == 1


async def test_buffered_deliveries_never_handed_out_use_up_no_attempts(
    js_store: JetStreamEventStore,
) -> None:
    """Open, handle one event, close, again and again: each close sends back the ones
    that only waited in the buffer, and the server counts a delivery each time. Only
    hand-outs to a handler count: nothing is parked, each handler sees attempt 1."""
    await append(js_store, 1, 10)
    handed: list[tuple[int, int]] = []
    server_counts: list[int] = []
    for _ in range(4):
        async with js_store.durable_subscription("cycles", max_deliver=2) as sub:
            delivery = await next_delivery(sub)
            handed.append((delivery.position, delivery.attempt))
            server_counts.append(_ack_metadata(delivery._reply)[0])
            await delivery.ack()
    assert [attempt for _, attempt in handed] == [1, 1, 1, 1]
    assert len({position for position, _ in handed}) == 4
    assert max(server_counts) > 2  # the fault: the server's count went past max_deliver
    assert await js_store.parked("cycles") == []


async def test_only_hand_outs_to_handlers_count_towards_max_deliver(
    open_store: StoreFactory,
) -> None:
    """A poison event kills its subscriber (the connection dropped without close(), as a
    crash) each time it is handed out, with the next events waiting unhandled in the
    buffer. The poison event is parked after max_deliver counted hand-outs (one first
    hand-out, not recorded when made, may come on top); the events behind it, delivered
    as often by the server, are never parked and are handed out on attempt 1."""
    store = await open_store()
    await append(store, 1, 5)  # position 1 is the poison
    name, max_deliver = "poison", 2
    poison_attempts: list[int] = []
    handed_before: dict[int, int] = {}
    while not await store.parked(name):
        crashing = await open_store(store.stream_name)
        sub = crashing.durable_subscription(
            name, max_deliver=max_deliver, ack_wait=timedelta(seconds=1)
        )
        reader = asyncio.create_task(anext(sub))
        parked_meanwhile = asyncio.create_task(
            until(lambda: _has_parked(store, name), "parked", guard=GUARD)
        )
        done, _ = await asyncio.wait(
            [reader, parked_meanwhile], timeout=GUARD, return_when=asyncio.FIRST_COMPLETED
        )
        assert done, "neither a delivery nor a park"
        for task in (reader, parked_meanwhile):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await task
        if reader in done:
            delivery = reader.result()
            if delivery.position != 1:  # after the poison was parked: handed out, crashed
                assert await store.parked(name)
                handed_before[delivery.position] = delivery.attempt
            else:
                poison_attempts.append(delivery.attempt)
                await until(
                    lambda buffer=sub._buffer: len(buffer) == 4,
                    "the next events wait in the buffer",
                )
        await crashing._nc.close()  # the crash: nothing settled, nothing sent back
        assert len(poison_attempts) <= max_deliver + 1
    [parked] = await store.parked(name)
    assert (parked.position, parked.reason, parked.attempts) == (1, "max_deliver", max_deliver)
    assert poison_attempts[-max_deliver:] == list(range(1, max_deliver + 1))
    final = store.durable_subscription(name, max_deliver=max_deliver, ack_wait=timedelta(seconds=1))
    async with final as sub:
        rest: list[tuple[int, int, int]] = []
        for _ in range(4):
            delivery = await next_delivery(sub)
            rest.append((delivery.position, delivery.attempt, _ack_metadata(delivery._reply)[0]))
            await delivery.ack()
    # Attempt 1, or 2 for one the last crashed subscriber had handed out.
    assert [(p, a) for p, a, _ in rest] == [(p, handed_before.get(p, 0) + 1) for p in range(2, 6)]
    assert all(server > max_deliver for _, _, server in rest)  # the fault happened
    assert len(await store.parked(name)) == 1


async def _has_parked(store: JetStreamEventStore, name: str) -> bool:
    return bool(await store.parked(name))


async def test_a_foreign_stream_in_the_way_of_the_parked_stream_is_refused(
    js_store: JetStreamEventStore, nc: Client
) -> None:
    """A stream named <stream>_parked that is not the store's parked-event stream is
    never written to."""
    js = nc.jetstream()
    foreign = js_store.stream_name + "_parked"
    await js.add_stream(name=foreign, subjects=[f"{unique('elsewhere')}.>"])
    with pytest.raises(UnsuitableStreamError) as caught:
        await js_store.durable_subscription("any").__aenter__()
    assert (caught.value.stream_name, caught.value.setting) == (foreign, "subjects")
    assert (await js.stream_info(foreign)).state.messages == 0


@pytest.mark.parametrize(
    "limit",
    [{"max_msgs": 2}, {"max_bytes": 100_000}, {"max_age": 3600.0}],
    ids=["max_msgs", "max_bytes", "max_age"],
)
async def test_a_parked_stream_with_limits_is_refused(
    js_store: JetStreamEventStore, nc: Client, limit: dict[str, Any]
) -> None:
    """Limits on <stream>_parked would drop park records silently: refused, untouched."""
    js = nc.jetstream()
    name = js_store.stream_name + "_parked"
    await js.add_stream(name=name, subjects=[f"{js_store.stream_name}.parked.>"], **limit)
    await append(js_store, 1, 1)
    with pytest.raises(UnsuitableStreamError) as caught:
        await js_store.durable_subscription("limited").__aenter__()
    assert (caught.value.stream_name, caught.value.setting) == (name, next(iter(limit)))
    assert (await js.stream_info(name)).state.messages == 0


# -- filters and existing consumers -----------------------------------------------------


async def test_a_filter_hands_out_what_it_matches_and_acks_the_rest(
    js_store: JetStreamEventStore,
) -> None:
    await js_store.save_event(Event("Opened", "order-1", 1))
    await js_store.save_event(Event("Deposited", "order-1", 2))
    await js_store.save_event(Event("Opened", "customer-1", 1))
    await js_store.save_event(Event("Opened", "order-2", 1))
    wanted = SubscriptionFilter(event_types=["Opened"], actor_pattern="order-*")
    async with js_store.durable_subscription("orders", filter=wanted) as sub:
        assert sub.filter_subject == f"{js_store.stream_name}.events.>"
        got = []
        for _ in range(2):
            delivery = await next_delivery(sub)
            got.append((delivery.event.actor_id, delivery.event.event_type))
            await delivery.ack()
        assert got == [("order-1", "Opened"), ("order-2", "Opened")]
        assert sub.metrics.filtered == 2

        async def all_settled() -> bool:
            info = await sub.info()
            return info.pending == 0 and info.ack_pending == 0

        await until(all_settled, "the filtered-out events are acked")
    # One exact actor id: narrowed on the server.
    one = SubscriptionFilter(actor_pattern="order-1")
    async with js_store.durable_subscription("order-1", filter=one) as sub:
        assert sub.filter_subject == js_store.subject_for("order-1")
        assert [(await next_delivery(sub)).event.version for _ in range(2)] == [1, 2]
        assert (await sub.info()).pending == 0


async def test_an_event_the_filter_leaves_out_is_never_parked(
    js_store: JetStreamEventStore,
) -> None:
    """Its ack is fire and forget: if those acks are lost it comes again, past
    max_deliver, and is still only filtered out."""
    await js_store.save_event(Event("Closed", "acc-0", 1))
    nc = js_store._nc
    real_publish = nc.publish
    lost = 0

    async def publish(subject: str, payload: bytes = b"", **kwargs: Any) -> None:
        nonlocal lost
        if subject.startswith("$JS.ACK.") and payload == b"+ACK":
            lost += 1
            return  # the filtered-out event's ack is lost
        await real_publish(subject, payload, **kwargs)

    nc.publish = publish  # type: ignore[method-assign]
    sub = js_store.durable_subscription(
        "opened-only",
        filter=SubscriptionFilter(["Opened"]),
        max_deliver=2,
        ack_wait=timedelta(seconds=1),
    )
    async with sub:
        reader = asyncio.create_task(anext(sub))
        try:
            await until(lambda: sub.metrics.filtered >= 3, "three deliveries, all left out")
        finally:
            reader.cancel()
        assert lost >= 3  # the fault happened
        assert sub.metrics.parked == 0
    assert await js_store.parked("opened-only") == []


async def test_an_existing_consumer_is_reused_updated_or_refused(
    js_store: JetStreamEventStore, nc: Client
) -> None:
    first = SubscriptionFilter(event_types=["Opened"])
    async with js_store.durable_subscription("shared", filter=first):
        pass
    # Tuning may change: the latest opener's ack_wait and max_deliver win.
    sub = js_store.durable_subscription(
        "shared", filter=first, ack_wait=timedelta(seconds=7), max_deliver=9
    )
    async with sub:
        info = await sub.info()
        assert (info.ack_wait, info.max_deliver, info.filter) == (timedelta(seconds=7), 9, first)
    # What it covers may not.
    other = js_store.durable_subscription("shared", filter=SubscriptionFilter(["Closed"]))
    with pytest.raises(SubscriptionConflictError) as caught:
        await other.__aenter__()
    assert caught.value.setting == "filter"
    # A consumer that is not aether's keeps its name.
    js = nc.jetstream()
    await js.add_consumer(js_store.stream_name, durable_name="foreign", ack_policy="explicit")
    with pytest.raises(SubscriptionConflictError) as caught:
        await anext(js_store.durable_subscription("foreign"))
    assert caught.value.setting == "consumer"

    listed = await js_store.durable_subscriptions()
    assert [i.name for i in listed] == ["shared"]  # not the foreign consumer


async def test_durable_subscriptions_lists_pending_and_parked(
    js_store: JetStreamEventStore,
) -> None:
    await append(js_store, 1, 4)
    async with js_store.durable_subscription("a") as sub:
        await (await next_delivery(sub)).ack()
        await (await next_delivery(sub)).term()
    async with js_store.durable_subscription("b"):
        pass
    a, b = await js_store.durable_subscriptions()
    assert (a.name, a.parked, a.acked_position) == ("a", 1, 2)
    assert a.pending + a.ack_pending == 2  # two events not settled (nacked at close)
    assert (b.name, b.parked, b.pending, b.ack_pending) == ("b", 0, 4, 0)


# -- crashes ----------------------------------------------------------------------------


def _spawn(url: str, stream: str, name: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests._durable_consumer", url, stream, name, str(log), *extra],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _log_lines(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split() for line in log.read_text().splitlines() if line]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=GUARD)


@pytest.mark.slow
@pytest.mark.fault
async def test_a_consumer_sigkilled_mid_stream_loses_nothing_and_repeats_no_ack(
    nats_url: str, open_store: StoreFactory, tmp_path: Path
) -> None:
    """A consumer process acks 40 events, hangs in its handler on the next one and is
    SIGKILLed. A new subscriber on the name gets everything not acked (the hung event
    again, with a higher attempt) and nothing that was acked."""
    store = await open_store()
    events = await append(store, 10, 20)  # positions 1..200
    log = tmp_path / "consumer.log"
    proc = _spawn(
        nats_url, store.stream_name, "crashy", log, "--ack-wait", "2", "--hang-after", "40"
    )
    try:
        await until(
            lambda: sum(1 for line in _log_lines(log) if line[0] == "handled") == 41,
            "the child handles 41 events",
        )
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=GUARD) == -signal.SIGKILL  # the fault happened
    finally:
        _stop(proc)
    lines = _log_lines(log)
    acked_first = {int(line[1]) for line in lines if line[0] == "acked"}
    handled_first = [int(line[1]) for line in lines if line[0] == "handled"]
    [hung] = [p for p in handled_first if p not in acked_first]
    assert len(acked_first) == 40

    handled: list[tuple[int, int]] = []
    acked: set[int] = set()
    async with store.durable_subscription("crashy", ack_wait=timedelta(seconds=2)) as sub:
        while len(acked_first | acked) < len(events):
            delivery = await next_delivery(sub)
            handled.append((delivery.position, delivery.attempt))
            await delivery.ack()
            acked.add(delivery.position)
    assert acked_first | acked == set(range(1, len(events) + 1))  # nothing lost
    assert acked_first.isdisjoint(p for p, _ in handled)  # no acked event again
    # The hung one is handed out again. Its attempt counts hand-outs recorded: the killed
    # process's first hand-out wrote no record (first hand-outs cost nothing), so >= 1.
    assert hung in {p for p, _ in handled}
    assert await store.parked("crashy") == []


@pytest.mark.slow
async def test_two_processes_on_one_name_share_the_work(
    nats_url: str, open_store: StoreFactory, tmp_path: Path
) -> None:
    store = await open_store()
    log = tmp_path / "shared.log"
    procs = [_spawn(nats_url, store.stream_name, "pair", log) for _ in range(2)]
    try:
        await until(
            lambda: sum(1 for line in _log_lines(log) if line[0] == "ready") == 2,
            "both consumers are ready",
        )
        events = await append(store, 20, 15)  # 300 events, appended while both pull
        total = len(events)
        await until(
            lambda: len({line[1] for line in _log_lines(log) if line[0] == "acked"}) == total,
            "every event is acked",
        )
        for proc in procs:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=GUARD) == 0
    finally:
        for proc in procs:
            _stop(proc)
    acks = [(int(line[1]), line[2]) for line in _log_lines(log) if line[0] == "acked"]
    positions = [p for p, _ in acks]
    assert sorted(positions) == list(range(1, total + 1))  # every event, each acked once
    by_process = {pid for _, pid in acks}
    assert len(by_process) == 2  # both did part of the work


@pytest.mark.fault
@pytest.mark.parametrize("crash", [False, True], ids=["stop", "sigkill"])
async def test_the_position_survives_a_server_restart(
    fresh_nats_server: NatsServer, crash: bool
) -> None:
    """File storage: after a restart the consumer still knows what was acked, and the
    subscription carries on by itself once the client has reconnected.

    A graceful stop writes the consumer's state: nothing acked comes again. nats-server
    (2.15) writes a consumer's state to disk shortly after it changes (about 0.1 s, not
    at each ack), so a SIGKILL loses the acks of that last moment: those events are
    delivered again after ``ack_wait`` (at least once; this subscription, which acked
    them itself, acks them again unseen), and nothing is lost."""
    nc = await nats.connect(
        fresh_nats_server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1
    )
    try:
        store = await JetStreamEventStore.open(nc, unique("restart"))
        await append(store, 2, 10)  # positions 1..20
        sub = store.durable_subscription("survivor", ack_wait=timedelta(seconds=2))
        async with sub:
            for expected in range(1, 9):
                delivery = await next_delivery(sub)
                assert delivery.position == expected
                await delivery.ack()
            if crash:
                fresh_nats_server.kill()
                assert not fresh_nats_server.is_running
            await asyncio.to_thread(fresh_nats_server.restart)
            await until(lambda: nc.is_connected, "the client reconnects")
            await store.save_event(Event("Deposited", "acc-9", 1))  # position 21
            after: list[int] = []

            async def consume() -> None:
                async for delivery in sub:
                    after.append(delivery.position)
                    await delivery.ack()

            consumer = asyncio.create_task(consume())
            try:

                async def all_settled() -> bool:
                    assert not consumer.done(), consumer
                    info = await sub.info()
                    return (info.acked_position, info.ack_pending, info.pending) == (21, 0, 0)

                await until(all_settled, "every event is acked")
            finally:
                consumer.cancel()
            assert set(range(9, 22)) <= set(after)  # nothing lost
            repeated = sorted(p for p in set(after) if p <= 8)
            if not crash:
                assert repeated == []  # the position was kept exactly
            m = sub.metrics
            print(
                f"\n[durable restart crash={crash}] acked before it, handed out again: "
                f"{repeated}; acked again unseen: {m.duplicates}; forgotten: {m.forgotten}"
            )
            assert sub.metrics.repulls >= 1  # the restart did reach the subscription
            assert await store.parked("survivor") == []
    finally:
        await nc.close()


@pytest.mark.fault
async def test_an_outage_past_the_deadline_fails_iteration_which_resumes_after_it(
    fresh_nats_server: NatsServer,
) -> None:
    nc = await nats.connect(
        fresh_nats_server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1
    )
    try:
        config = JetStreamConfig(retry_deadline=timedelta(seconds=2))
        store = await JetStreamEventStore.open(nc, unique("outage"), config)
        await append(store, 1, 3)
        async with store.durable_subscription("patient") as sub:
            first = await next_delivery(sub)
            await first.ack()
            for _ in range(2):  # received already: handed out while the server is down
                await (await next_delivery(sub)).ack()
            fresh_nats_server.kill()
            assert not fresh_nats_server.is_running
            with pytest.raises(StoreUnavailableError):
                await next_delivery(sub)
            await asyncio.to_thread(fresh_nats_server.restart)
            await store.save_event(Event("Deposited", "acc-0", 4))
            while True:  # the same subscription goes on
                delivery = await next_delivery(sub)
                await delivery.ack()
                # (Acks of the last 0.1 s before the SIGKILL may be lost: those come again.)
                if delivery.event.version == 4:
                    break
    finally:
        await nc.close()


@pytest.mark.cluster
@pytest.mark.fault
async def test_a_consumer_leader_kill_during_consumption_loses_nothing(
    nats_cluster: NatsCluster,
) -> None:
    nc = await nats.connect(
        servers=nats_cluster.urls, reconnect_time_wait=0.2, max_reconnect_attempts=-1
    )
    killed: int | None = None
    stream = unique("durable-r3")
    try:
        store = await JetStreamEventStore.open(nc, stream, JetStreamConfig(replica_count=3))
        events = await append(store, 10, 20)  # positions 1..200
        sub = store.durable_subscription("r3", ack_wait=timedelta(seconds=5))
        acked: set[int] = set()
        deliveries = 0

        async def consume() -> None:
            nonlocal deliveries
            async for delivery in sub:
                deliveries += 1
                await delivery.ack()
                acked.add(delivery.position)

        async with sub:
            consumer = asyncio.create_task(consume())
            try:
                await until(lambda: len(acked) >= 50 or consumer.done(), "50 events acked")
                info = await consumer_info(nc, store.stream_name, "r3")
                old = info["cluster"]["leader"]
                killed = nats_cluster.names.index(old)
                retries_before = store.stats.retries + sub.metrics.repulls
                nats_cluster.kill(killed)
                # Appended during the election: consumption must get these too.
                events += await append_more(store, 5)

                async def new_leader() -> bool:
                    try:
                        info = await consumer_info(nc, store.stream_name, "r3")
                    except (nats.errors.Error, TimeoutError):
                        return False
                    leader = (info.get("cluster") or {}).get("leader")
                    return leader is not None and leader != old

                await until(new_leader, "a new consumer leader", guard=120)
                everything = set(range(1, len(events) + 1))
                await until(
                    lambda: acked >= everything or consumer.done(), "every event acked", 120
                )
                assert not consumer.done(), consumer  # it never failed
            finally:
                consumer.cancel()
        assert acked == everything  # nothing lost
        # The kill reached the subscriber: a pull or an ack had to be sent again.
        assert store.stats.retries + sub.metrics.repulls > retries_before
        m = sub.metrics
        print(
            f"\n[durable R3 leader kill] events={len(events)} deliveries={deliveries} "
            f"(again after an ack: {deliveries - len(acked)}) repulls={m.repulls} "
            f"forgotten={m.forgotten} duplicates={m.duplicates} retries={store.stats.retries}"
        )
    finally:
        await nc.close()
        if killed is not None:
            await asyncio.to_thread(nats_cluster.start, killed)
        async with await nats.connect(servers=nats_cluster.urls) as admin:  # the cluster is shared
            js = admin.jetstream()
            for name in (stream, f"{stream}_snapshots", f"{stream}_parked"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name)


async def append_more(store: JetStreamEventStore, actors: int) -> list[Event]:
    """Five more events for each of *actors* new actors, one append each (retried by the
    store through an election)."""
    events = []
    for a in range(actors):
        for v in range(1, 6):
            event = Event("Deposited", f"late-{a}", v)
            await store.save_event(event)
            events.append(event)
    return events


async def test_a_cancel_that_comes_with_a_message_ends_the_wait(
    js_store: JetStreamEventStore,
) -> None:
    """A task waiting in __anext__ and cancelled as a message (an idle heartbeat) wakes
    its wait ends cancelled. (Python 3.11's wait_for could drop such a cancellation; this
    test does not hit that race every time: tests/test_replay_cancel.py reproduces it
    deterministically for the same waiting pattern in the replay.)"""
    await append(js_store, 1, 1)
    async with js_store.durable_subscription("cancelled") as sub:
        await (await next_delivery(sub)).ack()
        task = asyncio.create_task(anext(sub))
        waiters = sub._arrived._waiters  # type: ignore[attr-defined]
        await until(lambda: bool(waiters), "the task waits for a message")
        fired: list[bool] = []
        real_set = sub._arrived.set

        def set_and_cancel() -> None:
            real_set()
            if not fired:
                fired.append(True)
                task.cancel()

        sub._arrived.set = set_and_cancel  # type: ignore[method-assign]
        done, _ = await asyncio.wait([task], timeout=GUARD)
        assert fired  # the fault: the cancel came as a heartbeat woke the wait
        assert done and task.cancelled()


async def test_a_recreated_events_stream_ends_iteration(
    open_store: StoreFactory, nc: Client
) -> None:
    """The events stream is deleted and created again under the subscription: a new
    history, not the one the name covered: iteration raises StreamNotFoundError."""
    store = await open_store()
    await append(store, 1, 2)
    sub = store.durable_subscription("recreated", ack_wait=timedelta(seconds=1))
    async with sub:
        for _ in range(2):
            await (await next_delivery(sub)).ack()
        await nc.jetstream().delete_stream(store.stream_name)  # the fault
        again = await open_store(store.stream_name)  # creates it anew
        await again.save_event(Event("Deposited", "other", 1))
        with pytest.raises(StreamNotFoundError):
            await next_delivery(sub)
        assert sub.metrics.delivered == 2  # nothing of the new stream handed out


async def test_iteration_fails_when_the_connection_is_gone(
    nats_url: str, open_store: StoreFactory
) -> None:
    store = await open_store()
    await append(store, 1, 1)
    sub = store.durable_subscription("orphan")
    async with sub:
        await (await next_delivery(sub)).ack()
        await store._nc.close()
        with pytest.raises(StoreUnavailableError):
            await next_delivery(sub)
