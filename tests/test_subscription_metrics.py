"""Subscription metrics exported to Prometheus (``aether.store.prometheus``), scraped for real."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aether import Event
from aether.bus import SubscriptionFilter
from aether.store import JetStreamEventStore
from aether.store.prometheus import register_subscription_metrics


def scrape(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    """{(sample name, subscription, kind): value} of one scrape."""
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels["subscription"], s.labels["kind"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_subscribe_and_durable_counters_are_scraped(js_store: JetStreamEventStore) -> None:
    for v in range(1, 4):
        await js_store.save_event(Event("Opened" if v == 1 else "Deposited", "acc", v))
    registry = CollectorRegistry()
    opened_only = SubscriptionFilter(event_types=["Opened"])
    async with js_store.subscribe(filter=opened_only) as events:
        collector = register_subscription_metrics(events, registry, name="balances")
        [first] = [e async for e in _take(events, 1)]
        assert first.version == 1
        durable = js_store.durable_subscription("mails", max_deliver=2)
        collector.add(durable, name="mails")
        async with durable as deliveries:
            async for delivery in deliveries:
                if delivery.event.version == 2:
                    await delivery.term()
                else:
                    await delivery.ack()
                if delivery.event.version == 3:
                    break
            samples = scrape(registry)
    assert samples[("aether_subscription_delivered_total", "balances", "subscribe")] == 1
    assert samples[("aether_subscription_position", "balances", "subscribe")] >= 1
    assert samples[("aether_subscription_delivered_total", "mails", "durable")] == 3
    assert samples[("aether_subscription_parked_total", "mails", "durable")] == 1
    assert ("aether_subscription_parked_total", "balances", "subscribe") not in samples


async def _take(events: object, n: int):  # type: ignore[no-untyped-def]
    count = 0
    async for event in events:  # type: ignore[attr-defined]
        yield event
        count += 1
        if count == n:
            return
