"""The in-process event bus (``aether.bus``): patterns, filters, overflow, metrics, close.

No broker here (``EventBus`` is in-process); the NATS bus is ``tests/test_bus_nats.py``.
Concurrency is real asyncio tasks; waits are on conditions, never on time.
"""

from __future__ import annotations

import asyncio
import pickle
import re
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import assert_type

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from aether import AetherError, Event
from aether.bus import (
    INTERNAL_NAMESPACE,
    BusClosedError,
    BusError,
    BusMetrics,
    BusSubscription,
    EventBus,
    EventPublisher,
    EventStored,
    InvalidNamespaceError,
    NamespaceMetrics,
    NatsEventBus,
    SubscriptionFilter,
    SubscriptionOverflowError,
    match_actor_pattern,
    match_namespace_pattern,
)
from aether.bus.prometheus import BusCollector, register_bus_metrics
from aether.errors import InvalidEventError

#: Guards a wait that should end at once, so that a bug fails the test instead of hanging
#: it. Never a timing assertion.
GUARD = 30


def ev(n: int, actor: str = "order-1", event_type: str = "Placed") -> Event:
    return Event(event_type, actor, n, {"n": n})


def stored(n: int, actor: str = "order-1") -> EventStored:
    return EventStored(f"id-{n}", actor, n, 100 + n, datetime(2025, 1, 1, tzinfo=UTC))


async def take(sub: BusSubscription[Event], count: int) -> list[int]:
    """The versions of the next *count* events (a gap fails the test)."""
    async with asyncio.timeout(GUARD):
        return [(await anext(sub)).version for _ in range(count)]


# -- patterns: DESIGN.md's examples, verbatim ------------------------------------------------


def test_design_namespace_examples() -> None:
    assert match_namespace_pattern("prod.*", "prod.orders")
    assert not match_namespace_pattern("prod.*", "prod.a.b")
    assert match_namespace_pattern("prod.>", "prod.orders")
    assert match_namespace_pattern("prod.>", "prod.a.b")


def test_design_actor_examples() -> None:
    assert match_actor_pattern("order-*", "order-123")
    assert not match_actor_pattern("order-*", "customer-1")
    assert match_actor_pattern("tenant-a.*", "tenant-a.order-1")


@pytest.mark.parametrize(
    ("pattern", "namespace", "expected"),
    [
        ("*", "orders", True),
        ("*", "prod.orders", False),
        (">", "orders", True),
        (">", "prod.orders", True),
        ("prod.>", "prod", False),  # '>' needs at least one token
        ("prod", "prod", True),
        ("prod", "prod.orders", False),
        ("prod.orders", "prod", False),
        ("*.orders", "eu.orders", True),
        ("*.orders", "eu.stock", False),
        ("prod.>.x", "prod.>.x", True),  # '>' not last matches only itself
        ("prod.>.x", "prod.a.x", False),
        ("prod*", "products", False),  # no prefix wildcard in namespaces
        ("prod*", "prod*", True),
    ],
)
def test_namespace_pattern_table(pattern: str, namespace: str, expected: bool) -> None:
    assert match_namespace_pattern(pattern, namespace) is expected


@pytest.mark.parametrize(
    ("pattern", "actor", "expected"),
    [
        ("order-*", "order-", True),
        ("order-*", "order", False),
        ("*", "anything", True),
        ("*", "a.b", False),
        (">", "a.b", True),
        ("order-*", "order-1.x", False),
        ("tenant-*.order-*", "tenant-a.order-9", True),
        ("tenant-*.order-*", "tenant-a.customer-9", False),
        ("a*b", "axb", False),  # only a trailing '*' is a prefix wildcard
        ("a*b", "a*b", True),
    ],
)
def test_actor_pattern_table(pattern: str, actor: str, expected: bool) -> None:
    assert match_actor_pattern(pattern, actor) is expected


def reference_regex(pattern: str, *, prefixes: bool) -> re.Pattern[str]:
    """An independent statement of DESIGN.md's rules, as a regular expression."""
    tokens = pattern.split(".")
    parts = []
    for i, token in enumerate(tokens):
        if token == ">" and i == len(tokens) - 1:
            parts.append(r"[^.]*(?:\.[^.]*)*")
        elif token == "*":
            parts.append(r"[^.]*")
        elif prefixes and token.endswith("*"):
            parts.append(re.escape(token[:-1]) + r"[^.]*")
        else:
            parts.append(re.escape(token))
    return re.compile(r"\.".join(parts), re.DOTALL)


