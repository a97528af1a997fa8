"""Durable subscriptions on a server-side consumer: deliveries, acks, parking.

``store.durable_subscription(name)`` reads every actor's events through a JetStream
**durable pull consumer** called *name* on the events stream. The server keeps its
position (what was delivered and acknowledged), so it survives restarts of the
subscriber and, with file storage, of the server; any number of processes using one name
share the events (the server hands each message to one waiting pull at a time).
Delivery is **at least once**: an event is delivered again until it is acked, parked, or
filtered out. Exactly-once *effects* are the subscriber's: store ``delivery.position``
(or the event id) in the same transaction as the read model's change, skip a delivery
whose position is already applied, and ack after the commit. (Several processes sharing
a name handle events out of order, so keep the set of applied positions, or an applied
flag per row, not a single high-water mark.)

The consumer (created on first use, ``deliver_policy: all``, so a new name starts at the
beginning of the stream):

- ``ack_policy: explicit``, ``ack_wait`` as given, filter subject ``<stream>.events.>``,
  or one actor's subject when the filter's ``actor_pattern`` names exactly one actor id
  (no wildcard): the only pattern a NATS subject filter expresses exactly, since an actor
  id is encoded to a single subject token. Event types and wildcard actor patterns are
  applied here; the events they leave out are acked and counted (``metrics.filtered``).
- ``max_deliver: -1`` on the server. The limit is enforced here: see *Parking*.
- metadata ``aether.kind = durable-subscription``, ``aether.filter`` (the filter) and
  ``aether.max_deliver``. An existing consumer with that name is used if it is an aether
  durable subscription with the same filter; its ``ack_wait`` and ``max_deliver`` are
  updated to the opener's if they differ (the latest opener's tuning wins; each
  subscriber applies its own ``max_deliver``). Anything else (another filter, a consumer
  that is not aether's, a push consumer) raises :class:`SubscriptionConflictError`:
  silently changing which events a shared name covers would make the processes still
  using the old filter ack events the new one wants. Use a new name (it starts at the
  beginning of the stream) or delete the consumer.

**Deliveries.** Each yielded :class:`Delivery` holds the decoded ``event`` (its
``position`` is the stream sequence) and ``attempt``, its hand-outs to a handler so far,
this one included (1 on the first; see *Counting hand-outs*). Settle it once:
``await ack()``, ``await nack(delay=None)`` (deliver again, after *delay*),
``await term()`` (give up: park it). Repeating the same outcome is
a no-op; a different outcome after the first raises :class:`DeliverySettledError` and
sends nothing. An event not settled within ``ack_wait`` is delivered again (to any
subscriber of the name); ``await delivery.in_progress()`` restarts its ``ack_wait`` for
a long handler. A subscription does not hand out again an event it acked
itself (among its last :data:`RECENT_ACKS` acks): a redelivery that raced the ack (sent
when ``ack_wait`` passed, e.g. during a consumer leader election) is acked again and
counted in ``metrics.duplicates``.

Each settlement is confirmed by the server (a request on the message's ack subject;
nats-server answers every ack kind given a reply subject, on a replicated consumer once
the ack is replicated), and re-sent on a timeout or reconnect until ``retry_deadline``,
then :class:`~aether.errors.StoreUnavailableError` (the delivery stays unsettled; the
call may be repeated). One exception, from nats-server's ``processAckMsg``: it ignores,
without answering, an ack of a delivery its consumer no longer knows: the consumer lost
it from its state (nats-server writes consumer state about 0.1 s after a change, so a
server killed meanwhile forgets the latest deliveries and acks) or was recreated. So
after a timeout, and before settling a delivery received before a reconnect, the
consumer's state is asked for (once per reconnect); a delivery it no longer knows is
not waited for: the settlement returns, buffered ones are dropped, each is counted in
``metrics.forgotten``, and the server delivers those events again.

**Counting hand-outs.** The server's delivery count is not used for ``attempt``: it
also counts deliveries that only waited in a subscriber's buffer (up to a pull batch)
when it closed (which sends them back) or crashed. Only hand-outs to a handler count. A
first delivery (server count 1) is handed out as attempt 1 and nothing is written. A
redelivery (server count above 1, the rare path) reads the hand-out record of (name,
position) in the ``_parked`` stream (subject ``<events stream>.parked.~handouts.<name>.
<position>``), takes the larger of its count and this process's own, and, below
``max_deliver``, writes count + 1 (``Nats-Expected-Last-Subject-Sequence``, so racing
subscribers both count) *before* handing it out as that attempt. A ``nack`` of a first
hand-out records it (count 1) before the ``-NAK``. The record is removed when the event
is acked or parked. The one hand-out not counted: a first one whose handler crashed (or
whose subscriber closed) in another process without settling it, as nothing was
written for it; such an event is handed out at most ``max_deliver + 1`` times. An
event never handed out is never parked for ``max_deliver``.

**Parking.** An event is parked when the subscription gives up on it:

- ``term()``: reason ``term``;
- ``nack()`` on the last attempt (``attempt == max_deliver``): reason ``max_deliver``,
  at once, in the ``nack`` call;
- a redelivery of an event already handed out ``max_deliver`` times: the last attempt
  was neither acked nor nacked within ``ack_wait`` (its handler crashed, hung, or its
  subscriber closed): reason ``max_deliver``, parked by whichever subscriber of the name
  receives it next (the server redelivers it as soon as ``ack_wait`` has passed, to any
  pull waiting), without handing it out;
- a message that is not a valid event of its subject's actor: reason ``malformed``, at
  once, without handing it out.

Parking writes a record (:class:`ParkedEvent`) to the stream ``<events stream>_parked``
(created with the events stream's storage and replicas; subject
``<events stream>.parked.<name>.<position>``, one message per subject, written with
``Nats-Expected-Last-Subject-Sequence: 0`` so parking an event twice records it once),
then sends ``+TERM`` so the server stops delivering it; it logs a warning (logger
``aether.store``) and counts it in ``metrics.parked``. The record is written *before*
the ``+TERM``: a subscriber that dies in between leaves the message unsettled, and it
is delivered again; every redelivery (``attempt > 1``) looks for its own park record
(one read) and, found, is terminated without being handed out. So a parked event is
never lost, even through crashes, never skipped silently, and once recorded never
handled again. The server's own ``max_deliver`` is not used
(``-1``): nats-server (2.15) sends its max-deliveries advisory only when it next tries to
deliver the message, over core NATS (lost if no subscriber listens or records it
before crashing), and then drops the message for good; keeping the server redelivering
until a subscriber has recorded the park is crash-proof, and costs one more delivery of
a message whose last attempt timed out.

:func:`parked` lists a name's records oldest first. To replay one, read the event
(``store.get_events(p.actor_id, from_version=p.version)``, the one with ``position ==
p.position``), handle it, and remove the record with :func:`unpark`. Records outlive
the consumer; delete the ``_parked`` stream along with the events stream.

**Pulling.** One pull request of at most :data:`PULL_BATCH` messages and
:data:`PULL_MAX_BYTES` (or one server ``max_payload``) is in flight at a time, sent
when fewer than a quarter of a batch are waiting here, so memory is bounded by about one
batch. Each pull waits up to 10 s on the server (then another is sent) with 1 s idle
heartbeats. A pull is re-sent (after checking that the consumer exists, creating it
again if it is gone) when it is reported ended by a leader change, a server shutdown or a
deleted consumer, when nothing (message or heartbeat) arrives for 3 s of waiting, and
after every reconnect. If no sign of life comes from the server for the store's
``retry_deadline`` (requests about the consumer retry for as long), iteration raises
:class:`~aether.errors.StoreUnavailableError`; a deleted events stream raises
:class:`~aether.errors.StreamNotFoundError`, and so does one deleted and created again
(told by its creation time, checked after each fault): a new stream's positions say
nothing of the old one's, and the name's park records are the old stream's. A message
handed out after waiting here more than half of ``ack_wait`` gets a ``+WPI`` first, so
its handler has a whole ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from aether import _json
from aether.bus.filter import SubscriptionFilter
from aether.errors import (
    AetherError,
    InvalidEventError,
    JetStreamError,
    StoreUnavailableError,
    StreamNotFoundError,
    UnsuitableStreamError,
)
from aether.event import Event
from aether.store import _rules
from aether.store._jsapi import (
    API,
    NS_PER_SECOND,
    STREAM_NAME_IN_USE,
    STREAM_NOT_FOUND,
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_IN_FLIGHT,
    JsApi,
    backoff,
    decode_answer,
    raise_for_error,
)
from aether.store._provision import StreamSettings
from aether.store._subjects import (
    META_KIND,
    META_NAMESPACE,
    META_STREAM,
    PARKED_SUFFIX,
    decode_actor_token,
    encode_actor_id,
)
from aether.store.config import InvalidConfigError

if TYPE_CHECKING:
    from aether.store.jetstream import JetStreamEventStore

__all__ = [
    "MAX_NAME_LENGTH",
    "PARKED_SUFFIX",
    "PULL_BATCH",
    "RECENT_ACKS",
    "Delivery",
    "DeliverySettledError",
    "DurableSubscription",
    "DurableSubscriptionInfo",
    "DurableSubscriptionMetrics",
    "InvalidSubscriptionNameError",
    "ParkReason",
    "ParkedEvent",
    "SubscriptionConflictError",
    "durable_subscription",
    "durable_subscriptions",
    "parked",
    "unpark",
]

_log = logging.getLogger("aether.store")

#: nats-server's limit on consumer names (``JSMaxNameLen``); the name is also a
#: directory on the server's disk.
MAX_NAME_LENGTH = 255
_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: Messages asked for per pull request (at most this many wait here, unhandled).
PULL_BATCH = 64
#: Acks a subscription remembers, so as not to hand out again an event it acked itself.
RECENT_ACKS = 10_000
#: Bytes asked for per pull request, at least (one server ``max_payload`` if larger).
PULL_MAX_BYTES = 4 * 1024 * 1024

#: aether.kind of the consumers this module makes.
KIND = "durable-subscription"
META_FILTER = "aether.filter"
META_MAX_DELIVER = "aether.max_deliver"
PARKED_KIND = "parked"
#: Subject token (in ``<stream>.parked.<token>.<name>.<position>``) of the hand-out
#: records; not a valid subscription name, so :func:`parked` never lists them.
HANDOUTS_TOKEN = "~handouts"

_PULL_EXPIRES = 10.0  # seconds a pull waits on the server
_HEARTBEAT = 1.0  # seconds between the server's idle heartbeats on a waiting pull
_QUIET_PERIODS = 3  # heartbeat periods of silence after which a pull is taken as lost
_MSG_OVERHEAD = 64 * 1024  # subject and ack reply, counted in a pull's max_bytes

# JetStream err_codes.
_CONSUMER_NOT_FOUND = 10014
_CONSUMER_EXISTS = 10148  # action "create" on a consumer with another config

ParkReason = Literal["term", "max_deliver", "malformed"]
Outcome = Literal["ack", "nack", "term"]


class InvalidSubscriptionNameError(InvalidConfigError):
    """A durable subscription name nats-server cannot hold as a consumer name: 1 to
    :data:`MAX_NAME_LENGTH` letters, digits, ``-`` and ``_`` (no ``.``, ``*``, ``>``,
    white space or path separators, which nats-server refuses in consumer names)."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(
            "name",
            f"a durable subscription name is 1 to {MAX_NAME_LENGTH} letters, digits, '-' "
            f"or '_', got {name!r}",
        )

    def __reduce__(  # type: ignore[override]  # its own constructor's arguments
        self,
    ) -> tuple[type[InvalidSubscriptionNameError], tuple[object]]:
        return (type(self), (self.name,))


