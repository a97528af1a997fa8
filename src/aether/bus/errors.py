"""The exceptions of the event bus: all :class:`BusError`, itself an
:class:`~aether.errors.AetherError`."""

from __future__ import annotations

from aether.errors import AetherError

__all__ = [
    "BusClosedError",
    "BusConfigurationError",
    "BusError",
    "BusPublishError",
    "BusSubscribeError",
    "InvalidNamespaceError",
    "SubscriptionOverflowError",
]


class BusError(AetherError):
    """Base class of the event bus's errors."""


class SubscriptionOverflowError(BusError):
    """The subscriber fell more than its ``buffer`` behind: the oldest ``dropped`` messages
    were discarded.

    Raised once by the subscription's iterator, at the gap: the messages before it were
    delivered, the next ``__anext__`` goes on with the first message after it. The
    subscription stays open; iterate it again (see :class:`~aether.bus.BusSubscription`).
    """

    def __init__(self, dropped: int) -> None:
        self.dropped = dropped
        super().__init__(
            f"subscriber fell behind: {dropped} message{'s' if dropped != 1 else ''} dropped"
        )

    def __reduce__(self) -> tuple[type[SubscriptionOverflowError], tuple[int]]:
        return (type(self), (self.dropped,))


class BusClosedError(BusError, RuntimeError):
    """``publish`` or ``subscribe`` on a bus after its ``close()``: nothing was published."""


class InvalidNamespaceError(BusError, ValueError):
    """A namespace or pattern the bus refuses: empty tokens, whitespace, wildcards in a
    namespace, ``>`` before the last token, or the reserved ``__internal__`` misused."""


class BusConfigurationError(BusError, ValueError):
    """:class:`~aether.bus.NatsEventBus` cannot work with what it was given: a NATS
    connection created with ``no_echo=True`` (the server would not send the bus's own
    connection the messages of the other buses on it)."""


class BusPublishError(BusError):
    """:class:`~aether.bus.NatsEventBus` could not hand the message to NATS (connection
    closed, reconnect buffer full, ...). No subscriber received it; the cause is chained
    (``__cause__``). Counted in the namespace's ``publish_errors``."""


class BusSubscribeError(BusError):
    """:class:`~aether.bus.NatsEventBus` could not subscribe on NATS (for example the
    connection is closed). The subscription is closed; the cause is chained."""
