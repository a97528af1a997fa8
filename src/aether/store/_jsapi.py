"""JetStream API requests made directly on a nats-py connection, retried until known.

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
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import nats.errors
from nats.aio.client import Client

from aether import _json
from aether.errors import (
    JetStreamError,
    JetStreamNotEnabledError,
    StoreUnavailableError,
    StreamNotFoundError,
)
from aether.store.config import JetStreamConfig

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
JETSTREAM_NOT_ENABLED = 10076
JETSTREAM_NOT_ENABLED_FOR_ACCOUNT = 10039


class TransientError(Exception):
    """An answer meaning "not now": 503 (JetStream not ready), 429 (too many requests),
    or "duplicate message id is in process" (an earlier copy is still being committed,
    so the outcome is unknown). The store also raises it for an incomplete batch."""

    def __init__(self, ambiguous: bool) -> None:
        super().__init__()
        self.ambiguous = ambiguous


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


class StoredMsg(NamedTuple):
    """A message read from a stream: its stream sequence, subject and payload.

    A named tuple, not a frozen dataclass: a replay builds one per message, and a tuple
    costs a third as much to build (a frozen dataclass sets each field through
    ``object.__setattr__``)."""

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

    async def until_known(
        self, attempt: Callable[[], Awaitable[T]], *, stream: str | None = None
    ) -> tuple[T, bool]:
        """Run *attempt* until it gets an answer. Returns (answer, ambiguous).

        ``ambiguous`` is True if an attempt timed out or met "duplicate message id is in
        process": an attempt may have been applied. Raises
        StoreUnavailableError once ``retry_deadline`` has passed since the first failure,
        or at once on a closed connection. With *stream*, "no responders" (nobody listens
        on the subject: a stream without a leader, or no stream at all) asks the server
        whether *stream* exists, and raises StreamNotFoundError at once if it does not:
        nothing can have been written, and waiting would not change that.
        """
        ambiguous = False
        deadline: float | None = None  # set at the first failure: the fast path pays nothing
        delay = 0.02
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
                # A publish the user's permissions forbid also goes unanswered (nats-py
                # reports the violation only to the connection's error callback).
                hint = "; or not permitted" if isinstance(failure, asyncio.TimeoutError) else ""
                raise StoreUnavailableError(
                    f"no answer from JetStream within {self.retry_deadline:g}s "
                    f"(last failure: {type(failure).__name__}{hint})"
                ) from failure
            if stream is not None and isinstance(failure, nats.errors.NoRespondersError):
                await self._raise_if_stream_missing(stream)
            self.retries += 1
            if isinstance(failure, asyncio.TimeoutError) or (
                isinstance(failure, TransientError) and failure.ambiguous
            ):
                ambiguous = True
            # Jittered exponential backoff, also after timeouts, so that an overloaded
            # server is not hit by every writer's retry at once.
            await backoff(min(delay, deadline - now))
            delay = min(delay * 2, 1.0)

    async def _raise_if_stream_missing(self, stream: str) -> None:
        # One attempt, no retry: if the answer is not a definite "not found" (a timeout,
        # no meta leader yet), the caller's own retry policy goes on.
        try:
            msg = await self.nc.request(
                f"{API}.STREAM.INFO.{stream}", b"", timeout=self.request_timeout
            )
        except (TimeoutError, nats.errors.Error):
            return
        error = _json.loads(msg.data).get("error")
        if error is not None and error.get("err_code") == STREAM_NOT_FOUND:
            raise StreamNotFoundError(stream)

    async def request(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
        *,
        stream: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """A request with the retry policy; returns (decoded JSON answer, ambiguous).

        *stream*: the stream the request is about, so that its absence is reported at
        once (see :meth:`until_known`).
        """

        async def attempt() -> dict[str, Any]:
            msg = await self.nc.request(
                subject, payload, timeout=self.request_timeout, headers=headers
            )
            return decode_answer(msg.data)

        return await self.until_known(attempt, stream=stream)

    async def call(
        self, api: str, body: dict[str, Any] | None = None, *, stream: str | None = None
    ) -> dict[str, Any]:
        """A JetStream API call (``$JS.API.<api>``) about *stream* (if any).

        Raises StreamNotFoundError if the stream does not exist, JetStreamError on any
        other error answer.
        """
        answer, _ = await self.request(
            f"{API}.{api}", b"" if body is None else _json.dumps(body), stream=stream
        )
        raise_for_error(answer, stream)
        return answer

    async def publish_batch(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]], *, stream: str
    ) -> tuple[dict[str, Any], bool]:
        """Publish *messages* ``(subject, payload, headers)`` of *stream* as one atomic batch
        (ADR-50: all stored or none), retried until the outcome is known, like
        :meth:`request`; returns (the commit's answer, ambiguous). One message is a plain
        publish request.

        The batch headers (``Nats-Batch-Id``, ``-Sequence``, ``-Commit``) are added here;
        a retry re-sends the whole batch under a fresh batch id. Non-final messages go
        without a reply subject (one round trip per batch), so when the server refuses
        one, the commit only says "batch incomplete" (nothing stored). Often that is a 429
        (too many batches in flight), worth another try, but it may be permanent (a
        stream limit): so the next attempt asks for a reply to every message, and the
        real answer decides, retried or returned.
        """
        if len(messages) == 1:
            subject, payload, headers = messages[0]
            return await self.request(subject, payload, headers, stream=stream)
        diagnose = False
        last_index = len(messages) - 1

        async def attempt() -> dict[str, Any]:
            nonlocal diagnose
            batch_id = uuid.uuid4().hex
            for index, (subject, payload, extra) in enumerate(messages):
                headers = {
                    **extra,
                    "Nats-Batch-Id": batch_id,
                    "Nats-Batch-Sequence": str(index + 1),
                }
                if index < last_index and not diagnose:
                    await self.nc.publish(subject, payload, headers=headers)
                    continue
                if index == last_index:
                    headers["Nats-Batch-Commit"] = "1"
                msg = await self.nc.request(
                    subject, payload, timeout=self.request_timeout, headers=headers
                )
                if index < last_index and not msg.data:
                    continue  # accepted: an empty reply
                answer = decode_answer(msg.data)  # "not now" answers raise: tried again
                error = answer.get("error")
                if error is not None and error.get("err_code") == BATCH_INCOMPLETE:
                    diagnose = True
                    raise TransientError(ambiguous=False)
                return answer
            raise AssertionError("unreachable: a batch has at least one message")

        return await self.until_known(attempt, stream=stream)

    async def get_msg(self, stream: str, body: dict[str, Any]) -> StoredMsg | None:
        """``STREAM.MSG.GET`` served by the stream leader (authoritative); None if absent.

        Raises StreamNotFoundError if the stream does not exist.
        """
        answer, _ = await self.request(
            f"{API}.STREAM.MSG.GET.{stream}", _json.dumps(body), stream=stream
        )
        error = answer.get("error")
        if error is not None and error.get("err_code") == NO_MESSAGE_FOUND:
            return None
        raise_for_error(answer, stream)
        message = answer["message"]
        return StoredMsg(
            message["seq"],
            message["subject"],
            base64.b64decode(message.get("data", "")),
            base64.b64decode(message.get("hdrs", "")),
        )

    async def last_msg(self, stream: str, subject: str) -> StoredMsg | None:
        return await self.get_msg(stream, {"last_by_subj": subject})


def decode_answer(data: bytes) -> dict[str, Any]:
    """Decode a JetStream answer; raise TransientError for the "not now" answers.

    "JetStream not enabled" is a 503 too, but a lasting one: JetStreamNotEnabledError.
    """
    answer: dict[str, Any] = _json.loads(data)
    error = answer.get("error")
    if error is not None:
        code, err_code = error.get("code"), error.get("err_code")
        if err_code in (JETSTREAM_NOT_ENABLED, JETSTREAM_NOT_ENABLED_FOR_ACCOUNT):
            raise JetStreamNotEnabledError(str(error.get("description")))
        if code in (503, 429) or err_code == DUPLICATE_IN_PROCESS:
            raise TransientError(ambiguous=err_code == DUPLICATE_IN_PROCESS)
    return answer


async def backoff(limit: float) -> None:
    """Sleep a jittered *limit* seconds (between half of it and all of it)."""
    await asyncio.sleep(random.uniform(limit / 2, limit))


def raise_for_error(answer: dict[str, Any], stream: str | None = None) -> None:
    """Raise the answer's error, if any: StreamNotFoundError for "stream not found" when
    the request was about *stream*, else JetStreamError."""
    error = answer.get("error")
    if error is not None:
        if stream is not None and error.get("err_code") == STREAM_NOT_FOUND:
            raise StreamNotFoundError(stream)
        raise JetStreamError(
            int(error.get("code", 0)), int(error.get("err_code", 0)), str(error.get("description"))
        )


async def require_jetstream(nc: Client, request_timeout: float) -> None:
    """Raise JetStreamNotEnabledError at once if the server (or account) has no JetStream.

    Nobody answers ``$JS.API.INFO`` on a server started without JetStream ("no
    responders"); an account without JetStream gets an error answer. Any other failure
    (a timeout, a reconnect) is left to the store's own retries.
    """
    try:
        msg = await nc.request(f"{API}.INFO", b"", timeout=request_timeout)
    except nats.errors.NoRespondersError:
        raise JetStreamNotEnabledError(
            "the NATS server has no JetStream (start nats-server with -js)"
        ) from None
    except (TimeoutError, nats.errors.Error):
        return
    with contextlib.suppress(TransientError):
        decode_answer(msg.data)  # raises JetStreamNotEnabledError for such an account


#: nats-server accepts atomic batch publishes (ADR-50) from this version on.
ATOMIC_PUBLISH_SINCE = (2, 12)


def atomic_publish_supported(nc: Client) -> bool:
    """Whether the server *nc* is connected to accepts atomic batch publishes."""
    version = nc.connected_server_version
    return (version.major, version.minor) >= ATOMIC_PUBLISH_SINCE


def api_for(nc: Client, config: JetStreamConfig) -> JsApi:
    """Requests with *config*'s request timeout and retry deadline."""
    return JsApi(
        nc,
        request_timeout=config.request_timeout.total_seconds(),
        retry_deadline=config.retry_deadline.total_seconds(),
    )