class SubscriptionConflictError(AetherError):
    """The consumer called *name* exists with settings this durable subscription cannot
    use: another filter, or a consumer that is not an aether durable subscription.
    Nothing was changed. ``setting`` names what differs."""

    def __init__(self, name: str, setting: str, message: str) -> None:
        self.name = name
        self.setting = setting
        self.reason = message
        super().__init__(f"durable subscription {name!r}: {setting}: {message}")

    def __reduce__(self) -> tuple[type[SubscriptionConflictError], tuple[str, str, str]]:
        return (type(self), (self.name, self.setting, self.reason))


class DeliverySettledError(AetherError, RuntimeError):
    """A delivery already settled one way (``ack``, ``nack`` or ``term``) was asked to
    settle another way. Nothing was sent. ``outcome`` is the first settlement."""

    def __init__(self, position: int, outcome: str, asked: str) -> None:
        self.position = position
        self.outcome = outcome
        self.asked = asked
        super().__init__(
            f"the delivery of position {position} was already settled with {outcome}(); "
            f"cannot {asked}() it"
        )

    def __reduce__(self) -> tuple[type[DeliverySettledError], tuple[int, str, str]]:
        return (type(self), (self.position, self.outcome, self.asked))


@dataclass(frozen=True)
class ParkedEvent:
    """An event a durable subscription gave up on (see the module docstring).

    - ``subscription``: the durable subscription's name; ``position``: the event's stream
      sequence; ``subject``: its stream subject.
    - ``actor_id``, ``version``, ``event_id``, ``event_type``: the event's, or None where a
      malformed message has none (``actor_id`` is then read from the subject if it can be).
    - ``reason``: ``"term"``, ``"max_deliver"`` or ``"malformed"``; ``detail``: a sentence
      for operators (the ``term`` reason given, the decoding error, ...).
    - ``attempts``: the deliveries to a handler before it was parked (0 for a malformed
      message, which is never handed out).
    - ``parked_at``: when it was recorded (UTC).
    """

    subscription: str
    position: int
    subject: str
    reason: ParkReason
    attempts: int
    parked_at: datetime
    actor_id: str | None = None
    version: int | None = None
    event_id: str | None = None
    event_type: str | None = None
    detail: str = ""

    @classmethod
    def from_record(cls, data: bytes) -> ParkedEvent:
        """Decode a parked record (raises ValueError, KeyError or TypeError if malformed)."""
        record = _json.loads(data)
        return cls(
            subscription=str(record["subscription"]),
            position=int(record["position"]),
            subject=str(record["subject"]),
            reason=record["reason"],
            attempts=int(record["attempts"]),
            parked_at=datetime.fromisoformat(str(record["parkedAt"])),
            actor_id=record.get("actorId"),
            version=record.get("version"),
            event_id=record.get("eventId"),
            event_type=record.get("eventType"),
            detail=str(record.get("detail", "")),
        )


@dataclass
class DurableSubscriptionMetrics:
    """What one :class:`DurableSubscription` object did (this process only).

    - ``delivered``: deliveries handed out (first attempts and later ones);
      ``redelivered``: those of them with ``attempt > 1``.
    - ``acked``, ``nacked``: settlements confirmed by the server (a ``nack`` that parked
      counts as parked, not nacked).
    - ``parked``: events this subscriber parked (``term``, ``max_deliver``, ``malformed``).
    - ``filtered``: events the filter left out (acked without being handed out).
    - ``repulls``: pulls re-sent after one was lost or ended by a fault (leader change,
      reconnect, silence, deleted consumer).
    - ``forgotten``: settlements the server could not apply because it no longer knew
      the delivery (its consumer state was lost in a crash, or the consumer recreated):
      those events are delivered again.
    - ``duplicates``: deliveries of an event this subscription had acked itself (among
      its last :data:`RECENT_ACKS`), e.g. a redelivery that raced the ack across a leader
      change: acked again, not handed out.
    - ``lag``: events stored but not yet handed out by this subscription: the consumer's
      pending count as of the last message received, plus those received and not yet
      handed out (None before the server said).
    """

    delivered: int = 0
    redelivered: int = 0
    acked: int = 0
    nacked: int = 0
    parked: int = 0
    filtered: int = 0
    repulls: int = 0
    forgotten: int = 0
    duplicates: int = 0
    lag: int | None = None


