"""Replaying one actor's subject through an ephemeral pull consumer, in bounded memory.

A replay (:meth:`Replayer.iter_subject`) creates an in-memory pull consumer with no acks
filtered to the subject, pulls its messages in batches, and deletes it. What makes this
more than a loop over ``CONSUMER.MSG.NEXT``:

- flow control by bytes, not only messages: every replay on one connection shares one
  byte budget (:class:`_Budget`), so the server's buffer for the client never passes
  its pending limit whatever the size of the events and however many replays run;
- resumption: a consumer that stalls or vanishes (leader change, inactivity) is
  replaced by one starting after the last delivered message, within the retry deadline;
- on a replicated stream, what a follower-hosted consumer had not applied yet is
  fetched from the leader, so a replay reflects every write acknowledged before it.

Requests themselves (and their retry policy) are :mod:`aether.store._jsapi`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from aether import _json
from aether.errors import JetStreamError, StoreUnavailableError
from aether.store._direct import DirectBatch, DirectGets
from aether.store._jsapi import API, NS_PER_SECOND, JsApi, StoredMsg, backoff

__all__ = ["Replayer"]

_log = logging.getLogger("aether.store")


class _StalledError(Exception):
    """A replay consumer stopped delivering: resume with a new one."""


class Replayer:
    """Replays of the subjects of streams on one connection, with *api*'s timeouts; each
    consumer resumption counts as a retry in ``api.retries``."""

    def __init__(self, api: JsApi) -> None:
        self.api = api
        self.nc = api.nc
        self.request_timeout = api.request_timeout
        self.retry_deadline = api.retry_deadline
        self.direct = DirectGets(api.nc)
        self._no_direct: set[str] = set()  # streams whose direct gets got no answer

    async def close(self) -> None:
        """Drop the direct gets' inbox subscription (a later replay makes a new one)."""
        await self.direct.close()

    async def iter_subject(
        self,
        stream: str,
        subject: str,
        *,
        start_seq: int = 1,
        batch: int = 500,
        replicated: bool = False,
        direct_batch: int = 0,
    ) -> AsyncGenerator[StoredMsg, None]:
        """:meth:`iter_batches`, one message at a time."""
        batches = self.iter_batches(
            stream,
            subject,
            start_seq=start_seq,
            batch=batch,
            replicated=replicated,
            direct_batch=direct_batch,
        )
        async with contextlib.aclosing(batches):
            async for messages in batches:
                for msg in messages:
                    yield msg

    async def iter_batches(
        self,
        stream: str,
        subject: str,
        *,
        start_seq: int = 1,
        batch: int = 500,
        replicated: bool = False,
        direct_batch: int = 0,
    ) -> AsyncGenerator[list[StoredMsg], None]:
        """Every message on *subject* from *start_seq* on (at least those stored when the
        call began), in stream order, in lists of what has arrived (never empty; at most
        two pulls' worth): a reader decoding a list in a loop pays no generator step per
        message.

        An ephemeral in-memory pull consumer with no acks streams the messages; two pull
        requests of at most *batch* messages and a bounded number of bytes are kept in
        flight so the server works while we decode, and at most that much is buffered
        (bounded memory). The bytes the pulls in flight may bring come from a budget
        shared by all the replays on the connection, so that the server's buffer for
        the client never passes its pending limit, whatever the size of the messages and
        however many replays run at once (see :func:`_replay_window`, :class:`_Budget`
        and :meth:`_drain`). If the consumer
        stalls or vanishes (leader change, a reader idle past the consumer's inactivity
        limit), a new one resumes after the last delivered message, within the deadline.

        On a *replicated* stream the consumer may be hosted by a follower that has not yet
        applied the newest acknowledged messages. The subject's last sequence is therefore
        also asked of the stream leader (concurrently with creating the consumer, so no
        extra round trip), and any message up to it that the consumer did not deliver is
        fetched from the leader: a replay reflects every write acknowledged before it began.

        With *direct_batch* > 0 (for a stream with ``allow_direct``), the first messages
        come from one batched direct get of that many (:mod:`aether.store._direct`), with
        no consumer: a subject with at most *direct_batch* messages from *start_seq*
        costs one request, and a consumer is created only for what is left after it. (A
        direct answer costs the client about twice as much per message as a consumer's
        delivery, for its extra headers, so it pays for short histories only: see
        ``JetStreamConfig.direct_batch_size``.) A direct get that gets no answer at all
        (e.g. not permitted) is not tried again on this stream. A direct answer is taken as
        complete only from the stream itself on a single replica; from a follower or a
        mirror (``mirror_direct``), or a "none" on a stream that may have mirrors, the
        leader's last sequence bounds it and the rest is fetched from the leader, as
        above.
        """
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # from the first stall without progress since
        next_seq = start_seq
        leader_last: asyncio.Task[StoredMsg | None] | None = None

        def ask_leader() -> asyncio.Task[StoredMsg | None]:
            task = asyncio.ensure_future(self.api.last_msg(stream, subject))
            # Retrieve its outcome even if the caller stops early (no "never retrieved").
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return task

        if replicated:
            leader_last = ask_leader()
        try:
            pending: int | None = None  # messages left from next_seq; None: not known
            if direct_batch > 0 and stream not in self._no_direct:
                answer = await self._direct_batch(stream, subject, next_seq, direct_batch)
                if answer is not None:  # else the consumer below does it all
                    if leader_last is None and answer.answered_by != stream:
                        leader_last = ask_leader()  # a mirror's, or an unattributed "none"
                    if answer.messages:
                        next_seq = answer.messages[-1].seq + 1
                        yield answer.messages
                    pending = answer.pending
            while pending != 0:
                consumer = await self._create_consumer(stream, subject, next_seq)
                if consumer is None:
                    break
                name, count = consumer
                resumed_at = next_seq
                try:
                    drained = self._drain(stream, name, count, batch)
                    async with contextlib.aclosing(drained):
                        async for messages in drained:
                            next_seq = messages[-1].seq + 1
                            yield messages
                    break
                except _StalledError as exc:
                    now = loop.time()
                    if deadline is None or next_seq != resumed_at:  # progress: new deadline
                        deadline = now + self.retry_deadline
                    elif now >= deadline:
                        raise StoreUnavailableError(
                            f"replay of {subject!r} stalled at sequence {next_seq}"
                        ) from exc
                    self.api.retries += 1
                    await backoff(0.05)
                finally:
                    await self._delete_consumer(stream, name)
            if leader_last is not None:
                last = await leader_last
                while last is not None and next_seq <= last.seq:
                    # Usually nothing: only what a lagging host had not applied yet.
                    fetched = await self.api.get_msg(
                        stream, {"seq": next_seq, "next_by_subj": subject}
                    )
                    if fetched is None or fetched.seq > last.seq:
                        break
                    next_seq = fetched.seq + 1
                    yield [fetched]
        finally:
            if leader_last is not None and not leader_last.done():
                leader_last.cancel()

    async def _direct_batch(
        self, stream: str, subject: str, start_seq: int, batch: int
    ) -> DirectBatch | None:
        """One batched direct get of at most *batch* messages and about one replay
        pull's bytes, reserved from the connection's replay budget like a pull's (the
        answer may pass its ``max_bytes`` by one message: twice that is reserved)."""
        size = self.nc.max_payload + _REPLAY_MSG_OVERHEAD
        budget = _budget_of(self.nc, max(_REPLAY_BYTES_IN_FLIGHT, 2 * size))
        await budget.acquire(2 * size)
        try:
            return await self.direct.batch(
                stream,
                subject,
                start_seq,
                batch=batch,
                max_bytes=self.nc.max_payload,
                wait=self.request_timeout,
            )
        except TimeoutError:
            # No answer at all: most likely a permission the user lacks (nats-server
            # drops the request silently). Do not pay that wait on every replay.
            _log.warning("no answer to a direct get on stream %r: replays use consumers", stream)
            self._no_direct.add(stream)
            return None
        finally:
            budget.release(2 * size)

    async def _create_consumer(
        self, stream: str, subject: str, start_seq: int
    ) -> tuple[str, int] | None:
        """Create a replay consumer: (its name, messages pending), or None if none are."""
        config: dict[str, Any] = {
            "filter_subject": subject,
            "ack_policy": "none",
            "mem_storage": True,
            "num_replicas": 1,
            # The server removes it if we vanish; a normal replay deletes it at the end.
            "inactive_threshold": 300 * NS_PER_SECOND,
        }
        if start_seq > 1:
            config.update(deliver_policy="by_start_sequence", opt_start_seq=start_seq)
        body = {"stream_name": stream, "config": config}
        info = await self.api.call(f"CONSUMER.CREATE.{stream}", body, stream=stream)
        if info["num_pending"] == 0:
            await self._delete_consumer(stream, info["name"])
            return None
        return info["name"], info["num_pending"]

    async def _drain(
        self, stream: str, name: str, pending: int, batch: int
    ) -> AsyncGenerator[list[StoredMsg], None]:
        """Pull *pending* messages from the consumer, yielding what has arrived whenever
        it would wait (non-empty lists). Raises _StalledError if none come; what it had
        not yielded then is delivered again by the next consumer.

        Each pull request (``no_wait``) asks for at most *batch* messages and at most
        ``max_bytes``, and at most two are in flight (see :func:`_replay_window`). Their
        ``max_bytes`` are reserved from the connection's :class:`_Budget`, shared by every
        replay on the connection: neither the server's buffer for this client nor our
        subscriptions ever hold more than that budget, whatever the size of the events
        and however many replays run at once. A new pull is sent only once one has ended;
        a replay with no pull in flight waits for budget (first come, first served), one
        with a pull in flight adds a second only if budget is free at once.

        A pull asks first for the least ``max_bytes`` that admits any message (small
        events fill its batch long before), doubled each time one of the replay's pulls
        is ended by it, up to the window's: a replay of small events holds little of the
        budget, one of large events soon pulls in large steps.

        The server hands a consumer's messages to its waiting pulls in turn, one message
        each, so a message cannot be told to belong to one pull. What can be told is when
        a pull ends: the server says so on the pull's own reply subject ("409 Batch
        Completed" once it brought its batch; "409 Message Size Exceeds MaxBytes" when the
        next message would pass its max_bytes, with the count it did not bring). So pulls
        are tracked by reply subject, and their messages in aggregate (``owed``: what the
        live pulls may still bring; when it reaches 0 every live pull has ended). A pull's
        reservation is released as soon as its end arrives (in the subscription's
        callback, whether or not the replay's reader is consuming: a replay held open
        never blocks the others), or once ``owed`` reaches 0, and whatever the replay
        still holds is released when it ends. The one silent end, a pull whose bytes run
        out exactly, leaves that pull counted as live: the replay goes on with the other
        one, and at worst stalls and resumes with a new consumer; its reservation goes
        when nothing has arrived for two ``request_timeout`` periods, so that even a
        replay held open unconsumed cannot keep it from the others.
        """
        nc = self.nc
        pulls, max_bytes = _replay_window(nc.max_payload)
        budget = _budget_of(nc, max(_REPLAY_BYTES_IN_FLIGHT, pulls * max_bytes))
        size = min(max_bytes, nc.max_payload + _REPLAY_MSG_OVERHEAD)  # the next pull's bytes
        buffer: deque[Msg] = deque()
        arrived = asyncio.Event()
        reserved: dict[str, int] = {}  # reply subject of each pull holding budget -> bytes

        async def on_msg(msg: Msg) -> None:
            buffer.append(msg)
            arrived.set()
            if not msg.reply:
                # A status (no idle heartbeats are asked for): the end of the pull on whose
                # reply subject it comes. Whatever that pull brought has arrived.
                held = reserved.pop(msg.subject, 0)
                if held:
                    budget.release(held)

        def release_all() -> None:
            if reserved:
                budget.release(sum(reserved.values()))
                reserved.clear()

        loop = asyncio.get_running_loop()
        watch: asyncio.TimerHandle | None = None
        seen = quiet = 0

        def check_quiet() -> None:
            # Every request_timeout while this replay holds budget. A no_wait pull on a
            # consumer with messages pending is served at once: if nothing arrived for two
            # whole periods (two, not one: after the event loop was blocked the timer may
            # fire before the reader has read what arrived), the pulls still holding
            # budget have ended silently.
            nonlocal watch, seen, quiet
            watch = None
            if not reserved:
                return
            delivered = sub.delivered
            quiet = quiet + 1 if delivered == seen else 0
            seen = delivered
            if quiet >= 2:
                release_all()
            else:
                watch = loop.call_later(self.request_timeout, check_quiet)

        next_subject = f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}"
        # The first pull asks for half a batch: the server serves pulls in turn, so pulls
        # of equal sizes would end together, and it would wait idle for the next ones.
        first_batch = (batch + 1) // 2
        # The reply subject of each pull in flight -> (its batch, its max_bytes).
        live: dict[str, tuple[int, int]] = {}
        owed = received = sent = 0
        finished = False  # every message came, or the server said there are no more
        inbox = nc.new_inbox()

        async def top_up(owed: int, left: int) -> int:
            # Pulls while fewer than *pulls* are live and the messages they owe do not
            # cover the *left* ones (the server would refuse a no_wait pull beyond that:
            # 408), and budget allows. Returns the messages the new pulls owe. (owed and
            # received stay fast locals of the generator: this runs once per pull, they
            # change per message.)
            nonlocal sent, watch, seen, quiet
            added = 0
            while len(live) < pulls and owed + added < left:
                if not live:
                    await budget.acquire(size)  # nothing else to do meanwhile
                elif not budget.try_acquire(size):
                    break  # go on with the pull in flight; try again when it ends
                n = first_batch if sent == 0 else batch
                sent += 1
                reply = f"{inbox}.{sent}"
                live[reply] = (n, size)
                reserved[reply] = size
                added += n
                body = {"batch": n, "max_bytes": size, "no_wait": True}
                await nc.publish(next_subject, _json.dumps(body), reply=reply)
            if watch is None and reserved:
                seen, quiet = sub.delivered, 0
                watch = loop.call_later(self.request_timeout, check_quiet)
            return added

        # The subscription's own limits (nats-py drops what passes them) sit well above
        # what the pulls in flight can bring.
        sub = await nc.subscribe(
            f"{inbox}.*",
            cb=on_msg,
            pending_msgs_limit=2 * pulls * (batch + 1),
            pending_bytes_limit=2 * pulls * max_bytes,
        )
        try:
            owed += await top_up(owed, pending - received)
            out: list[StoredMsg] = []
            while received < pending:
                if not buffer:
                    if out:  # hand over what arrived before waiting for more
                        yield out
                        out = []
                        continue
                    arrived.clear()
                    try:
                        # (asyncio.timeout, not wait_for: on Python 3.11 wait_for drops
                        # a cancellation that comes with the wait's own completion.)
                        async with asyncio.timeout(self.request_timeout):
                            await arrived.wait()
                    except TimeoutError as exc:
                        raise _StalledError from exc
                    continue
                msg = buffer.popleft()
                if msg.reply:  # "$JS.ACK...": a stored message
                    received += 1
                    owed -= 1
                    if owed == 0:  # every live pull brought all it asked for: all ended
                        for reply in live:
                            held = reserved.pop(reply, 0)
                            if held:
                                budget.release(held)
                        live.clear()
                        owed += await top_up(owed, pending - received)
                    out.append(StoredMsg(_ack_stream_seq(msg.reply), msg.subject, msg.data))
                    continue
                # A status message ending the pull whose reply subject it comes on.
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":  # no messages (left): nothing more is there
                    break
                description = headers.get("Description")
                if status != "408" and (status != "409" or description not in _PULL_ENDS):
                    # e.g. 409 Consumer Deleted, 409 Leadership Change: the consumer is gone.
                    raise _StalledError(f"pull request answered with {status} {description}")
                ended = live.pop(msg.subject, None)
                if ended is None:  # a pull already known to have ended
                    continue
                unfilled = headers.get(_PENDING_MSGS)
                owed -= ended[0] if unfilled is None else int(unfilled)
                if description == _REQUESTS_PENDING:
                    # Refused: the live pulls already cover every message left (some
                    # vanished since the consumer was created). Expect no more than that.
                    pending = received + owed
                elif description == _MAX_BYTES:
                    if ended[1] == max_bytes and int(headers.get(_PENDING_BYTES, 0)) >= max_bytes:
                        # Nothing delivered: the next message is larger than any pull may bring.
                        raise JetStreamError(
                            409, 0, f"{description}: a message is larger than {max_bytes} bytes"
                        )
                    size = min(2 * size, max_bytes)
                owed += await top_up(owed, pending - received)
            if out:
                yield out
            finished = True
        finally:
            if watch is not None:
                watch.cancel()
            try:
                if not nc.is_closed:
                    await sub.unsubscribe()
                    if reserved and not finished and nc.is_connected:
                        # Pulls cut short (the reader stopped early, the consumer stalled,
                        # an error) may still be bringing messages: their bytes count until
                        # the server has dropped our interest, which a ping's answer shows.
                        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                            await nc.flush(max(1, int(self.request_timeout)))
            finally:
                release_all()

    async def _delete_consumer(self, stream: str, name: str) -> None:
        # Fire and forget: the consumer also expires by inactive_threshold.
        if not self.nc.is_closed:
            await self.nc.publish(f"{API}.CONSUMER.DELETE.{stream}.{name}", b"")