# Few distinct tokens, so that patterns and names collide often.
TOKENS = st.sampled_from(["a", "b", "ab", "order-1", "order-", "", "x y", "é"])
PATTERN_TOKENS = TOKENS | st.sampled_from(["*", ">", "a*", "order-*", "*b"])


def dotted(tokens: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(tokens, min_size=1, max_size=5).map(".".join)


@settings(max_examples=500)
@given(pattern=dotted(PATTERN_TOKENS), name=dotted(TOKENS | st.sampled_from(["*", ">"])))
def test_patterns_agree_with_the_reference(pattern: str, name: str) -> None:
    namespace_ref = reference_regex(pattern, prefixes=False).fullmatch(name) is not None
    actor_ref = reference_regex(pattern, prefixes=True).fullmatch(name) is not None
    assert match_namespace_pattern(pattern, name) is namespace_ref
    assert match_actor_pattern(pattern, name) is actor_ref


@given(pattern=st.text(max_size=12), name=st.text(max_size=12))
def test_patterns_agree_with_the_reference_on_any_text(pattern: str, name: str) -> None:
    assert match_namespace_pattern(pattern, name) is (
        reference_regex(pattern, prefixes=False).fullmatch(name) is not None
    )
    assert match_actor_pattern(pattern, name) is (
        reference_regex(pattern, prefixes=True).fullmatch(name) is not None
    )


# -- the filter ------------------------------------------------------------------------------


def test_filter_types_and_actor_pattern() -> None:
    f = SubscriptionFilter(event_types=["Placed", "Paid"], actor_pattern="order-*")
    assert f.matches(ev(1, "order-7", "Paid"))
    assert not f.matches(ev(1, "order-7", "Shipped"))
    assert not f.matches(ev(1, "customer-7", "Paid"))
    assert SubscriptionFilter().matches(ev(1, "anyone", "Anything"))
    assert SubscriptionFilter(actor_pattern="order-*").matches(ev(1, "order-1", "X"))
    assert SubscriptionFilter(event_types={"X"}) == SubscriptionFilter(event_types=["X", "X"])


def test_filter_refuses_a_single_string_and_non_strings() -> None:
    with pytest.raises(TypeError, match=r"event_types=\['Placed'\]"):
        SubscriptionFilter(event_types="Placed")
    with pytest.raises(TypeError):
        SubscriptionFilter(event_types=[1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        SubscriptionFilter(actor_pattern=3)  # type: ignore[arg-type]


async def test_subscription_applies_its_filter() -> None:
    bus = EventBus()
    sub = bus.subscribe(">", SubscriptionFilter(event_types=["Paid"], actor_pattern="order-*"))
    await bus.publish("shop", ev(1, "order-1", "Placed"))
    await bus.publish("shop", ev(2, "order-1", "Paid"))
    await bus.publish("shop", ev(3, "customer-1", "Paid"))
    await bus.publish("shop", ev(4, "order-2", "Paid"))
    assert await take(sub, 2) == [2, 4]
    assert sub.pending == 0


async def test_internal_filter_matches_actor_and_refuses_event_types() -> None:
    bus = EventBus()
    sub = bus.subscribe(INTERNAL_NAMESPACE, SubscriptionFilter(actor_pattern="order-*"))
    await bus.publish(INTERNAL_NAMESPACE, stored(1, "customer-1"))
    await bus.publish(INTERNAL_NAMESPACE, stored(2, "order-9"))
    async with asyncio.timeout(GUARD):
        assert await anext(sub) == stored(2, "order-9")
    with pytest.raises(ValueError, match="no event type"):
        bus.subscribe(INTERNAL_NAMESPACE, SubscriptionFilter(event_types=["Placed"]))


# -- routing ---------------------------------------------------------------------------------


async def test_each_subscription_gets_what_its_pattern_matches_in_order() -> None:
    bus = EventBus()
    patterns = ["prod.*", "prod.>", "*", ">", "prod.orders", "dev.>"]
    subs = {p: bus.subscribe(p) for p in patterns}
    namespaces = ["prod.orders", "prod.eu.orders", "prod", "dev.x", "prod.orders"]
    for n, namespace in enumerate(namespaces, start=1):
        await bus.publish(namespace, ev(n))
    for pattern, sub in subs.items():
        expected = [
            n for n, ns in enumerate(namespaces, start=1) if match_namespace_pattern(pattern, ns)
        ]
        assert await take(sub, len(expected)) == expected, pattern
        assert sub.pending == 0, pattern


async def test_wildcards_never_reach_the_internal_namespace() -> None:
    bus = EventBus()
    everything, star = bus.subscribe(">"), bus.subscribe("*")
    internal = bus.subscribe(INTERNAL_NAMESPACE)
    await bus.publish(INTERNAL_NAMESPACE, stored(1))
    await bus.publish("orders", ev(2))
    async with asyncio.timeout(GUARD):
        assert await anext(internal) == stored(1)
    assert await take(everything, 1) == [2] and everything.pending == 0
    assert await take(star, 1) == [2] and star.pending == 0


async def test_message_kinds_are_checked_against_the_namespace() -> None:
    bus = EventBus()
    with pytest.raises(TypeError, match="EventStored notices only"):
        await bus.publish(INTERNAL_NAMESPACE, ev(1))
    with pytest.raises(TypeError, match="goes to '__internal__'"):
        await bus.publish("orders", stored(1))
    with pytest.raises(TypeError, match="takes an Event"):
        await bus.publish("orders", {"not": "an event"})  # type: ignore[arg-type]
    assert bus.metrics.namespaces == {}  # refused before anything was counted


async def test_subscriptions_are_typed_by_pattern() -> None:
    """For mypy: the internal namespace yields EventStored, any other pattern Event."""
    async with EventBus() as bus:
        assert_type(bus.subscribe(INTERNAL_NAMESPACE), BusSubscription[EventStored])
        assert_type(bus.subscribe("orders.>"), BusSubscription[Event])
        assert_type(bus, EventBus)


@pytest.mark.parametrize(
    "namespace",
    ["", ".", "a.", ".a", "a..b", "a b", "a\tb", "a\nb", "a.*", "a.>", "prod*", "__internal__.x"],
)
async def test_bad_namespaces_are_refused(namespace: str) -> None:
    bus = EventBus()
    with pytest.raises(InvalidNamespaceError):
        await bus.publish(namespace, ev(1))
    assert bus.metrics.namespaces == {}


@pytest.mark.parametrize(
    "pattern", ["", "a..b", "a b", ">.a", "a.>.b", "prod*", "a.b*", "__internal__.>", 7]
)
def test_bad_patterns_are_refused(pattern: str) -> None:
    bus = EventBus()
    with pytest.raises(InvalidNamespaceError) as info:
        bus.subscribe(pattern)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AetherError)
    assert bus.metrics.active_subscriptions == 0


def test_bad_buffer_and_filter_are_refused() -> None:
    bus = EventBus()
    for buffer in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="buffer"):
            bus.subscribe("a", buffer=buffer)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SubscriptionFilter"):
        bus.subscribe("a", "order-*")  # type: ignore[call-overload]


# -- overflow: never silent ------------------------------------------------------------------


async def test_overflow_raises_once_at_the_gap_and_goes_on() -> None:
    bus = EventBus()
    sub = bus.subscribe("orders", buffer=3)
    for n in range(1, 4):
        await bus.publish("orders", ev(n))
    assert await take(sub, 1) == [1]  # holds 2, 3
    for n in range(4, 7):
        await bus.publish("orders", ev(n))  # 4 fits, 5 drops 2, 6 drops 3
    async with asyncio.timeout(GUARD):
        with pytest.raises(SubscriptionOverflowError) as info:
            await anext(sub)
    assert info.value.dropped == 2 and sub.dropped == 2
    assert await take(sub, 3) == [4, 5, 6]  # once: the next calls go on after the gap
    # A second gap is reported on its own.
    for n in range(7, 12):
        await bus.publish("orders", ev(n))
    with pytest.raises(SubscriptionOverflowError) as info:
        await anext(sub)
    assert info.value.dropped == 2 and sub.dropped == 4
    assert await take(sub, 3) == [9, 10, 11]
    counters = bus.metrics.namespace("orders")
    assert (counters.published, counters.delivered, counters.dropped) == (11, 7, 4)


async def test_overflow_in_async_for_and_resume() -> None:
    """The documented idiom: catch the gap, iterate again."""
    bus = EventBus()
    sub = bus.subscribe("orders", buffer=2)
    for n in range(1, 6):
        await bus.publish("orders", ev(n))
    await bus.close()  # the subscription delivers what it holds, then ends
    seen: list[int | str] = []
    async with asyncio.timeout(GUARD):
        while True:
            try:
                async for event in sub:
                    seen.append(event.version)
                break
            except SubscriptionOverflowError as gap:
                seen.append(f"gap {gap.dropped}")
    assert seen == ["gap 3", 4, 5]


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 5),
    steps=st.lists(st.tuples(st.booleans(), st.integers(1, 7)), max_size=25),
)
def test_overflow_matches_a_model(capacity: int, steps: list[tuple[bool, int]]) -> None:
    """Any interleaving of publishes and reads: what the iterator yields (events and gaps)
    and what the metrics count equal a simple model of a bounded queue."""

    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe("ns", buffer=capacity)
        queue: list[int] = []
        gap = dropped = delivered = published = 0
        for publish, count in steps:
            for _ in range(count):
                if publish:
                    published += 1
                    await bus.publish("ns", ev(published))
                    queue.append(published)
                    if len(queue) > capacity:
                        queue.pop(0)
                        gap += 1
                        dropped += 1
                elif gap:
                    with pytest.raises(SubscriptionOverflowError) as info:
                        await anext(sub)
                    assert info.value.dropped == gap
                    gap = 0
                elif queue:
                    assert (await anext(sub)).version == queue.pop(0)
                    delivered += 1
            assert sub.pending == len(queue)
        counters = bus.metrics.namespace("ns")
        assert (counters.published, counters.delivered, counters.dropped) == (
            published,
            delivered,
            dropped,
        )

    asyncio.run(scenario())


