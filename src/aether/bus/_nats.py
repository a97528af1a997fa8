"""The bus across processes: :class:`NatsEventBus`, on core NATS subjects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nats.errors import MaxPayloadError

from aether.bus._local import BusSubscription, EventBus, _check_message
from aether.bus._names import check_prefix
from aether.bus.errors import (
    BusClosedError,
    BusConfigurationError,
    BusPublishError,
    BusSubscribeError,
    InvalidNamespaceError,
)
from aether.bus.metrics import _Counters
from aether.bus.stored import INTERNAL_NAMESPACE, EventStored
from aether.errors import EventTooLargeError, InvalidEventError
from aether.event import Event

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["KIND_HEADER", "NODE_HEADER", "ORIGIN_HEADER", "NatsEventBus"]

logger = logging.getLogger("aether.bus")

#: Header naming the bus (its ``node_id``) that published a message: information only.
NODE_HEADER = "Aether-Bus-Node"
#: Header holding a random token drawn by each bus instance: a bus skips the messages
#: carrying its own token when NATS echoes them back, having delivered them locally
#: already (the token, not the user-chosen ``node_id``, so that two buses given the same
#: ``node_id`` still receive each other's messages).
ORIGIN_HEADER = "Aether-Bus-Origin"
#: Header naming what the payload is: ``event`` (an Event's JSON wire form; also assumed
#: when the header is missing) or ``stored`` (an EventStored's JSON).
KIND_HEADER = "Aether-Bus-Kind"


class _Remote:
    """One NATS subscription, shared by the local subscriptions with the same pattern."""

    __slots__ = ("nats_sub", "pattern", "subscriptions", "task")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.subscriptions: tuple[BusSubscription[Any], ...] = ()
        self.nats_sub: Subscription | None = None
        self.task: asyncio.Task[None] | None = None


class NatsEventBus(EventBus):
    """The :class:`~aether.bus.EventBus` API across processes and hosts, over core NATS.

    A message published to namespace ``ns`` goes to the subject ``<prefix>.<ns>``; a
    subscription to pattern ``p`` is a NATS subscription to ``<prefix>.<p>`` (``prod.*``
    and ``prod.>`` are NATS wildcards), one per distinct pattern in a process. Every
    subscriber, in this process or another, receives each message once while it is
    subscribed: this bus delivers its own messages to its local subscribers at once and
    skips them when NATS echoes them back (they carry, in the ``Aether-Bus-Origin``
    header, a random token that this bus instance drew). Several buses may share one
    connection or one ``node_id``: each still receives the others' messages, which the
    server echoes to the connection. A connection created with ``no_echo=True`` would
    not get them back, so the bus refuses it (:class:`~aether.bus.BusConfigurationError`).

    On the wire, the payload is the message's JSON (an Event's wire form, as stored;
    an EventStored's :meth:`~aether.bus.EventStored.to_json`), and headers say which
    (``Aether-Bus-Kind``) and which bus sent it (``Aether-Bus-Node``: its ``node_id``;
    ``Aether-Bus-Origin``: its token). A message without the headers, published by any
    NATS client, is read as an Event.

    Delivery is at most once, as NATS core is: a message published while a subscriber
    is disconnected is not delivered to it. For every event, even after a crash, use a
    store's ``subscribe``.

    *nc* is your connected client (not created with ``no_echo=True``), which the bus
    never closes. *node_id* names the bus in the headers of its messages, for whoever
    reads them (default: a random uuid); it need not be unique. Closing the bus
    unsubscribes its NATS subscriptions. Not thread-safe: use it from the event loop of
    *nc*.
    """

    def __init__(
        self,
        nc: Client,
        *,
        node_id: str | None = None,
        prefix: str = "aether.events",
    ) -> None:
        super().__init__()
        check_prefix(prefix)
        if node_id is None:
            node_id = uuid.uuid4().hex
        elif not isinstance(node_id, str) or not node_id or not node_id.isprintable():
            raise ValueError(f"node_id must be a non-empty printable str, not {node_id!r}")
        options = getattr(nc, "options", None)
        if isinstance(options, dict) and options.get("no_echo"):
            raise BusConfigurationError(
                "NatsEventBus needs a connection that receives its own messages: this one "
                "was created with no_echo=True, so the buses on it would miss each other's"
            )
        self._nc = nc
        with contextlib.suppress(RuntimeError):  # no running loop: bound when subscribed
            self._loop = asyncio.get_running_loop()
        self._node_id = node_id
        self._origin = origin = uuid.uuid4().hex
        self._prefix = prefix
        self._subject_prefix = prefix + "."
        self._remotes: dict[str, _Remote] = {}
        self._event_headers = {NODE_HEADER: node_id, ORIGIN_HEADER: origin, KIND_HEADER: "event"}
        self._stored_headers = {
            NODE_HEADER: node_id,
            ORIGIN_HEADER: origin,
            KIND_HEADER: "stored",
        }

    @property
    def node_id(self) -> str:
        """This bus's name, in the ``Aether-Bus-Node`` header of every message it
        publishes (information only: its own messages are recognised by another header)."""
        return self._node_id

    @property
    def prefix(self) -> str:
        """The subject prefix: namespace ``ns`` is the subject ``<prefix>.<ns>``."""
        return self._prefix

    async def publish(self, namespace: str, message: Event | EventStored) -> None:
        """Publish *message* on NATS, and deliver it to this bus's own subscribers.

        Returns once the message is handed to the client (NATS core: no acknowledgement);
        it never waits for a subscriber. Raises
        :class:`~aether.bus.BusPublishError` when the client refuses it (closed,
        reconnect buffer full), :class:`~aether.errors.EventTooLargeError` past the
        server's ``max_payload`` and :class:`~aether.errors.InvalidEventError` for an
        event that does not encode; then nobody received it, and the namespace's
        ``publish_errors`` counts it. Otherwise as :meth:`EventBus.publish`.
        """
        if self._closed:
            raise BusClosedError("publish on a closed bus")
        _check_message(namespace, message)
        counters = (self._routes.get(namespace) or self._route(namespace))[0]
        payload = b""
        try:
            payload = message.to_json()
            headers = (
                self._event_headers if type(message) is not EventStored else self._stored_headers
            )
            await self._nc.publish(self._subject_prefix + namespace, payload, headers=headers)
        except InvalidEventError:
            counters.publish_errors += 1
            raise
        except MaxPayloadError as exc:
            counters.publish_errors += 1
            raise EventTooLargeError(len(payload), self._nc.max_payload) from exc
        except Exception as exc:
            counters.publish_errors += 1
            raise BusPublishError(
                f"could not publish to {self._subject_prefix + namespace!r}: {exc!r}"
            ) from exc
        counters.published += 1
        # The subscriptions now (some may have come or gone while the client published).
        for subscription in (self._routes.get(namespace) or self._route(namespace))[1]:
            subscription._offer(counters, message)

    async def close(self) -> None:
        """Close the bus (as :meth:`EventBus.close`) and unsubscribe from NATS. The
        connection stays open."""
        if self._closed:
            return
        await super().close()
        remotes = list(self._remotes.values())
        self._remotes.clear()
        for remote in remotes:
            remote.subscriptions = ()
            await self._stop(remote)

    # -- subscriptions -------------------------------------------------------------------------

    def _attach(self, subscription: BusSubscription[Any]) -> None:
        pattern = subscription.pattern
        remote = self._remotes.get(pattern)
        if remote is None:
            remote = self._remotes[pattern] = _Remote(pattern)
            remote.task = asyncio.get_running_loop().create_task(
                self._subscribe(remote), name=f"aether.bus subscribe {pattern}"
            )
        remote.subscriptions = (*remote.subscriptions, subscription)
        subscription._ready_task = remote.task

    async def _detach(self, subscription: BusSubscription[Any]) -> None:
        await super()._detach(subscription)
        remote = self._remotes.get(subscription.pattern)
        if remote is None or subscription not in remote.subscriptions:
            return
        remote.subscriptions = tuple(s for s in remote.subscriptions if s is not subscription)
        if not remote.subscriptions:
            del self._remotes[remote.pattern]
            await self._stop(remote)

    async def _subscribe(self, remote: _Remote) -> None:
        """Subscribe on NATS and wait until the server has it. Never raises: a failure
        ends the remote's subscriptions with a BusSubscribeError."""
        subject = self._subject_prefix + remote.pattern
        try:
            remote.nats_sub = await self._nc.subscribe(subject, cb=self._handler(remote))
            await self._nc.flush()
        except Exception as exc:
            error = BusSubscribeError(f"could not subscribe to {subject!r} on NATS: {exc!r}")
            error.__cause__ = exc
            if self._remotes.get(remote.pattern) is remote:
                del self._remotes[remote.pattern]
            failed, remote.subscriptions = remote.subscriptions, ()
            for subscription in failed:
                subscription._end(error)
                await EventBus._detach(self, subscription)
            if remote.nats_sub is not None:
                with contextlib.suppress(Exception):
                    await remote.nats_sub.unsubscribe()
                remote.nats_sub = None

    async def _stop(self, remote: _Remote) -> None:
        """Unsubscribe *remote* from NATS (once its subscribe has finished)."""
        if remote.task is not None:
            await asyncio.shield(remote.task)
        if remote.nats_sub is not None:
            with contextlib.suppress(Exception):  # the connection may be closed already
                await remote.nats_sub.unsubscribe()
            remote.nats_sub = None

    def _handler(self, remote: _Remote) -> Callable[[Msg], Awaitable[None]]:
        origin = self._origin
        start = len(self._subject_prefix)
        internal_only = remote.pattern == INTERNAL_NAMESPACE

        async def handle(msg: Msg) -> None:
            headers = msg.headers
            kind = None
            if headers:
                if headers.get(ORIGIN_HEADER) == origin:
                    return  # our own: delivered locally when published
                kind = headers.get(KIND_HEADER)
            namespace = msg.subject[start:]
            if namespace == INTERNAL_NAMESPACE and not internal_only:
                return  # wildcards never reach the internal namespace
            try:
                counters = (self._routes.get(namespace) or self._route(namespace))[0]
            except InvalidNamespaceError as exc:
                counters = self._counters.setdefault(namespace, _Counters())
                counters.malformed += 1
                logger.warning("aether.bus: skipped a message on %r: %s", msg.subject, exc)
                return
            try:
                message = _decode(kind, namespace, msg.data)
            except (InvalidEventError, TypeError) as exc:
                counters.malformed += 1
                logger.warning(
                    "aether.bus: skipped a malformed message on %r: %s", msg.subject, exc
                )
                return
            counters.received += 1
            for subscription in remote.subscriptions:
                subscription._offer(counters, message)

        return handle


def _decode(kind: str | None, namespace: str, data: bytes) -> Event | EventStored:
    message: Event | EventStored
    if kind is None or kind == "event":
        message = Event.from_json(data)
    elif kind == "stored":
        message = EventStored.from_json(data)
    else:
        raise InvalidEventError(f"unknown {KIND_HEADER} {kind!r}")
    _check_message(namespace, message)
    return message