# Replay flow control. nats-server cuts off a client whose outbound buffer passes its
# max_pending (64 MiB by default) as a "Slow Consumer", and nats-py drops the messages of a
# subscription holding more than its pending limits: a replay bounds the bytes its pull
# requests may bring, not only their messages, and all the replays on one connection share
# one budget for it (the server's buffer is per connection, not per replay). The budget is
# a quarter of the default max_pending (room for the connection's other traffic and for a
# reader slower than the network), or one pull of the largest message if that is more; a
# replay alone may keep two pulls in flight, of max_bytes max(8 MiB, largest message).
# With the default 1 MiB max_payload that is 16 MiB in all.
_REPLAY_BYTES_IN_FLIGHT = 16 * 1024 * 1024
# What a delivered message weighs besides its headers and data (together at most the
# server's max_payload): its subject and ack reply, which the server counts in max_bytes.
_REPLAY_MSG_OVERHEAD = 64 * 1024
# Status descriptions of a pull's end (nats-server consumer.go).
_MAX_BYTES = "Message Size Exceeds MaxBytes"
_REQUESTS_PENDING = "Requests Pending"  # 408: a no_wait pull beyond what is pending
_PULL_ENDS = frozenset({"Batch Completed", _MAX_BYTES})  # the 409s that end only the pull
_PENDING_MSGS = "Nats-Pending-Messages"
_PENDING_BYTES = "Nats-Pending-Bytes"


