"""Batched direct gets: up to a batch of a subject's messages in one request.

``$JS.API.DIRECT.GET.<stream>`` with ``{"seq", "next_by_subj", "batch", "max_bytes"}``
(ADR-31; nats-server >= 2.11, on streams with ``allow_direct``) answers with the
subject's messages from ``seq`` on, each carrying ``Nats-Sequence``, ``Nats-Subject``
and ``Nats-Num-Pending`` (the subject's messages after it), then a ``204 EOB`` status
with the ``Nats-Num-Pending`` left after the batch; ``404`` when there is none. No
consumer is created: loading a short history costs one round trip instead of creating,
pulling from and deleting a consumer.

What an answer proves depends on who gave it: every replica of the stream, and any
mirror with ``mirror_direct``, may answer, and a follower or a mirror may not have
applied the newest acknowledged messages. The answer names the stream that gave it
(``Nats-Stream``); the caller decides what else it needs (see
:meth:`aether.store._replay.Replayer.iter_subject`).

All requests on a connection share one wildcard inbox subscription, told apart by the
last token of the reply subject: a request adds no subscription of its own.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from aether import _json
from aether.store._jsapi import API, StoredMsg

__all__ = ["DirectBatch", "DirectGets"]

_SEQUENCE = "Nats-Sequence"
_SUBJECT = "Nats-Subject"
_STREAM = "Nats-Stream"
_NUM_PENDING = "Nats-Num-Pending"


@dataclass(slots=True)
class DirectBatch:
    """One answer: the messages, the subject's messages left after them (``pending``),
    and the stream that answered (the stream itself, or a mirror of it)."""

    messages: list[StoredMsg]
    pending: int
    answered_by: str


@dataclass(slots=True)
class _Waiter:
    messages: list[Msg] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class DirectGets:
    """Batched direct gets on one connection (one shared inbox subscription)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._sub: Subscription | None = None
        self._prefix = ""
        self._waiters: dict[str, _Waiter] = {}
        self._tokens = itertools.count()

    async def batch(
        self,
        stream: str,
        subject: str,
        start_seq: int,
        *,
        batch: int,
        max_bytes: int,
        wait: float,
    ) -> DirectBatch | None:
        """At most *batch* messages of *subject* from *start_seq* on, and about
        *max_bytes* (bytes; the server stops once they are reached, so an answer may pass
        them by one message, and always brings at least one).

        Returns None when there is no usable answer within *wait* seconds: no
        responders (a stream without ``allow_direct``, or none at all), a status other
        than an end of batch, a timeout. Nothing is retried here: the caller falls back
        to a consumer, whose replay has the retry policy and the precise errors.
        """
        if self._sub is None:
            self._prefix = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_msg)
        token = str(next(self._tokens))
        waiter = self._waiters[token] = _Waiter()
        try:
            body = {"seq": start_seq, "next_by_subj": subject, "batch": batch}
            if max_bytes > 0:
                body["max_bytes"] = max_bytes
            await self.nc.publish(
                f"{API}.DIRECT.GET.{stream}", _json.dumps(body), reply=f"{self._prefix}.{token}"
            )
            async with asyncio.timeout(wait):
                await waiter.done.wait()
        finally:
            del self._waiters[token]
        return _answer(waiter.messages)

    async def _on_msg(self, msg: Msg) -> None:
        waiter = self._waiters.get(msg.subject[len(self._prefix) + 1 :])
        if waiter is None:
            return  # the answer to a request given up on
        waiter.messages.append(msg)
        if msg.headers is not None and "Status" in msg.headers:
            waiter.done.set()

    async def close(self) -> None:
        """Drop the inbox subscription (pending requests then time out)."""
        if self._sub is not None and not self.nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None


def _answer(received: list[Msg]) -> DirectBatch | None:
    """The batch the messages of one answer hold, ending with its status; None unless
    that is an end of batch (204) or "no message" (404)."""
    *stored, end = received
    headers = end.headers or {}
    status = headers.get("Status")
    if status == "404":
        return DirectBatch([], 0, "") if not stored else None
    if status != "204":
        return None
    messages: list[StoredMsg] = []
    answered_by = ""
    try:
        for msg in stored:
            h = msg.headers or {}
            answered_by = h.get(_STREAM, "")
            messages.append(StoredMsg(int(h[_SEQUENCE]), h[_SUBJECT], msg.data))
        return DirectBatch(messages, int(headers.get(_NUM_PENDING, 0)), answered_by)
    except (KeyError, ValueError, TypeError):
        return None  # not an answer nats-server gives (a foreign responder's): not usable