@dataclass(frozen=True)
class DurableSubscriptionInfo:
    """A durable subscription as the server holds it (for ``aether subscriptions``).

    - ``name``; ``filter``: the :class:`~aether.bus.SubscriptionFilter` it was made with
      (None: every event); ``filter_subject``: the consumer's subject filter.
    - ``pending``: events stored after the last one delivered (the consumer's
      ``num_pending``); ``ack_pending``: delivered and not yet settled;
      ``redelivered``: of those, delivered more than once; ``waiting``: pull requests
      waiting (about the subscribers connected).
    - ``parked``: records listed by :func:`parked`.
    - ``delivered_position``: stream sequence of the last event delivered;
      ``acked_position``: every event up to it is settled (the ack floor).
    - ``ack_wait``; ``max_deliver`` (as last set by an opener; None if not recorded);
      ``created`` (UTC).
    """

    name: str
    filter: SubscriptionFilter | None
    filter_subject: str
    pending: int
    ack_pending: int
    redelivered: int
    waiting: int
    parked: int
    delivered_position: int
    acked_position: int
    ack_wait: timedelta
    max_deliver: int | None
    created: datetime

    @classmethod
    def from_consumer_info(cls, info: Mapping[str, Any], parked: int) -> DurableSubscriptionInfo:
        config: Mapping[str, Any] = info["config"]
        metadata: Mapping[str, str] = config.get("metadata") or {}
        max_deliver = metadata.get(META_MAX_DELIVER)
        return cls(
            name=str(info["name"]),
            filter=_parse_filter(metadata.get(META_FILTER)),
            filter_subject=str(config.get("filter_subject", "")),
            pending=int(info.get("num_pending", 0)),
            ack_pending=int(info.get("num_ack_pending", 0)),
            redelivered=int(info.get("num_redelivered", 0)),
            waiting=int(info.get("num_waiting", 0)),
            parked=parked,
            delivered_position=int((info.get("delivered") or {}).get("stream_seq", 0)),
            acked_position=int((info.get("ack_floor") or {}).get("stream_seq", 0)),
            ack_wait=timedelta(microseconds=int(config.get("ack_wait", 0)) / 1000),
            max_deliver=int(max_deliver) if max_deliver and max_deliver.isdigit() else None,
            created=datetime.fromisoformat(str(info["created"])),
        )


class Delivery:
    """One delivery of an event to a durable subscription: settle it once.

    ``event`` (``event.position`` set), ``attempt`` (its hand-outs to a handler so far,
    this one included: 1 on the first; deliveries that only waited in a buffer do not
    count), and ``position``. See the module docstring for what each settlement means and sends.
    """

    __slots__ = (
        "_counted",
        "_epoch",
        "_lock",
        "_outcome",
        "_parked",
        "_reply",
        "_sub",
        "attempt",
        "event",
    )

    def __init__(
        self, sub: DurableSubscription, reply: str, event: Event, attempt: int, epoch: int
    ) -> None:
        self._sub = sub
        self._reply = reply
        self._epoch = epoch  # the connection's reconnect count when it arrived
        self.event = event
        self.attempt = attempt
        self._outcome: Outcome | None = None
        self._parked = False
        self._counted = False  # whether a hand-out record was written for it
        self._lock = asyncio.Lock()

    @property
    def position(self) -> int:
        """The event's stream sequence."""
        assert self.event.position is not None
        return self.event.position

    @property
    def is_last_attempt(self) -> bool:
        """Whether a ``nack`` now would park the event (``attempt >= max_deliver``)."""
        return self.attempt >= self._sub.max_deliver

    @property
    def outcome(self) -> Outcome | None:
        """How the delivery was settled (None: not yet)."""
        return self._outcome

    @property
    def parked(self) -> bool:
        """Whether settling it parked the event (``term``, or ``nack`` on the last attempt)."""
        return self._parked

    async def ack(self) -> None:
        """The event is handled: the server will not deliver it again. Confirmed by the
        server; a repeated ``ack`` is a no-op; after ``nack``/``term``:
        DeliverySettledError. StoreUnavailableError if no confirmation came within the
        retry deadline (the delivery stays unsettled)."""
        async with self._lock:
            if self._settled("ack"):
                return
            if await self._sub._settle(self._reply, b"+ACK", self.position, self._epoch):
                self._sub._metrics.acked += 1
            self._outcome = "ack"
            self._sub._remember_ack(self.position, self.event.id)
            if self._counted:
                await self._sub._forget_handouts(self.position, self.event.id)

    async def nack(self, delay: timedelta | float | None = None) -> None:
        """Deliver the event again, after *delay* (a timedelta, or seconds) if given, to
        any subscriber of the name. On the last attempt (``attempt >= max_deliver``) the
        event is parked instead (reason ``max_deliver``): recorded, then terminated, before
        this returns. Repeating ``nack`` is a no-op; after ``ack``/``term``:
        DeliverySettledError. A *delay* that is negative or NaN raises ValueError, one of
        another type TypeError, before anything is sent."""
        seconds = _delay_seconds(delay)
        async with self._lock:
            if self._settled("nack"):
                return
            if self.is_last_attempt:
                await self._sub._park(
                    self._reply,
                    self._epoch,
                    self.position,
                    self._sub._subject_of(self.event),
                    self.event,
                    attempts=self.attempt,
                    reason="max_deliver",
                    detail=f"nacked on attempt {self.attempt} of {self._sub.max_deliver}",
                )
                self._parked = True
                if self._counted:
                    await self._sub._forget_handouts(self.position, self.event.id)
            else:
                if not self._counted:
                    # A first hand-out is not recorded when made (the common path writes
                    # nothing): record it now, for whichever subscriber gets it next.
                    await self._sub._record_first_handout(self.position, self.event)
                payload = b"-NAK"
                if seconds:
                    payload += b" " + _json.dumps({"delay": int(seconds * NS_PER_SECOND)})
                if await self._sub._settle(self._reply, payload, self.position, self._epoch):
                    self._sub._metrics.nacked += 1
            self._outcome = "nack"

    async def term(self, reason: str | None = None) -> None:
        """Give up on the event: it is parked (reason ``term``, *reason* as the record's
        detail), then the server stops delivering it. Repeating ``term`` is a no-op;
        after ``ack``/``nack``: DeliverySettledError."""
        async with self._lock:
            if self._settled("term"):
                return
            await self._sub._park(
                self._reply,
                self._epoch,
                self.position,
                self._sub._subject_of(self.event),
                self.event,
                attempts=self.attempt,
                reason="term",
                detail=reason or f"terminated by the subscriber on attempt {self.attempt}",
            )
            self._parked = True
            self._outcome = "term"
            if self._counted:
                await self._sub._forget_handouts(self.position, self.event.id)

    async def in_progress(self) -> None:
        """Still working on it: restart the delivery's ``ack_wait`` (``+WPI``, confirmed).
        A no-op once the delivery is settled."""
        async with self._lock:
            if self._outcome is None:
                await self._sub._settle(self._reply, b"+WPI", self.position, self._epoch)

    def _settled(self, asked: Outcome) -> bool:
        """True if already settled as *asked*; raise if settled otherwise."""
        if self._outcome is None:
            return False
        if self._outcome == asked:
            return True
        raise DeliverySettledError(self.position, self._outcome, asked)

    def __repr__(self) -> str:
        return (
            f"<Delivery position={self.event.position} attempt={self.attempt} "
            f"actor={self.event.actor_id!r} version={self.event.version} "
            f"outcome={self._outcome}>"
        )


class _Received(NamedTuple):
    """A stored message as it arrived: when (loop time), and the connection's reconnect
    count then."""

    msg: Msg
    at: float
    epoch: int


@dataclass
class _Pull:
    """The pull request in flight."""

    reply: str  # its reply subject (statuses about it come there)
    remaining: int  # messages it may still bring
    reconnects: int  # the connection's reconnect count when it was sent
    quiet: int = 0  # heartbeat periods waited with nothing arriving