def _replay_window(max_payload: int) -> tuple[int, int]:
    """(pull requests in flight, largest max_bytes of each) of a replay, for a server's
    *max_payload*.

    A pull's max_bytes must admit one message of the largest size, else the server would
    end it with nothing delivered. A server allowing messages of more than half the
    budget (nats-server warns above an 8 MiB max_payload) gets one pull at a time, so
    what is in flight stays within max(budget, one message); the server itself keeps
    max_payload at most max_pending.
    """
    max_bytes = max(_REPLAY_BYTES_IN_FLIGHT // 2, max_payload + _REPLAY_MSG_OVERHEAD)
    return (2 if 2 * max_bytes <= _REPLAY_BYTES_IN_FLIGHT else 1), max_bytes


class _Budget:
    """An async byte semaphore: the bytes that the pull requests of every replay on one
    connection may still bring (the sum of the max_bytes of the pulls not known to have
    ended) stay within :attr:`capacity`.

    :meth:`acquire` waits until its bytes are free and takes them; waiters are served in
    the order they came (a request that does not fit yet also holds back the smaller ones
    behind it, so a large one is never starved by a stream of small ones).
    :meth:`try_acquire` takes its bytes only if that needs no wait and nobody is waiting.
    :meth:`release` gives bytes back and wakes, in order, the waiters that now fit. A
    waiter cancelled before its bytes were granted takes nothing (and lets those behind
    it go if they fit); one cancelled just after they were granted gives them back.
    Asks are at most the capacity; :meth:`grow` raises it. Not thread-safe: one event loop.
    """

    __slots__ = ("_waiters", "available", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.available = capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def try_acquire(self, n: int) -> bool:
        """Take *n* bytes if they are free and nobody waits; True if taken."""
        if self._waiters or n > self.available:
            return False
        self.available -= n
        return True

    async def acquire(self, n: int) -> None:
        """Take *n* bytes, waiting (first come, first served) until they are free."""
        if n > self.capacity:
            raise ValueError(f"{n} bytes asked of a budget of {self.capacity}")
        if self.try_acquire(n):
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (n, granted)
        self._waiters.append(waiter)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(n)  # granted, but the waiter will not use it
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._wake()  # those it held back may fit now
            raise

    def release(self, n: int) -> None:
        """Give back *n* bytes taken before."""
        self.available += n
        self._wake()

    def grow(self, capacity: int) -> None:
        """Raise the capacity to *capacity* (never lowers it)."""
        if capacity > self.capacity:
            self.available += capacity - self.capacity
            self.capacity = capacity
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            n, granted = waiters[0]
            if granted.done():  # cancelled meanwhile
                waiters.popleft()
                continue
            if n > self.available:
                return
            waiters.popleft()
            self.available -= n
            granted.set_result(None)


# The replay budget of each connection. It belongs to the connection (the server's
# buffer for a client is what it protects), and several stores (JsApi objects) may share
# one; nats-py's Client has no place for such state, so it is kept here, keyed by the
# client, weakly: a connection nothing else refers to goes away with its budget.
_BUDGETS: weakref.WeakKeyDictionary[Client, _Budget] = weakref.WeakKeyDictionary()


def _budget_of(nc: Client, capacity: int) -> _Budget:
    """The replay budget of *nc*, of at least *capacity* bytes."""
    budget = _BUDGETS.get(nc)
    if budget is None:
        budget = _BUDGETS[nc] = _Budget(capacity)
    else:
        budget.grow(capacity)
    return budget


def _ack_stream_seq(reply: str) -> int:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or the v2 form
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<x>
    # (Split only as far as the sequence: this runs once per replayed message.)
    if reply.count(".") == 8:
        return int(reply.split(".", 6)[5])
    return int(reply.split(".", 8)[7])
