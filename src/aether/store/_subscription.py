"""Catch-up then live subscriptions over every actor of a store (``subscribe``).

PLACEHOLDER: being implemented (issue 10). The signatures below are fixed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aether.bus.filter import SubscriptionFilter

if TYPE_CHECKING:
    from aether.store.jetstream import JetStreamEventStore
    from aether.store.memory import InMemoryEventStore

__all__ = ["Subscription", "subscribe_jetstream", "subscribe_memory"]


class Subscription:
    """An async iterator of events (also an async context manager; ``await close()``)."""


def subscribe_jetstream(
    store: JetStreamEventStore, after: int, filter: SubscriptionFilter | None
) -> Subscription:
    raise NotImplementedError


def subscribe_memory(
    store: InMemoryEventStore, after: int, filter: SubscriptionFilter | None
) -> Subscription:
    raise NotImplementedError