class DurableSubscription:
    """An async iterator of :class:`Delivery` (also an async context manager).

    Made by ``store.durable_subscription(name, ...)``; nothing is asked of the server
    until it is entered or first iterated: then the ``_parked`` stream and the consumer
    are made if missing (SubscriptionConflictError, UnsuitableStreamError if they exist
    and do not fit). Iteration ends after :meth:`close`; see the module docstring for
    what it raises; after StoreUnavailableError iterating again tries again (with a new
    deadline). Use it from one task at a time (concurrent ``__anext__`` calls are
    serialised); deliveries may be settled from any task, also after ``close``. Close it
    (or use ``async with``): until then its NATS subscription stays on the connection.
    """

    def __init__(
        self,
        store: JetStreamEventStore,
        name: str,
        filter: SubscriptionFilter | None,
        max_deliver: int,
        ack_wait: timedelta,
        batch: int = PULL_BATCH,
    ) -> None:
        self._store = store
        self._api: JsApi = store._api
        self._nc = self._api.nc
        self._name = name
        self._filter = filter
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait
        self._batch = batch
        self._stream = store.stream_name
        self._filter_subject = _filter_subject(store, filter)
        self._parked_stream = self._stream + PARKED_SUFFIX
        self._metrics = DurableSubscriptionMetrics()
        self._pending: int | None = None  # the consumer's num_pending, last seen
        # (position, event id) of this subscription's latest acks, oldest first
        self._recent_acks: OrderedDict[tuple[int, str], None] = OrderedDict()
        # (position, event id) -> hand-outs by this process (as counted), oldest first
        self._handed: OrderedDict[tuple[int, str], int] = OrderedDict()
        self._buffer: deque[_Received] = deque()
        # (reconnect count, the consumer's delivered stream sequence then): see _settle
        self._known: tuple[int, int] | None = None
        self._arrived = asyncio.Event()
        self._next_lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._sub: NatsSubscription | None = None
        self._inbox = ""
        self._pull: _Pull | None = None
        self._pulls_sent = 0
        self._failing_since: float | None = None  # first failure since the last sign of life
        self._failure = ""
        self._check_consumer = False
        self._delay = 0.05
        self._created: object = None  # the events stream's creation time (its identity)

    # -- properties ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def filter(self) -> SubscriptionFilter | None:
        return self._filter

    @property
    def max_deliver(self) -> int:
        return self._max_deliver

    @property
    def ack_wait(self) -> timedelta:
        return self._ack_wait

    @property
    def filter_subject(self) -> str:
        """The consumer's subject filter (one actor's subject, or every event's)."""
        return self._filter_subject

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def metrics(self) -> DurableSubscriptionMetrics:
        """A copy of this subscription's counters (see :class:`DurableSubscriptionMetrics`)."""
        lag = None if self._pending is None else self._pending + len(self._buffer)
        return replace(self._metrics, lag=lag)

    async def info(self) -> DurableSubscriptionInfo:
        """The consumer as the server holds it now, with its parked count."""
        answer = await self._api.call(
            f"CONSUMER.INFO.{self._stream}.{self._name}", stream=self._stream
        )
        counts = await _parked_counts(self._store)
        return DurableSubscriptionInfo.from_consumer_info(answer, counts.get(self._name, 0))

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> DurableSubscription:
        await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __aiter__(self) -> DurableSubscription:
        return self

    async def close(self) -> None:
        """Stop pulling. Messages received but not handed out are nacked (fire and forget)
        so another subscriber gets them at once. Idempotent; deliveries already handed out
        can still be settled."""
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        sub, self._sub = self._sub, None
        buffered = [item.msg for item in self._buffer]
        self._buffer.clear()
        if self._nc.is_closed:
            return
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            if sub is not None:
                await sub.unsubscribe()
            for msg in buffered:
                await self._nc.publish(msg.reply, b"-NAK")

    async def _start(self) -> None:
        async with self._start_lock:
            if self._started or self._closed:
                return  # (closed before it started: iteration simply ends)
            await _ensure_parked_stream(self._store)
            await self._ensure_consumer()
            self._inbox = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
            self._started = True

    # -- iteration ----------------------------------------------------------------------

    async def __anext__(self) -> Delivery:
        async with self._next_lock:
            await self._start()
            while True:
                delivery = await self._accept(await self._next_msg())
                if delivery is not None:
                    return delivery

    async def _next_msg(self) -> _Received:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._nc.is_closed:
                raise StoreUnavailableError("the NATS connection is closed")
            try:
                await self._pull_if_needed()
            except StoreUnavailableError:
                # The next __anext__ (if the caller goes on) starts a new deadline.
                self._failing_since = None
                raise
            while self._buffer:
                item = self._buffer.popleft()
                if item.epoch == self._nc.stats["reconnects"]:
                    return item
                # Received before a reconnect: hand it out only if the server still knows
                # the delivery (a crash may have lost it; then it comes again anyway).
                try:
                    seq = _ack_metadata(item.msg.reply)[1]
                except ValueError:
                    return item  # not a delivery: _accept says so
                if await self._still_known(seq):
                    return item
                self._forgot(seq, "the delivery received before a reconnect is dropped")
            self._arrived.clear()
            try:
                # (asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a
                # cancellation that comes with the wait's own completion.)
                async with asyncio.timeout(_HEARTBEAT):
                    await self._arrived.wait()
            except TimeoutError:
                if self._pull is not None:
                    self._pull.quiet += 1

    async def _pull_if_needed(self) -> None:
        """Send a pull if none is in flight and few messages wait here; notice lost pulls."""
        pull = self._pull
        if pull is not None:
            if self._nc.stats["reconnects"] != pull.reconnects:
                self._lost("the connection was re-established", check=True)
            elif pull.quiet >= _QUIET_PERIODS:
                self._lost(f"no heartbeat for {_QUIET_PERIODS * _HEARTBEAT:g}s", check=True)
            else:
                return
        if len(self._buffer) > self._batch // 4:
            return
        if self._failing_since is not None:
            if self._buffer:
                return  # hand out what is here first
            loop = asyncio.get_running_loop()
            if loop.time() - self._failing_since > self._api.retry_deadline:
                raise StoreUnavailableError(
                    f"durable subscription {self._name!r}: no delivery from JetStream within "
                    f"{self._api.retry_deadline:g}s (last failure: {self._failure})"
                )
            await backoff(self._delay)
            self._delay = min(self._delay * 2, 1.0)
            if self._closed:
                return
        if self._check_consumer:
            await self._ensure_consumer(existing_only=True)
            self._check_consumer = False
        await self._send_pull()

    async def _send_pull(self) -> None:
        if self._nc.is_closed:
            raise StoreUnavailableError("the NATS connection is closed")
        n = self._batch - len(self._buffer)
        self._pulls_sent += 1
        reply = f"{self._inbox}.{self._pulls_sent}"
        max_bytes = max(PULL_MAX_BYTES, self._nc.max_payload + _MSG_OVERHEAD)
        body = {
            "batch": n,
            "max_bytes": max_bytes,
            "expires": int(_PULL_EXPIRES * NS_PER_SECOND),
            "idle_heartbeat": int(_HEARTBEAT * NS_PER_SECOND),
        }
        self._pull = _Pull(reply, n, self._nc.stats["reconnects"])
        try:
            await self._nc.publish(
                f"{API}.CONSUMER.MSG.NEXT.{self._stream}.{self._name}",
                _json.dumps(body),
                reply=reply,
            )
        except (nats.errors.Error, TimeoutError) as exc:
            self._lost(f"pull request not sent ({type(exc).__name__})", check=False)

    def _lost(self, why: str, *, check: bool) -> None:
        """The pull in flight is gone (or may be): send another, after a pause."""
        self._pull = None
        self._metrics.repulls += 1
        self._trouble(why, check=check)

    def _trouble(self, why: str, *, check: bool) -> None:
        if self._failing_since is None:
            self._failing_since = asyncio.get_running_loop().time()
        self._failure = why
        self._check_consumer = self._check_consumer or check

    def _alive(self) -> None:
        """A sign of life from the consumer: failures so far are over."""
        self._failing_since = None
        self._delay = 0.05

    async def _on_msg(self, msg: Msg) -> None:
        self._arrived.set()
        pull = self._pull
        if pull is not None:
            pull.quiet = 0
        if msg.reply:  # a stored message ("$JS.ACK...")
            now = asyncio.get_running_loop().time()
            self._buffer.append(_Received(msg, now, self._nc.stats["reconnects"]))
            self._alive()
            if pull is not None:
                pull.remaining -= 1
                if pull.remaining <= 0:
                    self._pull = None
            return
        headers = msg.headers or {}
        status = headers.get("Status")
        description = headers.get("Description", "")
        live = pull is not None and msg.subject == pull.reply
        if status == "100":  # idle heartbeat
            self._alive()
        elif status in ("404", "408") or (status == "409" and description in _PULL_ENDS):
            if live:
                self._pull = None
                self._alive()
        elif live:
            # 409 Leadership Change / Server Shutdown / Consumer Deleted / Exceeded
            # MaxWaiting, 503 no responders (no consumer leader, or no consumer): retry.
            gone = status == "503" or description == "Consumer Deleted"
            self._lost(f"pull answered {status} {description}".strip(), check=gone)
        elif description == "Consumer Deleted":
            self._check_consumer = True

    async def _accept(self, received: _Received) -> Delivery | None:
        """The delivery for a message, or None if it was parked, filtered out or unusable."""
        msg, epoch = received.msg, received.epoch
        try:
            attempt, seq, pending = _ack_metadata(msg.reply)
        except ValueError:
            _log.warning(
                "durable subscription %r: ignored a message with reply %r (not a JetStream "
                "delivery)",
                self._name,
                msg.reply,
            )
            return None
        self._pending = pending
        event = self._decode(msg, seq)
        valid = event if isinstance(event, Event) else None
        if valid is not None and self._filter is not None and not self._filter.matches(valid):
            # Whatever its attempt: an event the filter leaves out is never parked.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._nc.publish(msg.reply, b"+ACK")  # if lost: filtered out again
            self._metrics.filtered += 1
            return None
        if valid is not None and attempt > 1 and (seq, valid.id) in self._recent_acks:
            # Acked here already: the redelivery raced the ack (e.g. a new consumer leader
            # redelivered what had passed its ack_wait during the election).
            await self._settle(msg.reply, b"+ACK", seq, epoch)
            self._metrics.duplicates += 1
            return None
        if attempt > 1 and await self._already_parked(valid, msg.subject, seq):
            # Parked by an earlier delivery whose +TERM never reached the server.
            await self._settle(msg.reply, b"+TERM parked", seq, epoch)
            _log.info(
                "durable subscription %r: position %d, already parked, is terminated",
                self._name,
                seq,
            )
            return None
        handout = 1
        counted = False
        if attempt > 1 and valid is not None:
            # A redelivery: the server's count also covers deliveries that only waited in
            # a subscriber's buffer (closed or crashed before handing them out), so the
            # hand-outs to handlers are counted here, durably, before handing it out.
            count, counted = await self._count_handout(seq, valid)
            if not counted:
                prior = count
                await self._park(
                    msg.reply,
                    epoch,
                    seq,
                    msg.subject,
                    valid,
                    attempts=prior,
                    reason="max_deliver",
                    detail=(
                        f"handed out {prior} times (max_deliver={self._max_deliver}); the "
                        "last attempt was neither acked nor nacked within ack_wait (its "
                        "handler crashed, hung, or its subscriber closed)"
                    ),
                )
                await self._forget_handouts(seq, valid.id)
                return None
            handout = count
        if valid is None:
            assert isinstance(event, str)
            await self._park(
                msg.reply,
                epoch,
                seq,
                msg.subject,
                None,
                attempts=0,
                reason="malformed",
                detail=event,
            )
            return None
        waited = asyncio.get_running_loop().time() - received.at
        if waited > self._ack_wait.total_seconds() / 2:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._nc.publish(msg.reply, b"+WPI")
        self._metrics.delivered += 1
        if attempt > 1:
            self._metrics.redelivered += 1
        self._note_handout(seq, valid.id, handout)
        delivery = Delivery(self, msg.reply, valid, handout, epoch)
        delivery._counted = counted
        return delivery

    # -- hand-out counts ----------------------------------------------------------------

    def _handout_subject(self, seq: int) -> str:
        return f"{self._stream}.parked.{HANDOUTS_TOKEN}.{self._name}.{seq}"

    def _note_handout(self, seq: int, event_id: str, count: int) -> None:
        """Remember (in this process) that *seq* was handed out *count* times."""
        handed = self._handed
        handed[(seq, event_id)] = count
        handed.move_to_end((seq, event_id))
        if len(handed) > RECENT_ACKS:
            handed.popitem(last=False)

    async def _count_handout(self, seq: int, event: Event) -> tuple[int, bool]:
        """Count one more hand-out of the redelivered *event* at *seq*, durably: returns
        (the count, its ``attempt``; True); or (the hand-outs so far, False), recording
        nothing, if it was handed out ``max_deliver`` times already (to be parked).

        The count is the larger of the hand-out record's (written by any subscriber of
        the name, for deliveries after the first) and this process's own. The record is
        written with ``Nats-Expected-Last-Subject-Sequence`` (read, then write; again on a
        conflict), so two subscribers racing on one event count both hand-outs."""
        api, stream = self._api, self._parked_stream
        subject = self._handout_subject(seq)
        key = _park_key(event.id, self._subject_of(event))
        recreated = False
        for _ in range(10):
            try:
                found = await api.last_msg(stream, subject)
            except StreamNotFoundError:
                found = None
            recorded = 0
            if found is not None:
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    record = _json.loads(found.data)
                    if record.get("key") == key:  # not an earlier stream incarnation's
                        recorded = int(record["handouts"])
            prior = max(recorded, self._handed.get((seq, event.id), 0))
            if prior >= self._max_deliver:
                return prior, False
            count = prior + 1
            payload = _json.dumps({"key": key, "handouts": count})
            headers = {
                "Nats-Msg-Id": f"aether-handout.{self._name}.{seq}.{key}.{count}",
                "Nats-Expected-Last-Subject-Sequence": str(0 if found is None else found.seq),
            }

            async def attempt(
                headers: dict[str, str] = headers, payload: bytes = payload
            ) -> dict[str, Any]:
                msg = await api.nc.request(
                    subject, payload, timeout=api.request_timeout, headers=headers
                )
                return decode_answer(msg.data)

            try:
                answer, _ = await api.until_known(attempt, stream=stream)
            except StreamNotFoundError:
                if recreated:
                    raise
                recreated = True
                await _ensure_parked_stream(self._store)
                continue
            error = answer.get("error")
            if error is None:
                return count, True
            if error.get("err_code") not in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
                raise_for_error(answer, stream)
            await backoff(0.02)  # another subscriber counted meanwhile: read again
        raise StoreUnavailableError(
            f"could not count the hand-out of position {seq} of {self._name!r}"
        )

    async def _record_first_handout(self, seq: int, event: Event) -> None:
        """Record a first hand-out (not recorded when made) before it is nacked, so the
        subscriber that gets the redelivery counts it."""
        api, stream = self._api, self._parked_stream
        key = _park_key(event.id, self._subject_of(event))
        payload = _json.dumps({"key": key, "handouts": 1})
        headers = {
            "Nats-Msg-Id": f"aether-handout.{self._name}.{seq}.{key}.1",
            "Nats-Expected-Last-Subject-Sequence": "0",
        }

        async def attempt() -> dict[str, Any]:
            msg = await api.nc.request(
                self._handout_subject(seq), payload, timeout=api.request_timeout, headers=headers
            )
            return decode_answer(msg.data)

        with contextlib.suppress(StreamNotFoundError):
            answer, _ = await api.until_known(attempt, stream=stream)
            error = answer.get("error")
            if error is not None and error.get("err_code") != WRONG_LAST_SEQUENCE:
                raise_for_error(answer, stream)  # (a record there already: it counts more)

    async def _forget_handouts(self, seq: int, event_id: str) -> None:
        """Remove the hand-out record of a settled event (best effort: a record left
        behind only takes room; it is keyed to the event)."""
        self._handed.pop((seq, event_id), None)
        stream = self._parked_stream
        try:
            await self._api.call(
                f"STREAM.PURGE.{stream}", {"filter": self._handout_subject(seq)}, stream=stream
            )
        except (AetherError, nats.errors.Error, TimeoutError) as exc:
            _log.debug(
                "durable subscription %r: hand-out record of %d kept: %s", self._name, seq, exc
            )

    def _remember_ack(self, seq: int, event_id: str) -> None:
        recent = self._recent_acks
        recent[(seq, event_id)] = None
        if len(recent) > RECENT_ACKS:
            recent.popitem(last=False)

    async def _already_parked(self, event: Event | None, subject: str, seq: int) -> bool:
        """Whether (name, *seq*) has a park record of this very message (one read)."""
        try:
            found = await self._api.last_msg(
                self._parked_stream, f"{self._stream}.parked.{self._name}.{seq}"
            )
        except StreamNotFoundError:
            return False
        if found is None:
            return False
        key = _park_key(None if event is None else event.id, subject)
        try:
            return bool(_json.loads(found.data).get("key") == key)
        except (ValueError, AttributeError):
            return False

    def _decode(self, msg: Msg, seq: int) -> Event | str:
        """The event in *msg* (position set), or why it is malformed."""
        try:
            event = _rules.decode_event(msg.data)
        except ValueError as exc:
            return f"not a valid event: {exc}"
        prefix = f"{self._stream}.events."
        if not msg.subject.startswith(prefix):
            return f"message on subject {msg.subject!r}, outside the stream's events"
        try:
            token = encode_actor_id(event.actor_id)
        except InvalidEventError as exc:
            return f"not a valid event: {exc}"
        if token != msg.subject[len(prefix) :]:
            return f"event of actor {event.actor_id!r} stored on subject {msg.subject!r}"
        event.position = seq
        return event

    def _subject_of(self, event: Event) -> str:
        return f"{self._stream}.events.{encode_actor_id(event.actor_id)}"

    # -- acks and parking ---------------------------------------------------------------

    async def _settle(self, reply: str, payload: bytes, seq: int, epoch: int) -> bool:
        """Send an ack of any kind on *reply* and wait for the server's confirmation.

        Returns True once confirmed. An ack that gets no answer (a timeout, no consumer
        leader, a reconnect) is sent again (acks are idempotent) until
        ``retry_deadline``, then StoreUnavailableError. nats-server answers every ack
        kind, except an ack of a delivery past its current delivery pointer, which it
        ignores (``processAckMsg``): the consumer lost that delivery from its state (a
        server killed before it wrote the state, about 0.1 s after a change) or was
        recreated. After each timeout the consumer's state is therefore asked for: if it
        no longer knows the delivery (or the consumer is gone), the ack cannot apply and
        the event will be delivered again: returns False (counted in
        ``metrics.forgotten``). If the event is already settled (an ack whose answer was
        lost in a leader change), an ack or a term is done: True.

        A delivery received before the latest reconnect (*epoch* is the reconnect count
        then) is checked first, against the consumer's delivered sequence asked for once
        per reconnect: after a server crash, a subscriber's buffered deliveries would
        otherwise cost a timeout each."""
        nc, api = self._nc, self._api
        if epoch != nc.stats["reconnects"] and not await self._still_known(seq):
            return self._forgot(seq, f"{_kind(payload)} not applied")
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        delay = 0.02
        while True:
            if nc.is_closed:
                raise StoreUnavailableError("the NATS connection is closed")
            try:
                await nc.request(reply, payload, timeout=api.request_timeout)
                return True
            except _NO_ANSWER as exc:
                failure: BaseException = exc
            except nats.errors.ConnectionClosedError as exc:
                raise StoreUnavailableError("the NATS connection is closed") from exc
            now = loop.time()
            if deadline is None:
                deadline = now + api.retry_deadline
            if isinstance(failure, asyncio.TimeoutError):
                state = await self._delivery_state(seq)
                if state == "forgotten":
                    return self._forgot(seq, f"{_kind(payload)} not applied")
                if state == "settled" and payload.startswith((b"+ACK", b"+TERM")):
                    return True
            if loop.time() >= deadline:
                raise StoreUnavailableError(
                    f"durable subscription {self._name!r}: no answer to the ack of position "
                    f"{seq} within {api.retry_deadline:g}s (last failure: "
                    f"{type(failure).__name__})"
                ) from failure
            api.retries += 1
            await backoff(min(delay, max(deadline - loop.time(), 0.0)))
            delay = min(delay * 2, 1.0)

    def _forgot(self, seq: int, what: str) -> bool:
        self._metrics.forgotten += 1
        _log.info(
            "durable subscription %r: the server no longer knows the delivery of position %d "
            "(%s); it will be delivered again",
            self._name,
            seq,
            what,
        )
        return False

    async def _still_known(self, seq: int) -> bool:
        """Whether the consumer's delivered sequence, asked for once per reconnect, covers
        *seq* (if it does not, the server forgot a delivery of *seq* made before)."""
        reconnects = self._nc.stats["reconnects"]
        if self._known is None or self._known[0] != reconnects:
            info = await self._consumer_info()
            delivered = -1 if info is None else _delivered_seq(info)
            self._known = (reconnects, delivered)
        return seq <= self._known[1]

    async def _consumer_info(self) -> dict[str, Any] | None:
        """CONSUMER.INFO of this subscription's consumer; None if it does not exist."""
        try:
            return await self._api.call(
                f"CONSUMER.INFO.{self._stream}.{self._name}", stream=self._stream
            )
        except JetStreamError as exc:
            if exc.err_code == _CONSUMER_NOT_FOUND:
                return None
            raise

    async def _delivery_state(self, seq: int) -> Literal["forgotten", "settled", "pending"]:
        """Whether the consumer still holds the delivery of stream sequence *seq*."""
        info = await self._consumer_info()
        if info is None or seq > _delivered_seq(info):
            return "forgotten"
        if seq <= int((info.get("ack_floor") or {}).get("stream_seq", 0)):
            return "settled"
        return "pending"

    async def _park(
        self,
        reply: str,
        epoch: int,
        seq: int,
        subject: str,
        event: Event | None,
        *,
        attempts: int,
        reason: ParkReason,
        detail: str,
    ) -> None:
        """Record the event as parked, then terminate its delivery (see the module
        docstring for why in this order)."""
        actor_id: str | None = None if event is None else event.actor_id
        if actor_id is None:
            with contextlib.suppress(ValueError, UnicodeError):
                actor_id = decode_actor_token(subject.rsplit(".", 1)[-1])
        record: dict[str, Any] = {
            "subscription": self._name,
            "position": seq,
            "subject": subject,
            "reason": reason,
            "attempts": attempts,
            "parkedAt": datetime.now(UTC).isoformat(),
            "actorId": actor_id,
            "version": None if event is None else event.version,
            "eventId": None if event is None else event.id,
            "eventType": None if event is None else event.event_type,
            "detail": detail,
        }
        await _write_park_record(self._store, self._name, seq, record)
        await self._settle(reply, b"+TERM " + reason.encode(), seq, epoch)
        self._metrics.parked += 1
        _log.warning(
            "durable subscription %r parked the event at position %d (actor %r, version %s, "
            "after %d attempts): %s: %s",
            self._name,
            seq,
            actor_id,
            record["version"],
            attempts,
            reason,
            detail,
        )

    # -- the consumer -------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {
            "durable_name": self._name,
            "name": self._name,
            "description": "aether durable subscription",
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": _ns(self._ack_wait),
            "max_deliver": -1,
            "filter_subject": self._filter_subject,
            "replay_policy": "instant",
            "metadata": {
                META_KIND: KIND,
                META_FILTER: _filter_json(self._filter),
                META_MAX_DELIVER: str(self._max_deliver),
            },
        }

    async def _ensure_consumer(self, *, existing_only: bool = False) -> None:
        """Create the consumer, or check and use the existing one (updating its tuning).

        With *existing_only*, first ask whether it still exists (after a fault) and create
        it again only if it is gone."""
        api, stream, name = self._api, self._stream, self._name
        if self._created is None or existing_only:
            # The stream's identity: deleted and created again, it is another history
            # (positions restart), which this subscription's name never covered.
            info = await api.call(f"STREAM.INFO.{stream}", stream=stream)
            created = StreamSettings.from_info(info).created
            if self._created is None:
                self._created = created
            elif created != self._created:
                raise StreamNotFoundError(stream)
        if existing_only:
            try:
                info = await api.call(f"CONSUMER.INFO.{stream}.{name}", stream=stream)
            except JetStreamError as exc:
                if exc.err_code != _CONSUMER_NOT_FOUND:
                    raise
                _log.warning(
                    "durable subscription %r: its consumer on stream %r is gone (deleted, or "
                    "the stream was recreated); creating it again, from the stream's start",
                    name,
                    stream,
                )
            else:
                self._pending = int(info.get("num_pending", 0))
                return
        config = self._config()
        body = {"stream_name": stream, "config": config, "action": "create"}
        try:
            info = await api.call(f"CONSUMER.CREATE.{stream}.{name}", body, stream=stream)
        except JetStreamError as exc:
            if exc.err_code != _CONSUMER_EXISTS:
                raise
            info = await self._update_existing(config)
        self._pending = int(info.get("num_pending", 0))

    async def _update_existing(self, config: dict[str, Any]) -> dict[str, Any]:
        api, stream, name = self._api, self._stream, self._name
        try:
            info = await api.call(f"CONSUMER.INFO.{stream}.{name}", stream=stream)
        except JetStreamError as exc:
            if exc.err_code != _CONSUMER_NOT_FOUND:
                raise
            # Deleted between the two requests: create it after all.
            body = {"stream_name": stream, "config": config, "action": "create"}
            return await api.call(f"CONSUMER.CREATE.{stream}.{name}", body, stream=stream)
        existing: dict[str, Any] = dict(info["config"])
        _check_identity(name, existing, config)
        metadata = dict(existing.get("metadata") or {})
        metadata.update(config["metadata"])
        updated = {
            **existing,
            "ack_wait": config["ack_wait"],
            "max_deliver": -1,
            "metadata": {k: v for k, v in metadata.items() if not k.startswith("_nats.")},
        }
        _log.info(
            "durable subscription %r: updating its consumer to ack_wait=%gs, max_deliver=%d",
            name,
            self._ack_wait.total_seconds(),
            self._max_deliver,
        )
        body = {"stream_name": stream, "config": updated, "action": "update"}
        return await api.call(f"CONSUMER.CREATE.{stream}.{name}", body, stream=stream)

    def __repr__(self) -> str:
        return (
            f"<DurableSubscription {self._name!r} stream={self._stream!r} "
            f"filter_subject={self._filter_subject!r} closed={self._closed}>"
        )


