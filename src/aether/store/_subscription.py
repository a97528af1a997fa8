"""Catch-up then live subscriptions over every actor of a store (``subscribe``).

A :class:`Subscription` is an async iterator of the store's events with ``position >
after``, in position order: first the events already stored (catch-up), then new ones as
they are appended (live), with no gap and no duplicate at the boundary, because both
phases are one walk over the store's positions. What each store contributes is a *feed*:
a source of decoded events in position order that can say "nothing right now" and wait.

JetStream (:class:`_JetStreamFeed`)
    One ephemeral pull consumer over ``<stream>.events.>`` starting at ``after + 1``
    (in-memory, R1, no acks). A background task keeps **one** pull request in flight at a
    time, with ``expires`` and ``idle_heartbeat``: in catch-up it is answered at once
    with a batch; live, it waits at the server until events come. Flow control is the
    store's replay's (:mod:`aether.store._replay`): every pull's ``max_bytes`` is reserved
    from the connection's shared replay budget, so replays and subscriptions together
    never let the server's buffer for the connection pass its limit, and a pull is only
    sent while what the iterator has not consumed yet is below one batch and one
    ``max_bytes``. Memory is thus bounded by about two batches
    (``replay_batch_size`` messages) and ``2 * max(8 MiB, max_payload)`` bytes, whatever
    the history length.

    The consumer is recreated after the last message received (the buffer is kept) when
    anything breaks the chain: a reconnect, a consumer deleted or moved (server restart,
    leader change, inactivity), a status the pull loop does not expect, heartbeats that
    stop, or a gap in the consumer's delivery sequence (a message nats-py dropped, or that a
    heartbeat says was sent and never came). Every message is also checked against the
    position already received, so a recreated consumer can never deliver twice.

    Timing: heartbeats every ``request_timeout`` (clamped to 0.25..5 s), a pull expires
    after ten of them; two heartbeat intervals without anything arriving while a pull is
    in flight count as a lost consumer. Recreations that deliver nothing for
    ``retry_deadline`` (and any request failing for that long) end the subscription with
    StoreUnavailableError; each recreation counts in ``store.stats.retries`` and the
    subscription's ``stats.restarts``.

    Pull sizes: a pull sent while the consumer reports messages pending (catching up)
    asks for at most that many messages, with a ``max_bytes`` that starts at 64 KiB and
    doubles each time a pull is ended by its bytes (up to the replay's largest), so it
    ends as soon as it has brought them and a large pull is never left waiting at the
    server. A pull sent while the consumer reports nothing pending (live) asks for
    ``_MIN_PULL_BYTES`` (16 KiB) and waits at the server; an event larger than that ends
    it and the next pull is sized as in catch-up. So an idle subscription holds 16 KiB of
    the connection's replay budget (16 MiB by default): about 1,000 idle subscriptions
    fill it, and a replay's first pull needs about 1 MiB of it, so keep well under that
    (say 900) per connection, or open more connections. The exception: messages deleted
    while a catch-up pull is in flight (so fewer come than were pending) leave that pull
    waiting with its size until it expires.

    Why not the replay's ``_drain`` itself: it serves a count of messages known at the
    start with ``no_wait`` pulls and then ends; a subscription must also wait at the
    server for messages not yet written, which needs waiting pulls and heartbeats. What
    the two share is the budget and the pull sizing (``_budget_of``, ``_replay_window``).

    Replicated streams: the consumer may be hosted by a follower that has not applied
    the newest writes yet. For a subscription that only delays them (they come in order,
    never skipped: a consumer never jumps over a sequence its host has not stored), and
    :attr:`Subscription.caught_up` is measured against the stream's last sequence as the
    stream *leader* reported it at the start, so it still covers every write acknowledged
    before the start.

Memory (:class:`_MemoryFeed`)
    The in-memory store keeps an append log (position ``p`` is ``log[p - 1]``); a
    subscription copies at most :data:`_MEMORY_CHUNK` entries of it under the store's lock
    at a time, and waits for appends on a future that the appending thread resolves with
    ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.msg import Msg

from aether import _json
from aether._tasks import stop as stop_tasks
from aether.bus.filter import SubscriptionFilter
from aether.errors import (
    InvalidEventError,
    JetStreamError,
    StoreUnavailableError,
    StreamNotFoundError,
)
from aether.event import Event
from aether.replay import ReplayError
from aether.store import _rules
from aether.store._jsapi import API, NS_PER_SECOND, backoff
from aether.store._provision import StreamSettings
from aether.store._replay import _REPLAY_BYTES_IN_FLIGHT, _budget_of, _replay_window
from aether.store._subjects import encode_actor_id

if TYPE_CHECKING:
    from aether.store._replay import _Budget
    from aether.store.jetstream import JetStreamEventStore
    from aether.store.memory import InMemoryEventStore

__all__ = ["Subscription", "SubscriptionStats", "subscribe_jetstream", "subscribe_memory"]

_log = logging.getLogger("aether.store")

#: The largest ``after``: JetStream sequences are unsigned 64-bit, positions start at 1.
_MAX_AFTER = 2**63 - 2


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """A snapshot of a subscription's counters (:attr:`Subscription.stats`).

    - ``position``: the last position processed (see :attr:`Subscription.position`).
    - ``caught_up``: :attr:`Subscription.caught_up`.
    - ``delivered``: events yielded to the iterator.
    - ``filtered_out``: events read but not yielded because the filter refused them.
    - ``malformed``: stored messages skipped because no store could have written them
      (not an event, or an event on another actor's subject: a foreign writer's).
    - ``lag``: events (of every actor, before filtering) stored after ``position``, as
      last known: exact for the in-memory store; for JetStream, what the subscription has
      received and not yet processed plus what the server's consumer said was still
      pending with the newest message or heartbeat. None until the subscription first
      read the store.
    - ``restarts``: JetStream consumers recreated after a fault (reconnect, consumer lost,
      leader change); always 0 for the in-memory store.
    """

    position: int
    caught_up: bool
    delivered: int
    filtered_out: int
    malformed: int
    lag: int | None
    restarts: int


#: Called with each malformed stored message a subscription skips (instead of the log).
MalformedHandler = Callable[[ReplayError], None]


class _Feed:
    """A store's events in position order, for one subscription (see the module doc).

    ``position`` is the last position handed out or skipped; ``target`` the last position
    stored when the feed first read the store (None before); ``caught_up`` is set once
    ``position >= target``.
    """

    def __init__(self, after: int, on_malformed: MalformedHandler | None = None) -> None:
        self.position = after
        self.on_malformed = on_malformed
        self.target: int | None = None
        self.caught_up = False
        self.delivered = 0
        self.filtered_out = 0
        self.malformed = 0
        self.restarts = 0
        self.closed = False

    def set_target(self, target: int) -> None:
        self.target = target
        if self.position >= target:
            self.caught_up = True

    def pop(self) -> Event | None:
        """The next event (position > ``position``), or None if none is available now."""
        raise NotImplementedError

    async def wait(self) -> None:
        """Return once :meth:`pop` may have something (or the feed was closed); raise the
        error that ended the feed, if any, once everything before it was popped."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def abandon(self) -> None:
        """Release what can be released without awaiting (the subscription was dropped)."""

    def lag(self) -> int | None:
        raise NotImplementedError

    def skip_malformed(self, position: int, data: bytes, error: Exception) -> None:
        self.malformed += 1
        if self.on_malformed is not None:
            self.on_malformed(ReplayError(position, data, error))
            return
        log = _log.warning if self.malformed == 1 else _log.debug
        log("subscription skipped the malformed message at position %d: %s", position, error)


