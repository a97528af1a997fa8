"""Which nodes are alive: heartbeats on a core NATS subject.

Protocol (one subject per group, ``aether.cluster.<group>.discovery``; every message a
small JSON object ``{"v": 1, "op": ..., "node": ..., "inc": ...}``):

- ``join``: sent once on entering. Every running member answers with a heartbeat at
  once, so a new node learns the membership in one round trip instead of one
  ``heartbeat_interval``.
- ``hb``: sent every ``heartbeat_interval``. A receiver records the sender with the
  time of receipt on its own monotonic clock (:func:`time.monotonic`, never the wall
  clock, which can jump).
- ``leave``: sent on a clean exit; receivers drop the sender at once.

A member not heard from for ``failure_timeout`` is dropped: a sweep timer wakes at the
earliest such deadline, so a node that stops heartbeating (crash, SIGKILL, partition,
a stalled event loop) leaves every view within ``failure_timeout`` of its last
heartbeat's arrival (plus the event loop's scheduling delay).

``inc`` is a random incarnation token drawn on each entry: a ``leave`` only removes the
incarnation that sent it, so a node that restarts under the same id is not dropped by
its predecessor's late ``leave``. Core NATS delivers one connection's messages to a
subscriber in the order they were published (NATS protocol ordering guarantee), so a
node's last heartbeat never arrives after its ``leave``.

This is a failure *detector*, not a consensus: views are eventually consistent, two
nodes may briefly disagree, and a node cut off from NATS sees every peer leave while
the peers see it leave. Anything that must be exclusive (a leader, a shard owner) is
decided by :class:`~aether.cluster.LeaderElection` on JetStream, not by membership.
Two processes must not share a ``node_id``: messages from one's own id are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from types import TracebackType
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from aether._tasks import stop as stop_tasks

__all__ = ["NodeDiscovery"]

_log = logging.getLogger(__name__)

#: Subject prefix; the group is the next token.
SUBJECT_PREFIX = "aether.cluster"
_VERSION = 1
_FORBIDDEN_IN_TOKEN = frozenset(" \t\r\n.*>")


def check_token(kind: str, value: str) -> None:
    """Raise ValueError unless *value* is a non-empty NATS subject token."""
    if not isinstance(value, str) or not value or _FORBIDDEN_IN_TOKEN & set(value):
        raise ValueError(
            f"{kind} must be a non-empty string without spaces, '.', '*' or '>', got {value!r}"
        )


class NodeDiscovery:
    """Membership of a group of nodes, kept by heartbeats on core NATS.

    Use it as an async context manager: entering subscribes, announces the node and
    starts heartbeating; leaving announces the departure (so other nodes drop this one
    at once), stops the heartbeats and unsubscribes. It does not own *nc*: close the
    connection yourself.

    Membership changes can be followed in two ways (both see every change, in order):

    - ``on_change``: a plain function called with the new :attr:`members` each time the
      set changes (a node joins, leaves or times out), from the event loop, before any
      :meth:`wait_for_change` waiter resumes. It must not block; an exception it raises
      is logged and ignored.
    - ``await wait_for_change(known)``: returns the current members as soon as they
      differ from *known* (the set the caller last acted on), so no change between two
      calls is missed.

    Args:
        nc: a connected nats-py client (core NATS is enough; no JetStream needed).
        node_id: this node's id, unique in the group, a NATS subject token (no spaces,
            ``.``, ``*`` or ``>``). Always a member of its own view.
        group: name of the group (a subject token); groups do not see each other.
        heartbeat_interval: time between heartbeats.
        failure_timeout: a node not heard from for this long is dropped; must be longer
            than ``heartbeat_interval`` (several intervals, so one lost or late
            heartbeat does not drop a live node).
        on_change: called with the new members on every change (see above).

    Raises:
        ValueError: (constructor) bad ``node_id`` or ``group``, a non-positive interval,
            or ``failure_timeout <= heartbeat_interval``.
    """

    def __init__(
        self,
        nc: Client,
        node_id: str,
        *,
        group: str = "aether",
        heartbeat_interval: timedelta = timedelta(seconds=1),
        failure_timeout: timedelta = timedelta(seconds=5),
        on_change: Callable[[frozenset[str]], object] | None = None,
    ) -> None:
        check_token("node_id", node_id)
        check_token("group", group)
        interval = heartbeat_interval.total_seconds()
        timeout = failure_timeout.total_seconds()
        if interval <= 0:
            raise ValueError(f"heartbeat_interval must be positive, got {heartbeat_interval}")
        if timeout <= interval:
            raise ValueError(
                f"failure_timeout ({failure_timeout}) must be longer than "
                f"heartbeat_interval ({heartbeat_interval})"
            )
        self._nc = nc
        self._node_id = node_id
        self._group = group
        self._subject = f"{SUBJECT_PREFIX}.{group}.discovery"
        self._interval = interval
        self._timeout = timeout
        self._on_change = on_change
        self._incarnation = ""
        # node id -> (incarnation, monotonic time of its last message)
        self._peers: dict[str, tuple[str, float]] = {}
        self._members = frozenset([node_id])
        self._changed = asyncio.Event()
        self._running = False
        self._closed = False
        self._sub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sweep_wake = asyncio.Event()

    # ------------------------------------------------------------------ properties

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._node_id

    @property
    def group(self) -> str:
        """The group's name."""
        return self._group

    @property
    def subject(self) -> str:
        """The core NATS subject the group's heartbeats travel on."""
        return self._subject

    @property
    def running(self) -> bool:
        """True between entering and leaving the context."""
        return self._running

    @property
    def members(self) -> frozenset[str]:
        """The live nodes as this node sees them, itself included.

        ``{node_id}`` alone before entering and after leaving.
        """
        return self._members

    # ------------------------------------------------------------------ notifications

    async def wait_for_change(self, known: Iterable[str] | None = None) -> frozenset[str]:
        """Wait until :attr:`members` differs from *known*, and return it.

        Args:
            known: the membership the caller last acted on; default: the members at the
                time of the call. Returns at once if the members already differ.

        Raises:
            RuntimeError: if the discovery is not running (not entered, or left; a
                waiter is woken with this error when the context exits).
        """
        baseline = self._members if known is None else frozenset(known)
        while True:
            if not self._running:
                raise RuntimeError("NodeDiscovery is not running")
            if self._members != baseline:
                return self._members
            self._changed.clear()
            await self._changed.wait()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> NodeDiscovery:
        if self._running or self._closed:
            raise RuntimeError("a NodeDiscovery can be entered once")
        self._incarnation = secrets.token_hex(8)
        self._sub = await self._nc.subscribe(self._subject, cb=self._on_message)
        # The subscription is registered on the server before anyone hears of us, so
        # the answers to our join reach us.
        await self._nc.flush()
        self._running = True
        await self._publish("join")
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name=f"discovery-hb-{self._node_id}"),
            asyncio.create_task(self._sweeps(), name=f"discovery-sweep-{self._node_id}"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Leave the group: stop heartbeating, announce ``leave``, unsubscribe.

        Idempotent. The ``leave`` is best effort (flushed with a short timeout): if it
        is lost, the others drop this node after ``failure_timeout``.
        """
        if self._closed:
            return
        self._closed = True
        was_running = self._running
        self._running = False
        await stop_tasks(self._tasks)  # again until each ends: a request may swallow one
        self._tasks = []
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if was_running:
            await self._publish("leave")
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=max(math.ceil(self._interval), 1))
        self._peers.clear()
        self._set_members(frozenset([self._node_id]), notify=False)
        self._changed.set()  # waiters see running == False and raise

    # ------------------------------------------------------------------ internals

    async def _publish(self, op: str) -> None:
        payload = json.dumps(
            {"v": _VERSION, "op": op, "node": self._node_id, "inc": self._incarnation},
            separators=(",", ":"),
        ).encode()
        try:
            await self._nc.publish(self._subject, payload)
        except Exception as exc:  # closed or draining connection: the next beat retries
            _log.debug("discovery %s: %s not sent: %r", self._node_id, op, exc)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._publish("hb")

    async def _sweeps(self) -> None:
        """Drop peers not heard from for failure_timeout, waking at the earliest deadline."""
        while True:
            now = time.monotonic()
            expired = [n for n, (_, seen) in self._peers.items() if now - seen >= self._timeout]
            for node in expired:
                _log.info("discovery %s: %s timed out", self._node_id, node)
                del self._peers[node]
            if expired:
                self._refresh()
            if self._peers:
                earliest = min(seen for _, seen in self._peers.values())
                delay = max(earliest + self._timeout - time.monotonic(), 0.0)
            else:
                delay = self._timeout
            self._sweep_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._sweep_wake.wait()

    async def _on_message(self, msg: Msg) -> None:
        try:
            data = json.loads(msg.data)
            op, node, inc = data["op"], data["node"], data["inc"]
            if not (isinstance(op, str) and isinstance(node, str) and isinstance(inc, str)):
                raise TypeError("op, node and inc must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            _log.warning("discovery %s: malformed message ignored: %r", self._node_id, exc)
            return
        if not self._running or node == self._node_id:
            return
        now = time.monotonic()
        if op in ("hb", "join"):
            known = node in self._peers
            self._peers[node] = (inc, now)
            if not known:
                self._refresh()
                self._sweep_wake.set()  # the sweep may be sleeping without any peer
            if op == "join":
                await self._publish("hb")
        elif op == "leave":
            current = self._peers.get(node)
            if current is not None and current[0] == inc:
                del self._peers[node]
                self._refresh()

    def _refresh(self) -> None:
        self._set_members(frozenset([self._node_id, *self._peers]), notify=True)

    def _set_members(self, members: frozenset[str], *, notify: bool) -> None:
        if members == self._members:
            return
        self._members = members
        if notify and self._on_change is not None:
            try:
                self._on_change(members)
            except Exception:
                _log.exception("discovery %s: on_change callback failed", self._node_id)
        self._changed.set()

    def __repr__(self) -> str:
        return (
            f"NodeDiscovery(node_id={self._node_id!r}, group={self._group!r}, "
            f"members={sorted(self._members)!r})"
        )
