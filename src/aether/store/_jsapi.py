"""The few JetStream API calls the store needs, made directly on a nats-py connection.

nats-py's JetStream context is general; these calls are narrow and fast (orjson, no
per-message objects beyond nats-py's own) and share one policy for unknown outcomes:
a request that times out, meets "no responders" (a stream without a leader) or a
reconnect is sent again, unchanged, until the server answers or ``retry_deadline``
passes, then :class:`~aether.errors.StoreUnavailableError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from aether import _json
from aether.errors import JetStreamError, StoreUnavailableError

API = "$JS.API"

# JetStream err_codes the store reacts to.
NO_MESSAGE_FOUND = 10037
DUPLICATE_IN_PROCESS = 10158
WRONG_LAST_SEQUENCE_IN_FLIGHT = 10164  # clustered: another write to the subject is in flight
BATCH_INCOMPLETE = 10176  # a batch message was refused (e.g. too many batches in flight)
STREAM_CREATE_FAILED = 10049  # e.g. a race with the deletion of the account's last stream
STREAM_NAME_IN_USE = 10058
STREAM_NOT_FOUND = 10059
WRONG_LAST_SEQUENCE = 10071
BATCH_DUPLICATE_MSG_ID = 10201


class TransientError(Exception):
    """An answer meaning "not now": 503 (JetStream not ready), 429 (too many requests),
    or "duplicate message id is in process" (an earlier copy is still being committed,
    so the outcome is unknown). The store also raises it for an incomplete batch."""

    def __init__(self, ambiguous: bool) -> None:
        super().__init__()
        self.ambiguous = ambiguous


class _StalledError(Exception):
    """A replay consumer stopped delivering: resume with a new one."""


# Failures after which the request's fate is unknown or it simply got no answer.
_RETRYABLE = (
    TransientError,
    asyncio.TimeoutError,  # nats.errors.TimeoutError derives from it
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
)
NS_PER_SECOND = 1_000_000_000
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredMsg:
    seq: int
    subject: str
    data: bytes
    #: the raw NATS header block (``NATS/1.0\r\nKey: value\r\n...``); only from get_msg
    headers: bytes = b""

    def header(self, name: str) -> str | None:
        """The value of header *name* (first occurrence, case-sensitive), or None."""
        prefix = f"{name}:".encode()
        for line in self.headers.split(b"\r\n")[1:]:
            if line.startswith(prefix):
                return line[len(prefix) :].strip().decode("utf-8", "replace")
        return None


class JsApi:
    """JetStream requests with the retry-until-known policy."""

    def __init__(self, nc: Client, *, request_timeout: float, retry_deadline: float) -> None:
        self.nc = nc
        self.request_timeout = request_timeout
        self.retry_deadline = retry_deadline
        self.retries = 0  # requests sent again after an unknown outcome

    async def until_known(self, attempt: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run *attempt* until it gets an answer. Returns (answer, ambiguous).

        ``ambiguous`` is True if an attempt timed out or met "duplicate message id is in
        process": an attempt may have been applied. Raises
        StoreUnavailableError once ``retry_deadline`` has passed since the first failure,
        or at once on a closed connection.
        """
        ambiguous = False
        deadline: float | None = None  # set at the first failure: the fast path pays nothing
        backoff = 0.02
        while True:
            if self.nc.is_closed:
                raise StoreUnavailableError("the NATS connection is closed")
            try:
                return await attempt(), ambiguous
            except _RETRYABLE as exc:
                failure: BaseException = exc
            except nats.errors.ConnectionClosedError as exc:
                raise StoreUnavailableError("the NATS connection is closed") from exc
            now = asyncio.get_running_loop().time()
            if deadline is None:
                deadline = now + self.retry_deadline
            elif now >= deadline:
                raise StoreUnavailableError(
                    f"no answer from JetStream within {self.retry_deadline:g}s "
                    f"(last failure: {type(failure).__name__})"
                ) from failure
            self.retries += 1
            if isinstance(failure, asyncio.TimeoutError) or (
                isinstance(failure, TransientError) and failure.ambiguous
            ):
                ambiguous = True
            # Jittered exponential backoff, also after timeouts, so that an overloaded
            # server is not hit by every writer's retry at once.
            await _backoff(min(backoff, deadline - now))
            backoff = min(backoff * 2, 1.0)

    async def request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], bool]:
        """A request with the retry policy; returns (decoded JSON answer, ambiguous)."""

        async def attempt() -> dict[str, Any]:
            msg = await self.nc.request(
                subject, payload, timeout=self.request_timeout, headers=headers
            )
            return decode_answer(msg.data)

        return await self.until_known(attempt)

    async def call(self, api: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A JetStream API call (``$JS.API.<api>``). Raises JetStreamError on an error."""
        answer, _ = await self.request(f"{API}.{api}", b"" if body is None else _json.dumps(body))
        raise_for_error(answer)
        return answer

    async def get_msg(self, stream: str, body: dict[str, Any]) -> StoredMsg | None:
        """``STREAM.MSG.GET`` served by the stream leader (authoritative); None if absent."""
        answer, _ = await self.request(f"{API}.STREAM.MSG.GET.{stream}", _json.dumps(body))
        error = answer.get("error")
        if error is not None and error.get("err_code") == NO_MESSAGE_FOUND:
            return None
        raise_for_error(answer)
        message = answer["message"]
        return StoredMsg(
            message["seq"],
            message["subject"],
            base64.b64decode(message.get("data", "")),
            base64.b64decode(message.get("hdrs", "")),
        )

    async def last_msg(self, stream: str, subject: str) -> StoredMsg | None:
        return await self.get_msg(stream, {"last_by_subj": subject})

    async def iter_subject(
        self,
        stream: str,
        subject: str,
        *,
        start_seq: int = 1,
        batch: int = 500,
        replicated: bool = False,
    ) -> AsyncGenerator[StoredMsg, None]:
        """Every message on *subject* from *start_seq* on (at least those stored when the
        call began).

        An ephemeral in-memory pull consumer with no acks streams the messages; two pull
        requests of *batch* messages are kept in flight so the server works while we
        decode, and at most two batches are buffered (bounded memory). If the consumer
        stalls or vanishes (leader change, a reader idle past the consumer's inactivity
        limit), a new one resumes after the last delivered message, within the deadline.

        On a *replicated* stream the consumer may be hosted by a follower that has not yet
        applied the newest acknowledged messages. The subject's last sequence is therefore
        also asked of the stream leader (concurrently with creating the consumer, so no
        extra round trip), and any message up to it that the consumer did not deliver is
        fetched from the leader: a replay reflects every write acknowledged before it began.
        """
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # from the first stall without progress since
        next_seq = start_seq
        leader_last: asyncio.Task[StoredMsg | None] | None = None
        if replicated:
            leader_last = asyncio.ensure_future(self.last_msg(stream, subject))
            # Retrieve its outcome even if the caller stops early (no "never retrieved").
            leader_last.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            while True:
                consumer = await self._create_consumer(stream, subject, next_seq)
                if consumer is None:
                    break
                name, pending = consumer
                resumed_at = next_seq
                try:
                    drained = self._drain(stream, name, pending, batch)
                    async with contextlib.aclosing(drained):
                        async for msg in drained:
                            next_seq = msg.seq + 1
                            yield msg
                    break
                except _StalledError as exc:
                    now = loop.time()
                    if deadline is None or next_seq != resumed_at:  # progress: new deadline
                        deadline = now + self.retry_deadline
                    elif now >= deadline:
                        raise StoreUnavailableError(
                            f"replay of {subject!r} stalled at sequence {next_seq}"
                        ) from exc
                    self.retries += 1
                    await _backoff(0.05)
                finally:
                    await self._delete_consumer(stream, name)
            if leader_last is not None:
                last = await leader_last
                while last is not None and next_seq <= last.seq:
                    # Usually nothing: only what a lagging host had not applied yet.
                    fetched = await self.get_msg(stream, {"seq": next_seq, "next_by_subj": subject})
                    if fetched is None or fetched.seq > last.seq:
                        break
                    next_seq = fetched.seq + 1
                    yield fetched
        finally:
            if leader_last is not None and not leader_last.done():
                leader_last.cancel()

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
        info = await self.call(f"CONSUMER.CREATE.{stream}", body)
        if info["num_pending"] == 0:
            await self._delete_consumer(stream, info["name"])
            return None
        return info["name"], info["num_pending"]

    async def _drain(
        self, stream: str, name: str, pending: int, batch: int
    ) -> AsyncGenerator[StoredMsg, None]:
        """Pull *pending* messages from the consumer. Raises _StalledError if none come."""
        buffer: deque[Msg] = deque()
        arrived = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            buffer.append(msg)
            arrived.set()

        next_subject = f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}"
        pull = _json.dumps({"batch": batch, "no_wait": True})
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=on_msg)
        try:
            requested = received = 0
            while requested < min(pending, 2 * batch):
                await self.nc.publish(next_subject, pull, reply=inbox)
                requested += batch
            while received < pending:
                if not buffer:
                    arrived.clear()
                    try:
                        await asyncio.wait_for(arrived.wait(), self.request_timeout)
                    except TimeoutError as exc:
                        raise _StalledError from exc
                    continue
                msg = buffer.popleft()
                if not msg.reply.startswith("$JS.ACK."):
                    # A status answer: 404/408 when nothing more is there (messages
                    # expired meanwhile); anything else means the consumer is gone.
                    status = msg.headers.get("Status") if msg.headers else None
                    if status in ("404", "408"):
                        return
                    raise _StalledError(f"pull request answered with status {status}")
                received += 1
                yield StoredMsg(_ack_stream_seq(msg.reply), msg.subject, msg.data)
                if requested - received < batch and requested < pending:
                    await self.nc.publish(next_subject, pull, reply=inbox)
                    requested += batch
        finally:
            if not self.nc.is_closed:
                await sub.unsubscribe()

    async def _delete_consumer(self, stream: str, name: str) -> None:
        # Fire and forget: the consumer also expires by inactive_threshold.
        if not self.nc.is_closed:
            await self.nc.publish(f"{API}.CONSUMER.DELETE.{stream}.{name}", b"")


def _ack_stream_seq(reply: str) -> int:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or the v2 form
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<x>
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


def decode_answer(data: bytes) -> dict[str, Any]:
    """Decode a JetStream answer; raise TransientError for the "not now" answers."""
    answer: dict[str, Any] = _json.loads(data)
    error = answer.get("error")
    if error is not None:
        code, err_code = error.get("code"), error.get("err_code")
        if code in (503, 429) or err_code == DUPLICATE_IN_PROCESS:
            raise TransientError(ambiguous=err_code == DUPLICATE_IN_PROCESS)
    return answer


async def _backoff(limit: float) -> None:
    await asyncio.sleep(random.uniform(limit / 2, limit))


def raise_for_error(answer: dict[str, Any]) -> None:
    error = answer.get("error")
    if error is not None:
        raise JetStreamError(
            int(error.get("code", 0)), int(error.get("err_code", 0)), str(error.get("description"))
        )
