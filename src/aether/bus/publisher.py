""":class:`EventPublisher`: what a store needs of a bus to publish to it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from aether.bus.stored import EventStored
from aether.event import Event

__all__ = ["EventPublisher"]


@runtime_checkable
class EventPublisher(Protocol):
    """Anything with ``async publish(namespace, message)``: :class:`~aether.bus.EventBus`,
    :class:`~aether.bus.NatsEventBus`, or a bus of your own. Stores created with ``bus=``
    accept any of them."""

    async def publish(self, namespace: str, message: Event | EventStored) -> None:
        """Deliver *message* to the subscribers of *namespace*."""
        ...