async def test_a_blocked_subscriber_slows_neither_publisher_nor_others() -> None:
    """A subscriber stuck in its handler forever; the publisher goes on in lockstep with
    a second subscriber, which receives every event; the stuck one loses all but its
    buffer and is told how many. Nothing here depends on time."""
    bus = EventBus()
    total = 500
    stuck = bus.subscribe("orders", buffer=8)
    fast = bus.subscribe("orders", buffer=1)  # a buffer of one: no slack at all
    release = asyncio.Event()
    stuck_got_first = asyncio.Event()
    received: list[int] = []
    progress = asyncio.Condition()

    async def stuck_consumer() -> list[int | str]:
        seen: list[int | str] = [(await anext(stuck)).version]
        stuck_got_first.set()
        await release.wait()  # blocked until the publisher is done
        while True:
            try:
                async for event in stuck:
                    seen.append(event.version)
                return seen
            except SubscriptionOverflowError as gap:
                seen.append(f"gap {gap.dropped}")

    async def fast_consumer() -> None:
        async for event in fast:
            async with progress:
                received.append(event.version)
                progress.notify_all()

    async with asyncio.timeout(GUARD):
        stuck_task = asyncio.create_task(stuck_consumer())
        fast_task = asyncio.create_task(fast_consumer())
        await bus.publish("orders", ev(1))
        await stuck_got_first.wait()
        async with progress:
            await progress.wait_for(lambda: received == [1])
        for n in range(2, total + 1):
            await bus.publish("orders", ev(n))
            async with progress:  # lockstep with the fast subscriber only
                await progress.wait_for(lambda n=n: len(received) == n)  # type: ignore[misc]
        # The publisher finished while the stuck subscriber never moved.
        assert received == list(range(1, total + 1))
        assert stuck.pending == 8
        release.set()
        await bus.close()
        seen = await stuck_task
        await fast_task
    assert seen == [1, f"gap {total - 1 - 8}", *range(total - 7, total + 1)]
    counters = bus.metrics.namespace("orders")
    assert counters.dropped == total - 1 - 8
    assert counters.delivered == total + 1 + 8


