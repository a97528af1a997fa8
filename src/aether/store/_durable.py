"""Durable subscriptions on a server-side consumer: deliveries, acks, parking.

PLACEHOLDER: being implemented (issue 10). The signatures below are fixed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from aether.bus.filter import SubscriptionFilter

if TYPE_CHECKING:
    from aether.store.jetstream import JetStreamEventStore

__all__ = ["Delivery", "DurableSubscription", "ParkedEvent", "durable_subscription", "parked"]


class Delivery:
    """One delivery of an event to a durable subscription."""


class DurableSubscription:
    """An async iterator of :class:`Delivery` (also an async context manager)."""


class ParkedEvent:
    """An event a durable subscription gave up on."""


def durable_subscription(
    store: JetStreamEventStore,
    name: str,
    *,
    filter: SubscriptionFilter | None,
    max_deliver: int,
    ack_wait: timedelta,
) -> DurableSubscription:
    raise NotImplementedError


async def parked(store: JetStreamEventStore, name: str) -> list[ParkedEvent]:
    raise NotImplementedError