def durable_subscription(
    store: JetStreamEventStore,
    name: str,
    *,
    filter: SubscriptionFilter | None,
    max_deliver: int,
    ack_wait: timedelta,
    batch: int = PULL_BATCH,
) -> DurableSubscription:
    """A :class:`DurableSubscription` called *name* on *store* (no I/O yet).

    Raises InvalidSubscriptionNameError for a bad *name*, InvalidConfigError for
    *max_deliver* not an int >= 1, *ack_wait* not a positive timedelta, *batch* not an
    int in 1..=10000, InvalidEventError (as ``subscribe`` does) for a *filter* that is not
    a SubscriptionFilter.
    """
    check_name(name)
    if isinstance(max_deliver, bool) or not isinstance(max_deliver, int) or max_deliver < 1:
        raise InvalidConfigError("max_deliver", f"must be an int >= 1, got {max_deliver!r}")
    if not isinstance(ack_wait, timedelta) or ack_wait <= timedelta(0):
        raise InvalidConfigError("ack_wait", f"must be a positive timedelta, got {ack_wait!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
        raise InvalidConfigError("batch", f"must be an int in 1..=10000, got {batch!r}")
    if filter is not None and not isinstance(filter, SubscriptionFilter):
        raise InvalidEventError(
            f"filter must be an aether.bus.SubscriptionFilter or None, got {type(filter).__name__}"
        )
    return DurableSubscription(store, name, filter, max_deliver, ack_wait, batch)


def check_name(name: object) -> None:
    """Raise InvalidSubscriptionNameError unless *name* can name a durable subscription."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InvalidSubscriptionNameError(name)


async def parked(store: JetStreamEventStore, name: str) -> list[ParkedEvent]:
    """The events durable subscription *name* parked, oldest first ([] if none).

    Read from the ``_parked`` stream in bounded batches; on a replicated stream what the
    reading consumer's replica had not applied yet is fetched from the leader, so every
    park confirmed before the call is listed. A record that cannot be decoded (not
    written by aether) is skipped with a warning."""
    check_name(name)
    stream = store.stream_name + PARKED_SUFFIX
    subject = f"{store.stream_name}.parked.{name}.>"
    out: list[ParkedEvent] = []
    messages = store._replay.iter_subject(
        stream,
        subject,
        batch=store.config.replay_batch_size,
        replicated=store.stream_settings.replicas > 1,
    )
    try:
        async with contextlib.aclosing(messages):
            async for msg in messages:
                try:
                    out.append(ParkedEvent.from_record(msg.data))
                except (ValueError, KeyError, TypeError) as exc:
                    _log.warning("skipped a malformed parked record %s: %s", msg.subject, exc)
    except StreamNotFoundError:
        return []
    return out


async def unpark(store: JetStreamEventStore, name: str, position: int) -> bool:
    """Remove the parked record of *position* from durable subscription *name* (once an
    operator has replayed the event). Returns whether there was one."""
    check_name(name)
    if isinstance(position, bool) or not isinstance(position, int) or position < 1:
        raise InvalidConfigError("position", f"must be an int >= 1, got {position!r}")
    stream = store.stream_name + PARKED_SUFFIX
    subject = f"{store.stream_name}.parked.{name}.{position}"
    try:
        answer = await store._api.call(f"STREAM.PURGE.{stream}", {"filter": subject}, stream=stream)
    except StreamNotFoundError:
        return False
    return int(answer.get("purged", 0)) > 0


async def durable_subscriptions(store: JetStreamEventStore) -> list[DurableSubscriptionInfo]:
    """Every durable subscription on *store*'s stream (consumers aether made), by name,
    with its pending counts and parked count. Other consumers are not listed."""
    api, stream = store._api, store.stream_name
    infos: list[Mapping[str, Any]] = []
    offset = 0
    while True:
        answer = await api.call(f"CONSUMER.LIST.{stream}", {"offset": offset}, stream=stream)
        page = answer.get("consumers") or []
        infos.extend(page)
        offset += len(page)
        if not page or offset >= int(answer.get("total", 0)):
            break
    counts = await _parked_counts(store)
    ours = [
        info
        for info in infos
        if (info.get("config", {}).get("metadata") or {}).get(META_KIND) == KIND
    ]
    return sorted(
        (DurableSubscriptionInfo.from_consumer_info(i, counts.get(i["name"], 0)) for i in ours),
        key=lambda info: info.name,
    )


# -- helpers --------------------------------------------------------------------------------

# An ack with no answer: sent again (after checking that the delivery is still known).
_NO_ANSWER = (
    asyncio.TimeoutError,  # nats.errors.TimeoutError derives from it
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
)
# Status descriptions of a pull's normal end (nats-server consumer.go).
_PULL_ENDS = frozenset({"Batch Completed", "Message Size Exceeds MaxBytes"})


def _ack_metadata(reply: str | None) -> tuple[int, int, int]:
    """(delivery count, stream sequence, consumer's pending count) from a JetStream ack
    subject: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or
    the v2 form with ``<domain>.<account hash>`` after ``ACK`` and a token at the end
    (ADR-15). Raises ValueError for anything else."""
    if not reply or not reply.startswith("$JS.ACK."):
        raise ValueError(reply)
    tokens = reply.split(".")
    if len(tokens) == 9:
        base = 2
    elif len(tokens) >= 11:
        base = 4
    else:
        raise ValueError(reply)
    return int(tokens[base + 2]), int(tokens[base + 3]), int(tokens[base + 6])


def _kind(payload: bytes) -> str:
    """The kind of an ack payload (``+ACK``, ``-NAK``, ...)."""
    return payload.split(b" ", 1)[0].decode()


def _delivered_seq(info: Mapping[str, Any]) -> int:
    """The stream sequence of the last message a consumer delivered (CONSUMER.INFO)."""
    return int((info.get("delivered") or {}).get("stream_seq", 0))


def _filter_subject(store: JetStreamEventStore, filter: SubscriptionFilter | None) -> str:
    """One actor's subject if the filter's actor pattern matches exactly one actor id,
    else every event's subject."""
    everything = f"{store.stream_name}.events.>"
    pattern = None if filter is None else filter.actor_pattern
    if pattern is None:
        return everything
    tokens = pattern.split(".")
    if tokens[-1] == ">" or any(t == "*" or t.endswith("*") for t in tokens):
        return everything
    try:
        return store.subject_for(pattern)
    except (InvalidEventError, TypeError):
        return everything  # no valid actor id: matches nothing, left to the client


def _filter_json(filter: SubscriptionFilter | None) -> str:
    f = filter or SubscriptionFilter()
    body = {"eventTypes": sorted(f.event_types), "actorPattern": f.actor_pattern}
    return _json.dumps(body).decode()


def _parse_filter(text: str | None) -> SubscriptionFilter | None:
    if not text:
        return None
    try:
        body = _json.loads(text)
        f = SubscriptionFilter(body.get("eventTypes") or (), body.get("actorPattern"))
    except (ValueError, TypeError, AttributeError):
        return None
    return None if f == SubscriptionFilter() else f


def _check_identity(name: str, existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """Raise SubscriptionConflictError unless *existing* is this durable subscription's
    consumer with the same filter (only its tuning may differ)."""
    metadata: Mapping[str, str] = existing.get("metadata") or {}
    if metadata.get(META_KIND) != KIND:
        raise SubscriptionConflictError(
            name,
            "consumer",
            f"a consumer of that name exists and is not an aether durable subscription "
            f"(aether.kind={metadata.get(META_KIND)!r}); use another name",
        )
    if existing.get("deliver_subject"):
        raise SubscriptionConflictError(name, "consumer", "the consumer is a push consumer")
    if existing.get("ack_policy") != "explicit":
        raise SubscriptionConflictError(
            name, "ack_policy", f"is {existing.get('ack_policy')!r}, not 'explicit'"
        )
    wanted_meta: Mapping[str, str] = wanted["metadata"]
    if (
        metadata.get(META_FILTER) != wanted_meta[META_FILTER]
        or existing.get("filter_subject") != wanted["filter_subject"]
    ):
        raise SubscriptionConflictError(
            name,
            "filter",
            f"it exists with filter {metadata.get(META_FILTER)} (subject "
            f"{existing.get('filter_subject')!r}), not {wanted_meta[META_FILTER]} (subject "
            f"{wanted['filter_subject']!r}): the processes using the old filter would ack "
            "events the new one wants. Use a new name, or delete the consumer",
        )


def _delay_seconds(delay: timedelta | float | None) -> float:
    if delay is None:
        return 0.0
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise TypeError(f"delay must be a timedelta, seconds or None, not {type(delay).__name__}")
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"delay must not be negative, got {delay!r}")
    return seconds


def _ns(value: timedelta) -> int:
    return (value // timedelta(microseconds=1)) * 1000


# -- the parked stream ----------------------------------------------------------------------


def _parked_body(store: JetStreamEventStore) -> dict[str, Any]:
    settings = store.stream_settings
    metadata = {
        META_KIND: PARKED_KIND,
        META_NAMESPACE: settings.metadata.get(META_NAMESPACE, store.config.namespace),
        META_STREAM: settings.metadata.get(META_STREAM, store.stream_name),
    }
    return {
        "name": store.stream_name + PARKED_SUFFIX,
        "subjects": [f"{store.stream_name}.parked.>"],
        "retention": "limits",
        "discard": "old",
        "max_msgs_per_subject": 1,
        "storage": settings.storage,
        "num_replicas": settings.replicas,
        "metadata": metadata,
    }


def _check_parked_stream(info: Mapping[str, Any], store: JetStreamEventStore) -> None:
    config: Mapping[str, Any] = info["config"]
    name = str(config["name"])
    subjects = f"{store.stream_name}.parked.>"
    kind = (config.get("metadata") or {}).get(META_KIND)
    if kind is not None and kind != PARKED_KIND:
        raise UnsuitableStreamError(
            name, "metadata", f"it is an aether {kind} stream, not the parked events of a store"
        )
    if subjects not in (config.get("subjects") or ()):
        raise UnsuitableStreamError(
            name, "subjects", f"the stream does not hold subjects {subjects!r}"
        )
    if config.get("retention", "limits") != "limits":
        raise UnsuitableStreamError(
            name, "retention", f"is {config.get('retention')!r}; parked records need 'limits'"
        )
    # Limits would drop park records silently (discard old) or refuse new ones (discard
    # new). max_msgs_per_subject drops none: a park record's subject is written once.
    for setting in ("max_msgs", "max_bytes", "max_age"):
        value = int(config.get(setting) or 0)
        if value > 0:
            raise UnsuitableStreamError(
                name,
                setting,
                f"is {value}; parked records must not be removed by limits (the store makes "
                "the stream without any)",
            )


async def _ensure_parked_stream(store: JetStreamEventStore) -> None:
    """Create ``<events stream>_parked`` if missing; refuse one that does not fit."""
    api = store._api
    name = store.stream_name + PARKED_SUFFIX
    for _ in range(3):
        try:
            info = await api.call(f"STREAM.INFO.{name}")
        except JetStreamError as exc:
            if exc.err_code != STREAM_NOT_FOUND:
                raise
        else:
            _check_parked_stream(info, store)
            return
        try:
            info = await api.call(f"STREAM.CREATE.{name}", _parked_body(store))
        except JetStreamError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            continue  # created meanwhile with other settings: check it
        _check_parked_stream(info, store)
        return
    raise StoreUnavailableError(f"stream {name!r} kept appearing and vanishing")


async def _write_park_record(
    store: JetStreamEventStore, name: str, seq: int, record: dict[str, Any]
) -> None:
    """Store *record* as the one record of (*name*, *seq*).

    Written with ``Nats-Expected-Last-Subject-Sequence`` 0 (the subject must be empty), so
    two subscribers parking the same event record it once. If a record is there: the same
    event's (same event id, or same message digest for a malformed one) means done; another
    one's (left by an earlier incarnation of the stream, whose sequences restarted) is
    replaced. A missing parked stream (an operator deleted it) is created again."""
    api = store._api
    stream = store.stream_name + PARKED_SUFFIX
    subject = f"{store.stream_name}.parked.{name}.{seq}"
    record["key"] = _park_key(record.get("eventId"), record["subject"])
    payload = _json.dumps(record)
    expected = 0
    recreated = False
    for _ in range(10):
        headers = {
            "Nats-Msg-Id": f"aether-park.{name}.{seq}.{record['key']}",
            "Nats-Expected-Last-Subject-Sequence": str(expected),
        }

        async def attempt(headers: dict[str, str] = headers) -> dict[str, Any]:
            msg = await api.nc.request(
                subject, payload, timeout=api.request_timeout, headers=headers
            )
            return decode_answer(msg.data)

        try:
            answer, _ = await api.until_known(attempt, stream=stream)
        except StreamNotFoundError:
            if recreated:
                raise
            recreated = True
            await _ensure_parked_stream(store)
            continue
        error = answer.get("error")
        if error is None:
            return
        if error.get("err_code") != WRONG_LAST_SEQUENCE:
            raise_for_error(answer, stream)
        existing = await api.last_msg(stream, subject)
        if existing is None:
            expected = 0  # removed meanwhile (unparked): write it again
            continue
        try:
            same = _json.loads(existing.data).get("key") == record["key"]
        except (ValueError, AttributeError):
            same = False
        if same:
            return
        expected = existing.seq
    raise StoreUnavailableError(f"could not record the park of position {seq} of {name!r}")


def _park_key(event_id: str | None, subject: str) -> str:
    """What tells one parked message from another stored at the same sequence by an
    earlier incarnation of the stream: its event id (none if malformed) and subject."""
    return hashlib.sha256(f"{event_id}|{subject}".encode()).hexdigest()[:32]


async def _parked_counts(store: JetStreamEventStore) -> dict[str, int]:
    """Parked records per durable subscription name."""
    api = store._api
    stream = store.stream_name + PARKED_SUFFIX
    prefix = f"{store.stream_name}.parked."
    counts: dict[str, int] = {}
    offset = 0
    while True:
        body = {"subjects_filter": prefix + ">", "offset": offset}
        try:
            answer = await api.call(f"STREAM.INFO.{stream}", body, stream=stream)
        except StreamNotFoundError:
            return counts
        subjects: Mapping[str, int] = answer.get("state", {}).get("subjects") or {}
        for subject in subjects:
            name = subject[len(prefix) :].rsplit(".", 1)[0]
            if name.startswith(HANDOUTS_TOKEN + "."):
                continue  # a hand-out count, not a park record
            counts[name] = counts.get(name, 0) + 1
        offset += len(subjects)
        total = int(answer.get("total", answer.get("state", {}).get("num_subjects", 0)))
        if not subjects or offset >= total:
            return counts