async def test_concurrent_publishers_and_subscribers() -> None:
    """Publisher tasks that yield between publishes and subscriber tasks reading at once:
    every subscriber gets every event once, each publisher's in order."""
    bus = EventBus()
    publishers, per_publisher = 8, 200
    subs = [bus.subscribe("load.>", buffer=publishers * per_publisher) for _ in range(10)]

    async def publish(p: int) -> None:
        for n in range(1, per_publisher + 1):
            await bus.publish(f"load.p{p}", ev(n, f"p{p}"))
            await asyncio.sleep(0)  # let the others interleave (a yield, not a wait)

    async def read(sub: BusSubscription[Event]) -> list[tuple[str, int]]:
        return [(e.actor_id, e.version) async for e in sub]

    async with asyncio.timeout(GUARD):
        readers = [asyncio.create_task(read(sub)) for sub in subs]
        await asyncio.gather(*(publish(p) for p in range(publishers)))
        await bus.close()  # the readers end after what their subscriptions hold
        results = await asyncio.gather(*readers)
    for got in results:
        assert len(got) == publishers * per_publisher
        for p in range(publishers):
            assert [n for a, n in got if a == f"p{p}"] == list(range(1, per_publisher + 1))
    assert bus.metrics.total.delivered == 10 * publishers * per_publisher


