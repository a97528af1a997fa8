"""``NatsEventBus`` on a real nats-server: delivery across connections and OS processes,
exactly once per subscriber (local ones included), NATS wildcards, EventStored on the
wire, errors and their metrics.

Every test uses a subject prefix of its own, so tests sharing the session server never
see each other's messages. "Nothing more arrived" is proved by an ``End`` event sent
after the publishers flushed (NATS keeps each connection's order), never by waiting.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import nats
import pytest
from nats.aio.client import Client

from aether import Event
from aether.bus import (
    INTERNAL_NAMESPACE,
    KIND_HEADER,
    NODE_HEADER,
    ORIGIN_HEADER,
    BusConfigurationError,
    BusPublishError,
    BusSubscribeError,
    BusSubscription,
    EventStored,
    InvalidNamespaceError,
    NamespaceMetrics,
    NatsEventBus,
    SubscriptionOverflowError,
)
from aether.errors import EventTooLargeError
from aether.testing import NatsServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "event_bus.py"
#: Guards waits that should end soon, so that a bug fails instead of hanging. Never a
#: timing assertion.
GUARD = 60

Connect = Callable[[], Awaitable[Client]]


@pytest.fixture
async def connect(nats_url: str) -> AsyncIterator[Connect]:
    """Open as many connections as a test needs (each is a separate NATS client)."""
    clients: list[Client] = []

    async def open_one() -> Client:
        client = await nats.connect(nats_url)
        clients.append(client)
        return client

    yield open_one
    for client in clients:
        if not client.is_closed:
            await client.close()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}.events"


def ev(version: int, actor: str = "order-1", event_type: str = "Placed") -> Event:
    return Event(event_type, actor, version, {"v": version})


async def until_end(sub: BusSubscription[Event]) -> list[tuple[str, int]]:
    """(actor, version) of each event before the first End event."""
    got: list[tuple[str, int]] = []
    async with asyncio.timeout(GUARD):
        async for event in sub:
            if event.event_type == "End":
                return got
            got.append((event.actor_id, event.version))
    raise AssertionError("the subscription ended before End")


async def test_every_subscriber_local_or_remote_gets_each_event_once(
    connect: Connect, prefix: str
) -> None:
    nc_a, nc_b, nc_c = await connect(), await connect(), await connect()
    a = NatsEventBus(nc_a, node_id="a", prefix=prefix)
    b = NatsEventBus(nc_b, node_id="b", prefix=prefix)
    ender = NatsEventBus(nc_c, prefix=prefix)
    async with a.subscribe("orders") as on_a, b.subscribe("orders") as on_b:
        publishing = [
            *(a.publish("orders", ev(n, "from-a")) for n in range(1, 101)),
            *(b.publish("orders", ev(n, "from-b")) for n in range(1, 101)),
        ]
        await asyncio.gather(*publishing)
        await nc_a.flush()  # every echo of a's and b's events is on its way before End
        await nc_b.flush()
        await ender.publish("orders", ev(1, "ender", "End"))
        got_a, got_b = await until_end(on_a), await until_end(on_b)
    expected = {(actor, n) for actor in ("from-a", "from-b") for n in range(1, 101)}
    for got in (got_a, got_b):
        assert len(got) == len(expected) and set(got) == expected  # each once
        for actor in ("from-a", "from-b"):  # each publisher's order kept
            assert [n for who, n in got if who == actor] == list(range(1, 101))
    assert a.metrics.namespace("orders") == NamespaceMetrics(
        published=100, delivered=201, received=101
    )
    assert b.metrics.namespace("orders") == NamespaceMetrics(
        published=100, delivered=201, received=101
    )
    for bus in (a, b, ender):
        await bus.close()


async def test_patterns_are_nats_wildcards(connect: Connect, prefix: str) -> None:
    publisher = NatsEventBus(await connect(), prefix=prefix)
    async with NatsEventBus(await connect(), prefix=prefix) as bus:
        patterns = ["prod.*", "prod.>", ">", "prod.orders", "*"]
        subs = {p: bus.subscribe(p) for p in patterns}
        for sub in subs.values():
            await sub.ready()
        namespaces = ["prod.orders", "prod.a.b", "prod", "dev.x", "prod.orders"]
        for n, namespace in enumerate(namespaces, start=1):
            await publisher.publish(namespace, ev(n))
        now = datetime.now(UTC)
        await publisher.publish(INTERNAL_NAMESPACE, EventStored("e", "order-1", 1, 1, now))
        # One End where each pattern sees it; every event above precedes them all.
        for namespace in ("prod.end", "prod.orders", "end"):
            await publisher.publish(namespace, ev(1, "x", "End"))
        expected = {
            "prod.*": [1, 5],
            "prod.>": [1, 2, 5],
            ">": [1, 2, 3, 4, 5],  # not the internal namespace's EventStored
            "prod.orders": [1, 5],
            "*": [3],
        }
        for pattern, sub in subs.items():
            assert [n for _, n in await until_end(sub)] == expected[pattern], pattern
    await publisher.close()


async def test_event_and_event_stored_round_trip(connect: Connect, prefix: str) -> None:
    sender = NatsEventBus(await connect(), prefix=prefix)
    receiver = NatsEventBus(await connect(), prefix=prefix)
    async with (
        receiver.subscribe(INTERNAL_NAMESPACE) as notices,
        receiver.subscribe("orders") as events,
    ):
        notice = EventStored("evt-1", "order-7", 3, 42, datetime(2025, 3, 4, 5, 6, 7, 89, UTC))
        event = Event(
            "Placed", "order-7", 3, {"items": [1, 2.5, None, {"k": "é"}]}, command_id="cmd-1"
        )
        event.correlation_id = "corr-1"
        await sender.publish(INTERNAL_NAMESPACE, notice)
        await sender.publish("orders", event)
        async with asyncio.timeout(GUARD):
            got_notice = await anext(notices)
            got_event = await anext(events)
    assert got_notice == notice and isinstance(got_notice, EventStored)
    assert got_event == event and got_event is not event
    assert got_event.correlation_id == "corr-1" and got_event.position is None
    await sender.close()
    await receiver.close()


async def test_foreign_and_malformed_messages(connect: Connect, prefix: str) -> None:
    raw = await connect()
    async with NatsEventBus(await connect(), prefix=prefix) as bus:
        async with bus.subscribe("orders") as sub:
            subject = f"{prefix}.orders"
            await raw.publish(subject, b"not json")
            await raw.publish(subject, ev(1).to_json(), headers={KIND_HEADER: "stored"})
            await raw.publish(subject, ev(2).to_json(), headers={KIND_HEADER: "gossip"})
            # Plain event JSON from any NATS client (no headers) is an event.
            await raw.publish(subject, ev(3, "foreign").to_json())
            await raw.publish(subject, ev(4, "x", "End").to_json())
            assert await until_end(sub) == [("foreign", 3)]
        counters = bus.metrics.namespace("orders")
        assert (counters.malformed, counters.received, counters.delivered) == (3, 2, 2)


async def test_a_slow_remote_subscriber_overflows_alone(connect: Connect, prefix: str) -> None:
    publisher = NatsEventBus(await connect(), prefix=prefix)
    async with NatsEventBus(await connect(), prefix=prefix) as bus:
        slow = bus.subscribe("orders", buffer=2)  # nobody reads it until the end
        fast = bus.subscribe("orders", buffer=1000)
        await slow.ready()
        await fast.ready()
        for n in range(1, 21):
            await publisher.publish("orders", ev(n))
        await publisher.publish("orders", ev(21, "x", "End"))
        assert [n for _, n in await until_end(fast)] == list(range(1, 21))
        # The same NATS message reached both: slow holds the last two, and knows the rest.
        assert slow.pending == 2
        with pytest.raises(SubscriptionOverflowError) as gap:
            await anext(slow)
        assert gap.value.dropped == 19
        assert (await anext(slow)).version == 20
        assert (await anext(slow)).event_type == "End"
        assert bus.metrics.namespace("orders").dropped == 19
    await publisher.close()


async def test_one_nats_subscription_per_pattern(connect: Connect, prefix: str) -> None:
    nc = await connect()
    publisher = NatsEventBus(await connect(), prefix=prefix)
    bus = NatsEventBus(nc, prefix=prefix)
    before = len(nc._subs)
    first, second = bus.subscribe("orders"), bus.subscribe("orders")
    other = bus.subscribe("stock.>")
    for sub in (first, second, other):
        await sub.ready()
    assert len(nc._subs) == before + 2
    await publisher.publish("orders", ev(1))
    await publisher.publish("orders", ev(2, "x", "End"))
    assert await until_end(first) == [("order-1", 1)]
    assert await until_end(second) == [("order-1", 1)]
    await first.close()
    assert len(nc._subs) == before + 2  # second still uses it
    await second.close()
    assert len(nc._subs) == before + 1
    assert bus.metrics.active_subscriptions == 1
    await bus.close()
    assert len(nc._subs) == before and nc.is_connected  # the bus never closes nc
    await publisher.close()


async def test_publish_errors_are_typed_and_counted(connect: Connect, prefix: str) -> None:
    nc = await connect()
    bus = NatsEventBus(nc, prefix=prefix)
    async with bus.subscribe("orders") as sub:
        big = Event("Big", "order-1", 1, {"blob": "x" * (nc.max_payload + 1)})
        with pytest.raises(EventTooLargeError):
            await bus.publish("orders", big)
        bad = Event("Bad", "order-1", 1, {"nan": float("nan")})
        with pytest.raises(ValueError):  # InvalidEventError
            await bus.publish("orders", bad)
        await nc.close()
        with pytest.raises(BusPublishError) as info:
            await bus.publish("orders", ev(1))
        assert info.value.__cause__ is not None
        assert sub.pending == 0  # a failed publish reached nobody, local ones included
    assert bus.metrics.namespace("orders") == NamespaceMetrics(publish_errors=3)
    with pytest.raises(InvalidNamespaceError):
        await bus.publish("orders.*", ev(1))
    await bus.close()


async def test_a_failed_nats_subscribe_closes_the_subscription(
    connect: Connect, prefix: str
) -> None:
    nc = await connect()
    bus = NatsEventBus(nc, prefix=prefix)
    await nc.close()
    sub = bus.subscribe("orders")
    with pytest.raises(BusSubscribeError):
        await sub.ready()
    assert sub.closed and bus.metrics.active_subscriptions == 0
    with pytest.raises(BusSubscribeError):
        await anext(sub)  # the iterator reports it too, once
    with pytest.raises(StopAsyncIteration):
        await anext(sub)
    with pytest.raises(BusSubscribeError):
        async with bus.subscribe("stock"):
            pass
    await bus.close()


async def test_prefix_and_node_id_are_checked(connect: Connect) -> None:
    nc = await connect()
    for bad in ("", "a..b", "a.*", "a b", "a.>"):
        with pytest.raises(InvalidNamespaceError):
            NatsEventBus(nc, prefix=bad)
    with pytest.raises(ValueError, match="node_id"):
        NatsEventBus(nc, node_id="")
    assert NatsEventBus(nc).node_id != NatsEventBus(nc).node_id
    bus = NatsEventBus(nc, node_id="n1", prefix="x.y")
    assert (bus.node_id, bus.prefix) == ("n1", "x.y")


async def test_own_messages_carry_the_node_header(connect: Connect, prefix: str) -> None:
    raw = await connect()
    sniffer = await raw.subscribe(f"{prefix}.>")
    await raw.flush()
    bus = NatsEventBus(await connect(), node_id="node-7", prefix=prefix)
    event = ev(1)
    await bus.publish("orders", event)
    await bus.publish(INTERNAL_NAMESPACE, EventStored("e", "a", 1, 1, datetime.now(UTC)))
    async with asyncio.timeout(GUARD):
        first, second = await sniffer.next_msg(GUARD), await sniffer.next_msg(GUARD)
    assert first.subject == f"{prefix}.orders" and Event.from_json(first.data) == event
    assert first.headers is not None and second.headers is not None
    origin = first.headers[ORIGIN_HEADER]
    assert first.headers == {NODE_HEADER: "node-7", ORIGIN_HEADER: origin, KIND_HEADER: "event"}
    assert second.headers == {NODE_HEADER: "node-7", ORIGIN_HEADER: origin, KIND_HEADER: "stored"}
    other = NatsEventBus(await connect(), node_id="node-7", prefix=prefix)
    await other.publish("orders", event)
    third = await sniffer.next_msg(GUARD)
    assert third.headers is not None and third.headers[NODE_HEADER] == "node-7"
    assert third.headers[ORIGIN_HEADER] != origin  # drawn by each bus instance
    await bus.close()
    await other.close()


async def test_buses_sharing_a_node_id_or_a_connection_get_each_others_messages(
    connect: Connect, prefix: str
) -> None:
    """Regression: echo suppression once compared the user-chosen ``node_id``, so a bus
    skipped the messages of another bus with the same ``node_id``. Now each bus instance
    skips only its own: here four buses all named "same", two on one connection, each get
    every message once."""
    shared = await connect()
    buses = [
        NatsEventBus(shared, node_id="same", prefix=prefix),
        NatsEventBus(shared, node_id="same", prefix=prefix),
        NatsEventBus(await connect(), node_id="same", prefix=prefix),
        NatsEventBus(await connect(), node_id="same", prefix=prefix),
    ]
    subs = [bus.subscribe("orders") for bus in buses]
    for sub in subs:
        await sub.ready()
    for i, bus in enumerate(buses):
        await bus.publish("orders", ev(1, f"from-{i}"))
        await bus._nc.flush()
    ender = NatsEventBus(await connect(), prefix=prefix)
    await ender.publish("orders", ev(1, "ender", "End"))
    expected = sorted((f"from-{i}", 1) for i in range(len(buses)))
    for sub in subs:
        assert sorted(await until_end(sub)) == expected  # each once, its own included
    for bus in (*buses, ender):
        await bus.close()


async def test_a_no_echo_connection_is_refused(nats_url: str) -> None:
    """Regression: on a connection created with ``no_echo=True`` the server never sends
    the connection its own messages, so buses sharing it silently missed each other's:
    such a connection is refused when the bus is made."""
    nc = await nats.connect(nats_url, no_echo=True)
    try:
        with pytest.raises(BusConfigurationError, match="no_echo"):
            NatsEventBus(nc)
    finally:
        await nc.close()


async def test_overlapping_patterns_count_received_per_nats_subscription(
    connect: Connect, prefix: str
) -> None:
    """``received`` counts a message once per NATS subscription of the bus (one per
    distinct pattern), as its docstring says: 5 messages matching ``x.*`` and ``x.>``
    count 10; each subscription gets each message once."""
    sender = NatsEventBus(await connect(), prefix=prefix)
    bus = NatsEventBus(await connect(), prefix=prefix)
    star, deep = bus.subscribe("x.*"), bus.subscribe("x.>")
    await star.ready()
    await deep.ready()
    for version in range(1, 6):
        await sender.publish("x.y", ev(version))
    await sender.publish("x.y", ev(1, "ender", "End"))
    for sub in (star, deep):
        assert await until_end(sub) == [("order-1", v) for v in range(1, 6)]
    metrics = bus.metrics.namespace("x.y")
    assert (metrics.received, metrics.delivered) == (12, 12)  # End included, twice
    for b in (sender, bus):
        await b.close()


@pytest.mark.fault
async def test_subscriptions_survive_a_server_restart(fresh_nats_server: NatsServer) -> None:
    """The client resubscribes after a reconnect: the bus delivers again (what was
    published while the server was down is lost: at most once)."""
    reconnected = [asyncio.Event(), asyncio.Event()]
    clients = []
    for flag in reconnected:

        async def on_reconnect(flag: asyncio.Event = flag) -> None:
            flag.set()

        clients.append(
            await nats.connect(
                fresh_nats_server.url,
                reconnected_cb=on_reconnect,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.05,
            )
        )
    sender, receiver = (NatsEventBus(nc, prefix="bus") for nc in clients)
    try:
        async with receiver.subscribe("orders") as sub:
            await sender.publish("orders", ev(1))
            assert await take_one(sub) == 1
            await asyncio.to_thread(fresh_nats_server.kill)
            await asyncio.to_thread(fresh_nats_server.restart)
            async with asyncio.timeout(GUARD):
                for flag in reconnected:
                    await flag.wait()
            await clients[1].flush()  # the resubscription reached the server
            await sender.publish("orders", ev(2))
            assert await take_one(sub) == 2
    finally:
        for bus in (sender, receiver):
            await bus.close()
        for nc in clients:
            await nc.close()


async def take_one(sub: BusSubscription[Event]) -> int:
    async with asyncio.timeout(GUARD):
        return (await anext(sub)).version


# -- across OS processes --------------------------------------------------------------------


async def read_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(GUARD):
        line = await process.stdout.readline()
    if not line:
        raise AssertionError(f"node process exited early ({await process.wait()})")
    return line.decode().strip()


@pytest.mark.slow
async def test_across_processes_every_subscriber_gets_each_event_once(
    nats_url: str, connect: Connect, prefix: str
) -> None:
    """Three node processes and this one each subscribe to ``prod.*`` and ``prod.>`` and
    publish; every subscription, in every process, gets each matching event exactly once
    (its own node's included) and each publisher's events in order."""
    count, names = 60, ["p1", "p2", "p3"]
    nodes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests._bus_process",
            nats_url,
            prefix,
            name,
            str(count),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for name in names
    ]
    try:
        nc = await connect()
        local = NatsEventBus(nc, node_id="local", prefix=prefix)
        star, deep = local.subscribe("prod.*"), local.subscribe("prod.>")
        await star.ready()
        await deep.ready()
        for node in nodes:
            assert await read_line(node) == "ready"
        for node in nodes:  # all at once: they publish concurrently
            assert node.stdin is not None
            node.stdin.write(b"go\n")
            await node.stdin.drain()
        for version in range(1, count + 1):
            ns = "prod.orders" if version % 2 else "prod.eu.orders"
            await local.publish(ns, Event("Tick", "local", version, {"ns": ns}))
        await nc.flush()
        for node in nodes:
            assert await read_line(node) == "published"
        # Every publisher has flushed: End reaches each subscriber after all their events
        # (and after the echoes a node must skip).
        ender = NatsEventBus(await connect(), prefix=prefix)
        await ender.publish("prod.end", Event("End", "ender", 1))
        reports = [json.loads(await read_line(node)) for node in nodes]
        reports.append(
            {
                "star": [[a, v, "?"] for a, v in await until_end(star)],
                "deep": [[a, v, "?"] for a, v in await until_end(deep)],
            }
        )
        for node in nodes:
            async with asyncio.timeout(GUARD):
                assert await node.wait() == 0
    finally:
        for node in nodes:
            if node.returncode is None:
                node.kill()
                await node.wait()
    publishers = [*names, "local"]
    everything = [(p, v) for p in publishers for v in range(1, count + 1)]
    odd_only = [(p, v) for p, v in everything if v % 2]  # prod.orders; prod.* misses prod.eu.*
    for who, report in zip([*names, "local"], reports, strict=True):
        for key, expected in (("star", odd_only), ("deep", everything)):
            got = [(actor, version) for actor, version, _ in report[key]]
            assert sorted(got) == sorted(expected), f"{who}/{key}"  # each exactly once
            for p in publishers:  # in each publisher's order
                mine = [v for a, v in got if a == p]
                assert mine == sorted(mine), f"{who}/{key} from {p}"
    await local.close()
    await ender.close()


# -- the how-to's program -------------------------------------------------------------------


def load_example() -> ModuleType:
    """``examples/event_bus.py`` (not a package), imported under a private name."""
    spec = importlib.util.spec_from_file_location("aether_example_event_bus", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_how_to_example(nats_url: str) -> None:
    """What docs/howto/event-bus.md shows does what the page says."""
    example = load_example()
    assert await example.local_bus() == [
        "shop.*: OrderPlaced order-1",
        "shop.*: StockCounted sku-9",
        "filtered: OrderPlaced order-1",
        "filtered: OrderPlaced order-2",
    ]
    assert await example.slow_subscriber() == ["missed 7", "event 8", "event 9", "event 10"]
    assert await example.across_processes(nats_url) == [
        "billing got order-3",
        "orders got order-3",
    ]
    assert await example.store_notices() == ["stored order-4 v2 at position 17"]
    assert await example.metrics() == [
        "published=3 delivered=0 dropped=2 subscriptions=1",
        'aether_bus_dropped_total{bus="example",namespace="ticks"} 2.0',
    ]


@pytest.mark.slow
def test_the_how_to_example_runs_as_a_program(nats_url: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", nats_url],
        capture_output=True,
        text=True,
        timeout=GUARD,
    )
    assert result.returncode == 0, result.stderr
    assert "missed 7" in result.stdout and "billing got order-3" in result.stdout