class Subscription:
    """The events of every actor of a store with ``position > after``, in position order:
    first those already stored (catch-up), then new ones as they are appended (live), with
    no gap and no duplicate at the boundary, until closed.

    Get one from ``store.subscribe(after=0, filter=None)`` (both stores). It is an async
    iterator of :class:`~aether.Event` (each with its ``position``) and an async context
    manager that closes it::

        async with store.subscribe(after=checkpoint) as events:
            async for event in events:
                apply(event)
                checkpoint = event.position  # store it with the read model

    Nothing is read until the first event is awaited: that moment is the subscription's
    *start*. Iterate it from one task at a time.

    - **Resuming**: ``subscribe(after=p)`` continues exactly after position ``p``. Store
      the position of the last event you handled *together with* the effects of handling
      it (in one transaction) and resume from it: exactly-once effects over an
      at-least-once feed. Without that, a crash between an effect and the saved position
      replays the event.
    - **Filter** (:class:`~aether.bus.SubscriptionFilter`): events it refuses are read
      and skipped; they advance :attr:`position` but are not yielded.
    - **Malformed messages** (a foreign writer's: not an event, or an event on another
      actor's subject) are skipped and counted (:attr:`stats` ``.malformed``; the first
      is logged as a warning on the ``aether.store`` logger); they never stop the
      subscription.
    - :attr:`caught_up` is True once every event stored at the start has been read.
    - :meth:`close` (idempotent) ends the iteration: a task waiting for the next event
      gets ``StopAsyncIteration``, and so does every later ``__anext__``. Leaving the
      ``async with`` block closes it; so does an error raised by the iterator.
    - Cancelling a task waiting in ``__anext__`` is safe: the subscription goes on from
      where it was.

    Errors, raised from the iterator (the subscription is then closed; resume with
    ``after=sub.position``):

    - :class:`~aether.errors.StreamNotFoundError`: the stream was deleted (or deleted
      and created again: a new stream's positions say nothing of the old one's).
    - :class:`~aether.errors.StoreUnavailableError`: the JetStream subscription could not
      read for ``retry_deadline``: no answer from the server, or a consumer that kept
      failing without delivering anything. Shorter faults (a reconnect, a server restart,
      a leader change, a lost consumer) are absorbed: the consumer is recreated after
      the last event received, and nothing is skipped or repeated.
    - :class:`~aether.errors.JetStreamError`: the server refused the consumer (for
      instance the user lacks the permission to create one).

    On a replicated stream the consumer may live on a follower that has not applied the
    newest writes yet: those events come a little later, in order, never skipped. Since
    the backlog's end is read from the stream leader, :attr:`caught_up` still means that
    every event acknowledged to any writer before the start has been read.
    """

    __slots__ = ("_after", "_feed", "_filter")

    def __init__(self, feed: _Feed, after: int, filter: SubscriptionFilter | None) -> None:
        # Use store.subscribe(): the arguments are checked there.
        self._feed = feed
        self._after = after
        self._filter = filter

    def __del__(self) -> None:
        feed = getattr(self, "_feed", None)
        if feed is not None and not feed.closed:
            feed.abandon()

    @property
    def after(self) -> int:
        """The position the subscription started after."""
        return self._after

    @property
    def filter(self) -> SubscriptionFilter | None:
        """The filter events must pass to be yielded (None: every event)."""
        return self._filter

    @property
    def position(self) -> int:
        """The last position read: that of the last event yielded, or of a later event
        the filter refused or a later malformed message skipped while waiting for the
        next; ``after`` before anything was read. ``subscribe(after=position)`` goes on
        from here without repeating or skipping an event the filter passes."""
        return self._feed.position

    @property
    def caught_up(self) -> bool:
        """True once every event stored at the subscription's start (the first
        ``__anext__``) has been read; then it stays True."""
        return self._feed.caught_up

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the iterator raised an error."""
        return self._feed.closed

    @property
    def stats(self) -> SubscriptionStats:
        """A snapshot of the counters (:class:`SubscriptionStats`)."""
        feed = self._feed
        return SubscriptionStats(
            position=feed.position,
            caught_up=feed.caught_up,
            delivered=feed.delivered,
            filtered_out=feed.filtered_out,
            malformed=feed.malformed,
            lag=feed.lag(),
            restarts=feed.restarts,
        )

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        feed = self._feed
        wanted = self._filter
        while True:
            if feed.closed:
                raise StopAsyncIteration
            event = feed.pop()
            if event is None:
                try:
                    await feed.wait()
                except asyncio.CancelledError:
                    raise
                except BaseException:
                    await feed.close()
                    raise
                continue
            if wanted is not None and not wanted.matches(event):
                feed.filtered_out += 1
                continue
            feed.delivered += 1
            return event

    async def close(self) -> None:
        """End the subscription: release its server-side consumer, end the iteration.
        Idempotent. Events received but not yet yielded are dropped (resume with
        ``after=position``)."""
        await self._feed.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "caught up" if self.caught_up else "catching up"
        return f"<Subscription after={self._after} position={self.position} {state}>"


def _check_arguments(after: object, filter: object) -> int:
    if type(after) is not int:  # bool is an int: refused too
        raise InvalidEventError(f"after must be an int position, got {type(after).__name__}")
    if not 0 <= after <= _MAX_AFTER:
        raise InvalidEventError(f"after must be between 0 and {_MAX_AFTER}, got {after}")
    if filter is not None and not isinstance(filter, SubscriptionFilter):
        raise InvalidEventError(
            f"filter must be an aether.bus.SubscriptionFilter or None, got {type(filter).__name__}"
        )
    return after


# -- JetStream --------------------------------------------------------------------------------

#: The ``max_bytes`` of a live pull (one sent when the consumer reports nothing pending):
#: an idle subscription's waiting pull holds this much of the connection's replay budget.
_MIN_PULL_BYTES = 16 * 1024
#: The ``max_bytes`` of a consumer's first catch-up pull (sent when the consumer reports
#: messages pending). A pull ended by its bytes doubles it for the next one (up to the
#: replay's largest), a pull that expires brings it back here.
_FIRST_PULL_BYTES = 64 * 1024
#: What a buffered message is counted as besides its data, subject and ack reply.
_MSG_OVERHEAD = 128
#: A pull waits at most this many heartbeat intervals for events (then a new one is sent).
_EXPIRES_IN_HEARTBEATS = 10
# Status descriptions (nats-server consumer.go).
_BATCH_COMPLETED = "Batch Completed"
_MAX_BYTES = "Message Size Exceeds MaxBytes"
_REQUEST_TIMEOUT = "Request Timeout"
_LAST_CONSUMER_SEQ = "Nats-Last-Consumer"


class _StalledError(Exception):
    """The consumer cannot go on: recreate it after the last message received."""


class _JetStreamFeed(_Feed):
    """The JetStream side of a subscription (see the module doc for the design).

    The background task (:meth:`_run`) owns all I/O and the consumer; the iterator only
    pops what the consumer's subscription callback buffered. The task holds this feed,
    never the :class:`Subscription`, so a subscription dropped without ``close()`` is
    garbage-collected and its ``__del__`` cancels the task (which deletes the consumer).
    """

    def __init__(
        self, store: JetStreamEventStore, after: int, on_malformed: MalformedHandler | None
    ) -> None:
        super().__init__(after, on_malformed)
        self._api = api = store._api
        self._nc = nc = store._nc
        self._stream = store._stream
        self._prefix = store._event_prefix
        self._batch = store._config.replay_batch_size
        self._max_bytes = _replay_window(nc.max_payload)[1]
        heartbeat = min(5.0, max(0.25, api.request_timeout))
        self._heartbeat = heartbeat
        self._expires = heartbeat * _EXPIRES_IN_HEARTBEATS
        # (position, subject, data, counted bytes) of each message received, not yet popped
        self._buffer: deque[tuple[int, str, bytes, int]] = deque()
        self._buffered_bytes = 0
        self._received_seq = after  # the last position received (buffered or popped)
        self._received = 0  # messages received, in all (progress, for the retry deadline)
        self._pending: int | None = None  # the consumer's num_pending, as last told
        self._arrived = asyncio.Event()  # for the iterator: something to pop, or the end
        self._wake = asyncio.Event()  # for the task: room in the buffer, a pull ended, ...
        self._wants_room = False  # the task waits for the iterator to make room
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._created: object = None  # the stream's identity (creation time)
        self._idle = False  # the consumer said it has nothing more (heartbeat, expiry)
        #: the most messages buffered at once (for the bounded-memory tests)
        self.peak_buffered = 0
        #: the name of the consumer in use (for diagnostics and fault tests)
        self.consumer: str | None = None

    # -- the iterator's side ----------------------------------------------------------------

    def pop(self) -> Event | None:
        buffer = self._buffer
        while buffer:
            seq, subject, data, size = buffer.popleft()
            self._buffered_bytes -= size
            if (
                self._wants_room
                and len(buffer) < self._batch
                and self._buffered_bytes < self._max_bytes
            ):
                self._wants_room = False
                self._wake.set()
            if seq <= self.position:
                continue  # never twice (a recreated consumer starts after what was received)
            self.position = seq
            if not self.caught_up and self.target is not None and seq >= self.target:
                self.caught_up = True
            event = self._decode(seq, subject, data)
            if event is not None:
                return event
        return None

    def _decode(self, seq: int, subject: str, data: bytes) -> Event | None:
        # The store's decoding rules, plus: the message is on its actor's own subject.
        try:
            event = _rules.decode_event(data)
            token = encode_actor_id(event.actor_id)
        except ValueError as exc:  # InvalidEventError included
            self.skip_malformed(seq, data, exc)
            return None
        prefix = self._prefix
        if not subject.startswith(prefix) or subject[len(prefix) :] != token:
            wrong = InvalidEventError(f"event of {event.actor_id!r} on subject {subject!r}")
            self.skip_malformed(seq, data, wrong)
            return None
        event.position = seq
        return event

    async def wait(self) -> None:
        if self.closed:
            return
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        self._arrived.clear()
        if self._buffer:
            return
        if self._task.done():
            error, self._error = self._error, None
            self.closed = True  # the task ends only on an error (or close)
            if error is not None:
                raise error
            return
        await self._arrived.wait()

    async def close(self) -> None:
        self.closed = True
        self._buffer.clear()
        self._buffered_bytes = 0
        self._arrived.set()
        if self._task is not None:
            await stop_tasks([self._task])  # again until it ends: a request may swallow one

    def abandon(self) -> None:
        self.closed = True
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing runs it
                task.cancel()

    def lag(self) -> int | None:
        if self._pending is None:
            return None
        return len(self._buffer) + self._pending

    # -- the task -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._follow()
        except Exception as exc:
            self._error = exc
        finally:
            self._arrived.set()

    async def _follow(self) -> None:
        """Consumers, one after the other, each starting after the last message received,
        until one fails for ``retry_deadline`` without delivering anything."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            received = self._received
            try:
                await self._consume()
            except _StalledError as exc:
                now = loop.time()
                if deadline is None or self._received != received:  # progress: new deadline
                    deadline = now + self._api.retry_deadline
                elif now >= deadline:
                    raise StoreUnavailableError(
                        f"subscription to {self._stream!r} stalled after position "
                        f"{self._received_seq} for {self._api.retry_deadline:g}s ({exc})"
                    ) from exc
                self.restarts += 1
                self._api.retries += 1
                _log.debug("subscription to %r: new consumer (%s)", self._stream, exc)
                await backoff(0.05)

    async def _consume(self) -> None:
        """One consumer's life: create it, pull until something breaks (_StalledError)."""
        api, nc, stream = self._api, self._nc, self._stream
        reconnects = nc.stats["reconnects"]
        info = await api.call(f"STREAM.INFO.{stream}", stream=stream)
        created = StreamSettings.from_info(info).created
        target: int | None = None
        if self._created is None:
            self._created = created
            # Asked of the stream leader: at least every write acknowledged before now.
            target = int(info["state"]["last_seq"])
        elif created != self._created:
            raise StreamNotFoundError(stream)  # deleted and created again: a new history
        start = self._received_seq + 1
        config: dict[str, Any] = {
            "filter_subject": self._prefix + ">",
            "ack_policy": "none",
            "mem_storage": True,
            "num_replicas": 1,
            # The server removes it if we vanish; close() deletes it.
            "inactive_threshold": 300 * NS_PER_SECOND,
        }
        if start > 1:
            config.update(deliver_policy="by_start_sequence", opt_start_seq=start)
        body = {"stream_name": stream, "config": config}
        consumer = await api.call(f"CONSUMER.CREATE.{stream}", body, stream=stream)
        self.consumer = name = consumer["name"]
        try:
            self._pending = int(consumer["num_pending"])
            if target is not None:
                self.set_target(target)  # caught_up and lag are known together
            await self._pull(name, reconnects)
        finally:
            if not nc.is_closed:
                with contextlib.suppress(nats.errors.Error):
                    await nc.publish(f"{API}.CONSUMER.DELETE.{stream}.{name}", b"")

    async def _pull(self, name: str, reconnects: int) -> None:
        """Keep one pull request in flight on consumer *name* while the buffer has room.

        Raises _StalledError when the consumer must be replaced. Every message arriving is
        checked against the consumer's delivery sequence (its ack reply): one missing means
        a message was lost between the server and us, and the consumer is replaced.
        """
        nc, stream = self._nc, self._stream
        buffer = self._buffer
        wake = self._wake
        arrived = self._arrived
        budget: _Budget = _budget_of(nc, max(_REPLAY_BYTES_IN_FLIGHT, self._max_bytes))
        inbox = nc.new_inbox()
        next_subject = f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}"
        expires_ns = int(self._expires * NS_PER_SECOND)
        heartbeat_ns = int(self._heartbeat * NS_PER_SECOND)

        size = _FIRST_PULL_BYTES  # the next catch-up pull's max_bytes
        live: str | None = None  # the reply subject of the pull in flight
        live_received = 0  # what it brought
        live_batch = 0  # what it asked for: its messages ...
        live_size = 0  # ... and its max_bytes
        held = 0  # the budget bytes the pull in flight holds
        last_cseq = 0  # the consumer's delivery sequence of the last message
        arrivals = 0  # anything received (messages, statuses, heartbeats)
        sent = 0
        trouble: str | None = None
        fatal: BaseException | None = None

        def end_pull() -> None:
            nonlocal live, held
            live = None
            if held:
                budget.release(held)
                held = 0
            wake.set()

        def fail(reason: str) -> None:
            nonlocal trouble
            if trouble is None:
                trouble = reason
            wake.set()

        async def on_msg(msg: Msg) -> None:
            nonlocal last_cseq, arrivals, live_received, size, fatal
            reply = msg.reply
            if reply:  # a stored message: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...
                if trouble is not None:
                    return
                tokens = reply.split(".")
                if len(tokens) == 9:
                    seq, cseq, pending = int(tokens[5]), int(tokens[6]), int(tokens[8])
                else:  # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>....
                    seq, cseq, pending = int(tokens[7]), int(tokens[8]), int(tokens[10])
                if cseq != last_cseq + 1:
                    fail(f"consumer sequence {cseq} after {last_cseq}: a message was lost")
                    return
                last_cseq = cseq
                arrivals += 1
                self._received += 1
                self._pending = pending
                self._idle = False
                if seq > self._received_seq:
                    data = msg.data
                    counted = len(data) + len(msg.subject) + len(reply) + _MSG_OVERHEAD
                    buffer.append((seq, msg.subject, data, counted))
                    self._buffered_bytes += counted
                    self._received_seq = seq
                    if len(buffer) > self.peak_buffered:
                        self.peak_buffered = len(buffer)
                    arrived.set()
                live_received += 1
                if live_received >= live_batch:
                    end_pull()  # its batch is complete (a "Batch Completed" may follow)
                return
            if msg.subject != live:
                return  # the end of a pull already known to have ended
            arrivals += 1
            headers = msg.headers or {}
            status = headers.get("Status")
            description = headers.get("Description")
            if status == "100":  # idle heartbeat: nothing more to deliver now
                last = headers.get(_LAST_CONSUMER_SEQ)
                if last is not None and int(last) > last_cseq:
                    fail(f"the consumer delivered up to {last}, we received {last_cseq}")
                    return
                self._pending = 0
                self._idle = True
                wake.set()
            elif status == "408" and description == _REQUEST_TIMEOUT:
                self._pending = 0
                self._idle = True
                size = _FIRST_PULL_BYTES  # a burst after a quiet time starts small again
                end_pull()
            elif status == "409" and description == _BATCH_COMPLETED:
                end_pull()
            elif status == "409" and description == _MAX_BYTES:
                if live_received == 0 and live_size >= self._max_bytes:
                    fatal = JetStreamError(
                        409, 0, f"{description}: a message is larger than {live_size} bytes"
                    )
                size = min(max(size, 2 * live_size), self._max_bytes)
                if not self._pending:
                    self._pending = 1  # a message is waiting (too large for a live pull)
                end_pull()
            else:  # 409 Consumer Deleted, 409 Leadership Change, 503 No Responders, ...
                fail(f"pull request answered with {status} {description}")

        # nats-py drops what passes a subscription's pending limits (a gap we would
        # detect): they sit well above what one pull and the buffer's room can bring.
        sub = await nc.subscribe(
            f"{inbox}.*",
            cb=on_msg,
            pending_msgs_limit=4 * (self._batch + 1),
            pending_bytes_limit=4 * self._max_bytes,
        )
        try:
            seen, quiet = arrivals, 0
            while True:
                if fatal is not None:
                    raise fatal
                if trouble is not None:
                    raise _StalledError(trouble)
                if nc.stats["reconnects"] != reconnects:
                    raise _StalledError("reconnected")
                if self._idle and not self.caught_up:
                    self._idle = False
                    await self._check_caught_up()
                    continue
                if live is None:
                    if len(buffer) >= self._batch or self._buffered_bytes >= self._max_bytes:
                        self._wants_room = True
                        wake.clear()
                        await wake.wait()
                        continue
                    pending = self._pending or 0
                    if pending > 0:
                        # Catching up: at most what the consumer has, so that the pull
                        # ends once it brought it (by count, or by bytes) and a grown
                        # max_bytes is never left waiting at the server.
                        want, batch = size, min(self._batch, pending)
                    else:
                        # Live: the pull waits at the server for new events; it holds
                        # only the minimum of the budget meanwhile.
                        want, batch = _MIN_PULL_BYTES, self._batch
                    await budget.acquire(want)
                    held = want
                    sent += 1
                    live, live_received = f"{inbox}.{sent}", 0
                    live_batch, live_size = batch, want
                    request = {
                        "batch": batch,
                        "max_bytes": want,
                        "expires": expires_ns,
                        "idle_heartbeat": heartbeat_ns,
                    }
                    try:
                        await nc.publish(next_subject, _json.dumps(request), reply=live)
                    except nats.errors.Error as exc:  # reconnecting, closed, ...
                        raise _StalledError(
                            f"pull request not sent ({type(exc).__name__})"
                        ) from exc
                    seen, quiet = arrivals, 0
                    continue
                wake.clear()
                try:
                    async with asyncio.timeout(self._heartbeat):
                        await wake.wait()
                except TimeoutError:
                    # Heartbeats come every interval while the pull waits. Two whole
                    # intervals without anything (two, not one: after the event loop was
                    # blocked, the timer may fire before the callback ran): the pull or
                    # the consumer is gone (or the pull ended silently, its bytes used up
                    # exactly).
                    quiet = quiet + 1 if arrivals == seen else 0
                    seen = arrivals
                    if quiet >= 2:
                        raise _StalledError("no message nor heartbeat") from None
        finally:
            self._wants_room = False
            try:
                if not nc.is_closed:
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()
                    if held and nc.is_connected:
                        # A pull cut short may still be bringing messages: its bytes count
                        # until the server has dropped our interest, which a ping shows.
                        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                            await nc.flush(max(1, int(self._api.request_timeout)))
            finally:
                if held:
                    budget.release(held)

    async def _check_caught_up(self) -> None:
        """The consumer has nothing more, yet the backlog's end was not reached: either
        the consumer trails the stream leader (wait), or the messages up to the end were
        deleted, or they are not events (another subject of the stream). Ask the leader
        for the first event after what was received; if there is none up to the target,
        the backlog is read."""
        target = self.target
        if target is None or self._received_seq >= target:
            return
        body = {"seq": self._received_seq + 1, "next_by_subj": self._prefix + ">"}
        found = await self._api.get_msg(self._stream, body)
        if found is None or found.seq > target:
            self.set_target(self._received_seq)