async def test_a_second_concurrent_iterator_is_refused() -> None:
    bus = EventBus()
    sub = bus.subscribe("a")
    started = asyncio.Event()

    async def first() -> Event:
        started.set()
        return await anext(sub)  # parks in __anext__ before main runs again

    waiting = asyncio.create_task(first())
    async with asyncio.timeout(GUARD):
        await started.wait()
        with pytest.raises(RuntimeError, match="already iterating"):
            await anext(sub)
        await bus.publish("a", ev(1))
        assert (await waiting).version == 1


# -- close -----------------------------------------------------------------------------------


async def test_close_ends_a_waiting_iterator_and_discards() -> None:
    bus = EventBus()
    sub = bus.subscribe("a")
    other = bus.subscribe("a")
    collected: list[int] = []
    got_one = asyncio.Event()

    async def consume() -> None:
        async for event in sub:  # parks again before main runs
            collected.append(event.version)
            got_one.set()

    task = asyncio.create_task(consume())
    await bus.publish("a", ev(1))
    async with asyncio.timeout(GUARD):
        await got_one.wait()
        await sub.close()
        await task  # the parked iterator woke up and ended
    assert sub.closed and bus.metrics.active_subscriptions == 1
    await bus.publish("a", ev(2))
    assert sub.pending == 0 and other.pending == 2
    await sub.close()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await anext(sub)


async def test_async_with_closes_the_subscription() -> None:
    bus = EventBus()
    async with bus.subscribe("a") as sub:
        assert bus.metrics.active_subscriptions == 1
        await bus.publish("a", ev(1))
        assert await take(sub, 1) == [1]
    assert sub.closed and bus.metrics.active_subscriptions == 0


async def test_closing_the_bus() -> None:
    async with EventBus() as bus:
        sub = bus.subscribe("a")
        await bus.publish("a", ev(1))
        await bus.publish("a", ev(2))
    assert bus.closed and sub.closed
    async with asyncio.timeout(GUARD):
        assert [e.version async for e in sub] == [1, 2]  # what it held, then the end
    with pytest.raises(BusClosedError) as info:
        await bus.publish("a", ev(3))
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, BusError)
    with pytest.raises(BusClosedError):
        bus.subscribe("a")
    await bus.close()  # idempotent
    assert bus.metrics.active_subscriptions == 0


# -- metrics ---------------------------------------------------------------------------------


async def test_metrics_per_namespace() -> None:
    bus = EventBus()
    a = bus.subscribe("shop.*", buffer=1)
    b = bus.subscribe("shop.>")
    await bus.publish("shop.orders", ev(1))
    await bus.publish("shop.orders", ev(2))  # a drops 1
    await bus.publish("shop.eu.stock", ev(3))  # only b
    await take(b, 3)
    metrics = bus.metrics
    assert isinstance(metrics, BusMetrics)
    assert metrics.active_subscriptions == 2
    assert metrics.namespace("shop.orders") == NamespaceMetrics(published=2, delivered=2, dropped=1)
    assert metrics.namespace("shop.eu.stock") == NamespaceMetrics(published=1, delivered=1)
    assert metrics.namespace("never") == NamespaceMetrics()
    assert metrics.total == NamespaceMetrics(published=3, delivered=3, dropped=1)
    assert a.dropped == 1
    # A snapshot: it does not change afterwards.
    await bus.publish("shop.orders", ev(4))
    assert metrics.namespace("shop.orders").published == 2
    assert bus.metrics.namespace("shop.orders").published == 3


# -- the publisher protocol and EventStored ----------------------------------------------------


