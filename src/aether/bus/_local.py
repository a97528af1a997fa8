"""The in-process bus: :class:`EventBus` and its :class:`BusSubscription`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, overload

from aether.bus._names import check_namespace, check_pattern
from aether.bus.errors import BusClosedError, SubscriptionOverflowError
from aether.bus.filter import SubscriptionFilter, match_actor_pattern, match_namespace_pattern
from aether.bus.metrics import BusMetrics, _Counters
from aether.bus.stored import INTERNAL_NAMESPACE, EventStored
from aether.event import Event

__all__ = ["DEFAULT_BUFFER", "BusSubscription", "EventBus"]

#: How many undelivered messages a subscription holds before it drops the oldest.
DEFAULT_BUFFER = 1024

M = TypeVar("M", Event, EventStored)

#: A namespace's counters and the subscriptions its messages go to.
_Route = tuple[_Counters, tuple["BusSubscription[Any]", ...]]


class BusSubscription(Generic[M]):
    """What :meth:`EventBus.subscribe` returns: the messages published to the namespaces
    that match its pattern (and pass its filter), in publication order per publisher.

    An async iterator, and an async context manager that closes it on exit (for a
    :class:`~aether.bus.NatsEventBus`, entering also waits until it is subscribed on
    NATS: see :meth:`ready`). It holds at most ``buffer`` messages not yet taken by the
    iterator; a message that would make one more drops the oldest, and the iterator
    then raises :class:`~aether.bus.SubscriptionOverflowError` once, where the dropped
    messages would have been, and goes on after it. An ``async for`` ends at that
    exception, so a subscriber that wants to go on catches it and iterates again::

        async with bus.subscribe("orders.*") as sub:
            while True:
                try:
                    async for event in sub:
                        handle(event)
                    break  # closed
                except SubscriptionOverflowError as gap:
                    log.warning("missed %d events", gap.dropped)

    Iteration ends when the subscription is closed (what it still held is discarded)
    or its bus is closed (it first delivers what it holds). One task at a time may
    iterate it.

    Local subscribers receive the very object that was published (a NatsEventBus's
    subscribers get decoded copies of other nodes' messages): treat it as read-only.
    """

    __slots__ = (
        "_accept",
        "_bus",
        "_capacity",
        "_closed",
        "_dropped",
        "_error",
        "_gap",
        "_messages",
        "_origins",
        "_ready_task",
        "_waiter",
        "filter",
        "pattern",
    )

    def __init__(
        self,
        bus: EventBus,
        pattern: str,
        filter: SubscriptionFilter | None,
        buffer: int,
    ) -> None:
        #: The namespace pattern it was created with.
        self.pattern = pattern
        #: The filter it was created with (None: every message).
        self.filter = filter
        self._bus = bus
        self._capacity = buffer
        # Two parallel queues (no tuple per message: nothing more for the GC to track):
        # the messages, and the counters of the namespace each was published to.
        self._messages: deque[M] = deque()
        self._origins: deque[_Counters] = deque()
        self._gap = 0  # dropped since the iterator last raised
        self._dropped = 0
        self._closed = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._accept = _acceptor(pattern, filter)

    # -- state -----------------------------------------------------------------------------

    @property
    def buffer(self) -> int:
        """How many undelivered messages it holds at most."""
        return self._capacity

    @property
    def pending(self) -> int:
        """How many messages it holds now, not yet taken by the iterator."""
        return len(self._messages)

    @property
    def dropped(self) -> int:
        """How many messages it has dropped in all (see SubscriptionOverflowError)."""
        return self._dropped

    @property
    def closed(self) -> bool:
        """Whether it was closed (by :meth:`close`, its bus's close, or a failure)."""
        return self._closed

    # -- delivery (called by the bus: synchronous, never blocks) ----------------------------

    def _offer(self, counters: _Counters, message: M) -> None:
        accept = self._accept
        if accept is not None and not accept(message):
            return
        messages = self._messages
        if len(messages) >= self._capacity:
            messages.popleft()
            self._origins.popleft().dropped += 1
            self._gap += 1
            self._dropped += 1
        messages.append(message)
        self._origins.append(counters)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _end(self, error: BaseException | None = None) -> None:
        """Stop taking messages; the iterator delivers what it holds, raises *error* if
        given, then ends."""
        self._closed = True
        if error is not None:
            self._error = error
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the consumer's side -----------------------------------------------------------------

    def __aiter__(self) -> BusSubscription[M]:
        return self

    async def __anext__(self) -> M:
        while True:
            if self._gap:
                dropped, self._gap = self._gap, 0
                raise SubscriptionOverflowError(dropped)
            messages = self._messages
            if messages:
                self._origins.popleft().delivered += 1
                return messages.popleft()
            if self._closed:
                error, self._error = self._error, None
                if error is not None:
                    raise error
                raise StopAsyncIteration
            if self._waiter is not None:
                raise RuntimeError("another task is already iterating this subscription")
            loop = asyncio.get_running_loop()
            if self._bus._loop is None:
                self._bus._loop = loop
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None

    async def ready(self) -> None:
        """Return once the subscription receives every message published afterwards.

        At once for an :class:`EventBus` (it does from :meth:`EventBus.subscribe` on).
        For a :class:`~aether.bus.NatsEventBus`, local publishes reach it at once too;
        messages from other processes reach it once its NATS subscription is registered
        on the server, which this waits for. Raises
        :class:`~aether.bus.BusSubscribeError` if that failed (the subscription is then
        closed). ``async with`` calls it on entry.
        """
        task = self._ready_task
        if task is not None and not task.done():
            await asyncio.shield(task)
        error = self._error
        if error is not None:
            raise error

    async def close(self) -> None:
        """Stop the subscription: what it holds is discarded and the iterator ends.
        Idempotent."""
        self._messages.clear()
        self._origins.clear()
        self._gap = 0
        if not self._closed:
            self._end()
        await self._bus._detach(self)

    async def __aenter__(self) -> BusSubscription[M]:
        try:
            await self.ready()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pending={len(self._messages)}"
        return f"<BusSubscription {self.pattern!r} {state} dropped={self._dropped}>"


def _acceptor(pattern: str, filter: SubscriptionFilter | None) -> Callable[[Any], bool] | None:
    """The subscription's message test, or None to take every message."""
    if filter is None:
        return None
    if pattern != INTERNAL_NAMESPACE:
        return filter.matches
    # The internal namespace carries EventStored, which has an actor but no event type.
    if filter.event_types:
        raise ValueError(
            f"a subscription to {INTERNAL_NAMESPACE!r} receives EventStored notices, which "
            "carry no event type: filter them by actor_pattern only"
        )
    actor_pattern = filter.actor_pattern
    if actor_pattern is None:
        return None
    return lambda stored: match_actor_pattern(actor_pattern, stored.actor_id)


def _reaches(pattern: str, namespace: str) -> bool:
    """Whether a subscription to *pattern* receives messages of *namespace*: the internal
    namespace only by its own name, never through a wildcard."""
    if namespace == INTERNAL_NAMESPACE:
        return pattern == INTERNAL_NAMESPACE
    return match_namespace_pattern(pattern, namespace)


class EventBus:
    """An in-process bus: ``publish`` a message to a namespace, and every subscription
    whose pattern matches the namespace receives it.

    At most once, and never silently lossy: a subscriber that falls more than its
    ``buffer`` behind loses the oldest messages and is told so
    (:class:`~aether.bus.SubscriptionOverflowError`), and the bus counts them
    (:attr:`metrics`). ``publish`` never waits for a subscriber, so a slow one slows
    neither the publisher nor the others.

    Messages are :class:`~aether.Event` objects, except in the reserved namespace
    :data:`~aether.bus.INTERNAL_NAMESPACE`, which carries the
    :class:`~aether.bus.EventStored` notices of stores created with ``bus=``.

    Namespaces are ``.``-separated tokens (``prod.orders``), without whitespace or
    wildcards; patterns add ``*`` (one token) and ``>`` (one or more, as the last
    token): see :func:`~aether.bus.match_namespace_pattern`.

    Not thread-safe: use a bus from the one event loop (thread) it serves (:attr:`loop`).
    From another thread, go through ``asyncio.run_coroutine_threadsafe``. An async context
    manager: leaving it closes the bus.
    """

    def __init__(self) -> None:
        # A dict as an ordered set: subscriptions in the order they were made.
        self._subscriptions: dict[BusSubscription[Any], bool] = {}
        self._routes: dict[str, _Route] = {}
        self._counters: dict[str, _Counters] = {}
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this bus serves: the one running when it was first subscribed
        to (or first iterated); for a :class:`~aether.bus.NatsEventBus`, the one it was
        created in (its connection's). None until then. An
        :class:`~aether.store.InMemoryEventStore` appending from another thread hands its
        notices to this loop."""
        return self._loop

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def metrics(self) -> BusMetrics:
        """A snapshot of the counters: per namespace ``published``, ``delivered``,
        ``dropped``, ``publish_errors`` (and ``received``, ``malformed`` for a
        NatsEventBus), and the ``active_subscriptions``."""
        return BusMetrics(
            namespaces={name: c.snapshot() for name, c in self._counters.items()},
            active_subscriptions=len(self._subscriptions),
        )

    # The literal "__internal__" is also a str: the first overload wins for it (mypy
    # calls the overlap unsafe; it is what the runtime does).
    @overload
    def subscribe(  # type: ignore[overload-overlap]
        self,
        pattern: Literal["__internal__"],
        filter: SubscriptionFilter | None = None,
        *,
        buffer: int = DEFAULT_BUFFER,
    ) -> BusSubscription[EventStored]: ...

    @overload
    def subscribe(
        self,
        pattern: str,
        filter: SubscriptionFilter | None = None,
        *,
        buffer: int = DEFAULT_BUFFER,
    ) -> BusSubscription[Event]: ...

    def subscribe(
        self,
        pattern: str,
        filter: SubscriptionFilter | None = None,
        *,
        buffer: int = DEFAULT_BUFFER,
    ) -> BusSubscription[Any]:
        """Subscribe to the namespaces matching *pattern*; it receives every message
        published from now on (see :meth:`BusSubscription.ready` for a NatsEventBus).

        *filter* keeps the events it matches (:class:`~aether.bus.SubscriptionFilter`).
        On :data:`~aether.bus.INTERNAL_NAMESPACE` it applies to the EventStored notices
        by their ``actor_id``; a filter with ``event_types`` is refused there
        (ValueError: notices carry no event type). *buffer* (>= 1) is how many messages
        it holds for a slow consumer before it drops the oldest.

        Typed: ``subscribe(INTERNAL_NAMESPACE)`` is a ``BusSubscription[EventStored]``,
        any other pattern a ``BusSubscription[Event]`` (wildcards never reach the
        internal namespace). Raises :class:`~aether.bus.InvalidNamespaceError` for a bad
        pattern and :class:`~aether.bus.BusClosedError` on a closed bus.
        """
        if self._closed:
            raise BusClosedError("subscribe on a closed bus")
        check_pattern(pattern)
        if type(buffer) is not int or buffer < 1:
            raise ValueError(f"buffer must be an int >= 1, not {buffer!r}")
        if filter is not None and not isinstance(filter, SubscriptionFilter):
            raise TypeError(f"filter must be a SubscriptionFilter, not {type(filter).__name__}")
        if self._loop is None:
            # Subscribed outside a loop: bound when first iterated.
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
        subscription: BusSubscription[Any] = BusSubscription(self, pattern, filter, buffer)
        self._subscriptions[subscription] = True
        self._routes.clear()
        self._attach(subscription)
        return subscription

    async def publish(self, namespace: str, message: Event | EventStored) -> None:
        """Deliver *message* to every subscription whose pattern matches *namespace*.

        Never waits for a subscriber (a full subscription drops its oldest message), and
        does not even yield to the event loop: subscribers run when the publisher next
        awaits something that does, so a burst of more than ``buffer`` publishes with no
        such await in between overflows a subscription.
        *message* is an :class:`~aether.Event`, or an :class:`~aether.bus.EventStored` on
        :data:`~aether.bus.INTERNAL_NAMESPACE` (and only there: TypeError otherwise).
        Raises :class:`~aether.bus.InvalidNamespaceError` for a bad namespace and
        :class:`~aether.bus.BusClosedError` on a closed bus.
        """
        if self._closed:
            raise BusClosedError("publish on a closed bus")
        _check_message(namespace, message)
        counters, subscriptions = self._routes.get(namespace) or self._route(namespace)
        counters.published += 1
        for subscription in subscriptions:
            subscription._offer(counters, message)

    async def close(self) -> None:
        """Close the bus: ``publish`` and ``subscribe`` raise BusClosedError from now on,
        and each subscription's iterator ends after delivering what it holds.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        subscriptions = list(self._subscriptions)
        self._subscriptions.clear()
        self._routes.clear()
        for subscription in subscriptions:
            subscription._end()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals ---------------------------------------------------------------------------

    def _route(self, namespace: str) -> _Route:
        """Where *namespace*'s messages go (validating it the first time; cached until the
        subscriptions change)."""
        check_namespace(namespace)
        counters = self._counters.get(namespace)
        if counters is None:
            counters = self._counters[namespace] = _Counters()
        subscriptions = tuple(s for s in self._subscriptions if _reaches(s.pattern, namespace))
        route = self._routes[namespace] = (counters, subscriptions)
        return route

    def _attach(self, subscription: BusSubscription[Any]) -> None:
        """Hook: a subscription was added (NatsEventBus subscribes on NATS)."""

    async def _detach(self, subscription: BusSubscription[Any]) -> None:
        """A subscription was closed: it receives nothing more."""
        if self._subscriptions.pop(subscription, None) is not None:
            self._routes.clear()


def _check_message(namespace: str, message: object) -> None:
    if namespace == INTERNAL_NAMESPACE:
        if not isinstance(message, EventStored):
            raise TypeError(
                f"{INTERNAL_NAMESPACE!r} carries EventStored notices only, "
                f"not {type(message).__name__}"
            )
    elif not isinstance(message, Event):
        raise TypeError(
            f"publish takes an Event, not {type(message).__name__}"
            + (
                f" (EventStored goes to {INTERNAL_NAMESPACE!r})"
                if isinstance(message, EventStored)
                else ""
            )
        )