def subscribe_jetstream(
    store: JetStreamEventStore,
    after: int,
    filter: SubscriptionFilter | None,
    on_malformed: MalformedHandler | None = None,
) -> Subscription:
    """``JetStreamEventStore.subscribe``: see :class:`Subscription`."""
    after = _check_arguments(after, filter)
    return Subscription(_JetStreamFeed(store, after, on_malformed), after, filter)


# -- memory -----------------------------------------------------------------------------------

#: Log entries a memory subscription copies under the store's lock at a time.
_MEMORY_CHUNK = 256


def wake_waiter(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _MemoryFeed(_Feed):
    """The in-memory store's side of a subscription: its append log, read in chunks.

    Waiting registers ``(loop, future)`` in the store's ``_waiters``; the store's append
    (any thread) resolves every registered future with ``loop.call_soon_threadsafe``.
    """

    def __init__(
        self, store: InMemoryEventStore, after: int, on_malformed: MalformedHandler | None
    ) -> None:
        super().__init__(after, on_malformed)
        self._store = store
        self._chunk: deque[bytes] = deque()  # payloads of positions position+1, ...
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def pop(self) -> Event | None:
        chunk = self._chunk
        while True:
            if not chunk:
                store = self._store
                with store._lock:
                    log = store._log
                    if self.target is None:
                        self.set_target(len(log))
                    chunk.extend(
                        e.payload for e in log[self.position : self.position + _MEMORY_CHUNK]
                    )
                if not chunk:
                    return None
            payload = chunk.popleft()
            self.position += 1
            if not self.caught_up and self.target is not None and self.position >= self.target:
                self.caught_up = True
            try:
                event = _rules.decode_event(payload)
            except ValueError as exc:  # unreachable for events the store encoded itself
                self.skip_malformed(self.position, payload, exc)
                continue
            event.position = self.position
            return event

    async def wait(self) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (loop, future)
        store = self._store
        with store._lock:
            if len(store._log) > self.position:
                return
            store._waiters.add(waiter)
        self._waiter = waiter
        try:
            await future
        finally:
            self._waiter = None
            with store._lock:
                store._waiters.discard(waiter)

    async def close(self) -> None:
        self.abandon()

    def abandon(self) -> None:
        self.closed = True
        self._chunk.clear()
        waiter = self._waiter
        if waiter is not None:
            loop, future = waiter
            with contextlib.suppress(RuntimeError):  # its loop is closed
                loop.call_soon_threadsafe(wake_waiter, future)

    def lag(self) -> int | None:
        if self.target is None:
            return None
        return max(0, len(self._store._log) - self.position)


def subscribe_memory(
    store: InMemoryEventStore,
    after: int,
    filter: SubscriptionFilter | None,
    on_malformed: MalformedHandler | None = None,
) -> Subscription:
    """``InMemoryEventStore.subscribe``: see :class:`Subscription`."""
    after = _check_arguments(after, filter)
    return Subscription(_MemoryFeed(store, after, on_malformed), after, filter)