async def test_buses_are_event_publishers() -> None:
    async def store_append(bus: EventPublisher) -> None:  # what a store does with bus=
        await bus.publish(INTERNAL_NAMESPACE, stored(1))

    bus = EventBus()
    sub = bus.subscribe(INTERNAL_NAMESPACE)
    await store_append(bus)
    async with asyncio.timeout(GUARD):
        assert await anext(sub) == stored(1)
    assert isinstance(bus, EventPublisher)
    assert issubclass(NatsEventBus, EventPublisher)


def test_event_stored_json_round_trip() -> None:
    notice = EventStored(
        "evt-1", "order.1 é", 7, 2**63 - 1, datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    )
    assert EventStored.from_json(notice.to_json()) == notice
    # Another timezone is written in UTC, and reads back as the same instant.
    plus2 = timezone(timedelta(hours=2))
    shifted = EventStored("e", "a", 1, 1, datetime(2025, 1, 1, 2, tzinfo=plus2))
    assert b'"timestamp":"2025-01-01T00:00:00Z"' in shifted.to_json()
    assert EventStored.from_json(shifted.to_json()) == shifted
    with pytest.raises(AttributeError):
        notice.version = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"eventId":"e","actorId":"a","version":1,"position":1}',
        b'{"eventId":"","actorId":"a","version":1,"position":1,"timestamp":"2025-01-01T00:00:00Z"}',
        b'{"eventId":"e","actorId":"a","version":true,"position":1,"timestamp":"2025-01-01T00:00:00Z"}',
        b'{"eventId":"e","actorId":"a","version":-1,"position":1,"timestamp":"2025-01-01T00:00:00Z"}',
        b'{"eventId":"e","actorId":"a","version":1,"position":1,"timestamp":"2025-01-01T00:00:00"}',
    ],
)
def test_event_stored_refuses_malformed_json(raw: bytes) -> None:
    with pytest.raises(InvalidEventError, match="malformed EventStored"):
        EventStored.from_json(raw)


def test_event_stored_refuses_to_encode_bad_fields() -> None:
    now = datetime.now(UTC)
    for bad in (
        EventStored("", "a", 1, 1, now),
        EventStored("e", "a", -1, 1, now),
        EventStored("e", "a", 1, 1, datetime(2025, 1, 1)),  # naive
    ):
        with pytest.raises(InvalidEventError):
            bad.to_json()


def test_overflow_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(SubscriptionOverflowError(dropped=42)))
    assert isinstance(error, SubscriptionOverflowError) and error.dropped == 42
    assert "42 messages dropped" in str(error)


# -- Prometheus ------------------------------------------------------------------------------


async def test_prometheus_scrape() -> None:
    bus, audit = EventBus(), EventBus()
    bus.subscribe("orders", buffer=1)
    await bus.publish("orders", ev(1))
    await bus.publish("orders", ev(2))  # one dropped
    registry = CollectorRegistry()
    collector = register_bus_metrics(bus, registry, bus_name="main")
    assert isinstance(collector, BusCollector)
    collector.add(audit, bus_name="audit")
    await audit.publish("log", ev(1))
    text = generate_latest(registry).decode()
    assert 'aether_bus_published_total{bus="main",namespace="orders"} 2.0' in text
    assert 'aether_bus_dropped_total{bus="main",namespace="orders"} 1.0' in text
    assert 'aether_bus_delivered_total{bus="main",namespace="orders"} 0.0' in text
    assert 'aether_bus_publish_errors_total{bus="main",namespace="orders"} 0.0' in text
    assert 'aether_bus_active_subscriptions{bus="main"} 1.0' in text
    assert 'aether_bus_active_subscriptions{bus="audit"} 0.0' in text
    assert 'aether_bus_published_total{bus="audit",namespace="log"} 1.0' in text
    # Read at each scrape.
    await bus.publish("orders", ev(3))
    assert 'aether_bus_published_total{bus="main",namespace="orders"} 3.0' in (
        generate_latest(registry).decode()
    )
    with pytest.raises(ValueError, match="exported already"):
        collector.add(audit, bus_name="audit")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register_bus_metrics(audit, registry)  # a second collector: use add() instead
    assert registry.get_sample_value(
        "aether_bus_dropped_total", {"bus": "main", "namespace": "orders"}
    ) == (2.0)


def test_prometheus_module_names_the_extra_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n.startswith("prometheus_client")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "aether.bus.prometheus")
    with pytest.raises(ImportError, match=re.escape('"aether-eventsourcing[prometheus]"')):
        import aether.bus.prometheus  # noqa: F401
