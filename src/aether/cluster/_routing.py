"""Routing a request to the node that owns an actor, and the shared view of the placement.

The placement lives in a JetStream KV bucket, ``aether_shards_<group>``: the key
``assignment`` holds the current :class:`~aether.cluster._placement.Assignment` (written
by the leader only, each write revision-checked), ``node.<node_id>`` each node's record
(see :mod:`aether.cluster._manager`). Every node serves requests on its own core NATS
subject, ``aether.shards.<group>.node.<node_id>``.

A request is ``<2-byte big-endian length><actor id, UTF-8><payload>``; the reply carries
the header ``Aether-Shard-Status``: ``ok`` (the body is the handler's answer), ``not-owner``
(the handler did not run) or ``error`` (the handler raised; the body is its type and
message). ``Aether-Shard-Version`` is the assignment version the replying node has applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import time
from datetime import timedelta
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from aether._tasks import stop as stop_tasks
from aether.cluster._placement import Assignment
from aether.cluster._shards import ShardManager
from aether.errors import AetherError

__all__ = [
    "ClusterConfigError",
    "ClusterError",
    "HandlerError",
    "NotOwnerError",
    "RequestTimeoutError",
    "RoutingError",
    "ShardRouter",
]

_log = logging.getLogger("aether.cluster")

ASSIGNMENT_KEY = "assignment"
NODE_KEY_PREFIX = "node."
STATUS = "Aether-Shard-Status"
VERSION = "Aether-Shard-Version"
OK, NOT_OWNER, ERROR = "ok", "not-owner", "error"

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LENGTH = struct.Struct(">H")


# -- errors ------------------------------------------------------------------------------


class ClusterError(AetherError):
    """Base class of the errors :mod:`aether.cluster`'s manager and router raise."""


class ClusterConfigError(ClusterError, ValueError):
    """A setting no cluster can run with (a bad node id or group), or one that disagrees
    with the cluster's stored state (another ``num_shards``)."""


class RoutingError(ClusterError):
    """A request could not be answered by the actor's owner. See the subclasses."""


class NotOwnerError(RoutingError):
    """No node accepted the request before the deadline: the actor's shard had no owner,
    its owner did not answer (no responders) or answered "not owner" every time. The
    handler never ran, so sending the request again is safe."""

    def __init__(self, actor_id: str, message: str) -> None:
        super().__init__(message)
        self.actor_id = actor_id


class RequestTimeoutError(RoutingError, TimeoutError):
    """The owner took the request but sent no answer before the deadline. The outcome is
    unknown: its handler may have run, fully or in part. Send it again only if the
    handler is idempotent (for example, it recognises a command id it has applied)."""

    def __init__(self, actor_id: str, node: str, message: str) -> None:
        super().__init__(message)
        self.actor_id = actor_id
        self.node = node


class HandlerError(RoutingError):
    """The owner's handler raised; ``error_type`` and the message say what. Not retried:
    the handler may have had effects."""

    def __init__(self, actor_id: str, node: str, error_type: str, message: str) -> None:
        super().__init__(f"the handler on {node!r} for {actor_id!r} raised {error_type}: {message}")
        self.actor_id = actor_id
        self.node = node
        self.error_type = error_type


# -- names and wire form -------------------------------------------------------------------


def check_name(value: object, what: str) -> str:
    """*value* if it is a valid node id or group (1-64 of ``A-Z a-z 0-9 _ -``)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ClusterConfigError(
            f"{what} must be 1 to 64 letters, digits, '_' or '-', got {value!r}"
        )
    return value


def seconds(value: timedelta | float, what: str) -> float:
    """A positive duration in seconds from a timedelta or a number of seconds."""
    result = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not result > 0:
        raise ClusterConfigError(f"{what} must be positive, got {value!r}")
    return result


def bucket_name(group: str) -> str:
    return f"aether_shards_{group}"


def node_subject(group: str, node_id: str) -> str:
    return f"aether.shards.{group}.node.{node_id}"


def encode_request(actor_id: str, payload: bytes) -> bytes:
    actor = actor_id.encode("utf-8")
    if len(actor) > 0xFFFF:
        raise ValueError("actor id longer than 65535 bytes")
    return _LENGTH.pack(len(actor)) + actor + payload


def decode_request(data: bytes) -> tuple[str, bytes]:
    """The actor id and payload of a request. Raises ValueError for a malformed one."""
    if len(data) < _LENGTH.size:
        raise ValueError("request too short")
    (length,) = _LENGTH.unpack_from(data)
    end = _LENGTH.size + length
    if len(data) < end:
        raise ValueError("request shorter than its actor id")
    return data[_LENGTH.size : end].decode("utf-8"), data[end:]


async def open_bucket(
    nc: Client, group: str, *, replicas: int, request_timeout: float, create: bool = True
) -> KeyValue:
    """The group's KV bucket, created (history 1, file storage, *replicas*) if missing."""
    js = nc.jetstream(timeout=request_timeout)
    name = bucket_name(group)
    for _ in range(5):
        try:
            return await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            if not create:
                raise
        try:
            config = KeyValueConfig(
                bucket=name,
                history=1,
                replicas=replicas,
                storage=StorageType.FILE,
                description="aether shard placement (aether.cluster.ClusterManager)",
            )
            return await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            continue  # created meanwhile by another node, maybe with other settings: bind it
    return await js.key_value(name)


def decode_assignment(data: bytes, *, warn: bool = True) -> Assignment | None:
    try:
        return Assignment.from_json(data)
    except ValueError as exc:
        if warn:
            _log.warning("ignoring a malformed shard assignment: %s", exc)
        return None


class AssignmentView:
    """The newest assignment this process has seen (versions only go up, until a reset:
    a new incarnation of the bucket), and a way to wait for a newer one. Fed by a KV
    watch, by reads, and by the leader's own writes."""

    def __init__(self) -> None:
        self.latest: Assignment | None = None
        self.revision = 0
        self._changed = asyncio.Event()
        self._malformed = 0  # the revision of the last malformed one seen (warned once)
        self._generation = 0  # +1 at each reset (a new incarnation of the bucket)

    @property
    def version(self) -> int:
        return 0 if self.latest is None else self.latest.version

    def offer(self, assignment: Assignment, revision: int) -> bool:
        """Take *assignment* if it is newer than what the view holds."""
        if self.latest is not None and assignment.version <= self.latest.version:
            if assignment.version == self.latest.version and revision > self.revision:
                self.revision = revision
            return False
        self.latest, self.revision = assignment, revision
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def reset(self) -> None:
        """Forget the assignment held: the bucket was recreated, and versions are only
        comparable within one incarnation of it (the next one offered is taken)."""
        self.latest, self.revision = None, 0
        self._generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_newer(self, version: int, within: float) -> bool:
        """Wait up to *within* seconds for a version above *version* (or a reset);
        whether one came."""
        generation = self._generation
        while self.version <= version and self._generation == generation:
            changed = self._changed
            try:
                async with asyncio.timeout(within):
                    await changed.wait()
            except TimeoutError:
                break
        return self.version > version or self._generation != generation

    async def refresh(self, kv: KeyValue) -> None:
        """Read the stored assignment once (errors are left to the next read)."""
        try:
            entry = await kv.get(ASSIGNMENT_KEY)
        except nats.js.errors.KeyNotFoundError:
            return
        if entry.value:
            self._take(entry.value, entry.revision or 0)

    def _take(self, data: bytes, revision: int) -> None:
        assignment = decode_assignment(data, warn=revision != self._malformed)
        if assignment is None:
            self._malformed = revision
        else:
            self.offer(assignment, revision)

    async def follow(self, kv: KeyValue, poll_interval: float) -> None:
        """Keep the view current until cancelled: a KV watch, and a read every
        *poll_interval* seconds in case the watch falls behind."""
        watcher: Any = None
        try:
            while True:
                try:
                    if watcher is None:
                        watcher = await kv.watch(ASSIGNMENT_KEY)
                    try:
                        async with asyncio.timeout(poll_interval):
                            entry = await watcher.updates(timeout=None)
                    except TimeoutError:
                        await self.refresh(kv)
                        continue
                    if entry is not None and entry.value:
                        self._take(entry.value, entry.revision or 0)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # connection trouble: read again after a pause
                    _log.debug("assignment watch: %r", exc)
                    if watcher is not None:
                        with contextlib.suppress(Exception):
                            await watcher.stop()
                    watcher = None
                    await asyncio.sleep(poll_interval)
        finally:
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()


# -- the router ----------------------------------------------------------------------------


class ShardRouter:
    """Sends requests to the node that owns an actor, without owning shards itself.

    For clients of a sharded service (a web front end, a CLI): it follows the placement
    that the group's :class:`~aether.cluster.ClusterManager` nodes keep in JetStream KV.
    A :class:`~aether.cluster.ClusterManager` routes the same way through its own
    :meth:`~aether.cluster.ClusterManager.request`. Use it as an async context manager::

        async with ShardRouter(nc, group="accounts") as router:
            reply = await router.request("acct-42", b"...")

    Args:
        nc: a connected client (the caller's; it is not closed).
        group: the cluster's group (the managers' ``group``).
        poll_interval: seconds between reads of the stored placement, besides the watch.

    Raises:
        ClusterConfigError: for a bad group name.
    """

    def __init__(
        self, nc: Client, *, group: str = "aether", poll_interval: timedelta | float = 1.0
    ) -> None:
        self._nc = nc
        self._group = check_name(group, "group")
        self._poll = seconds(poll_interval, "poll_interval")
        self._view = AssignmentView()
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ShardRouter:
        """Bind the group's bucket (waiting for it while no manager has created it yet:
        bound it with :func:`asyncio.timeout`) and start following the placement."""
        while self._kv is None:
            try:
                self._kv = await open_bucket(
                    self._nc, self._group, replicas=1, request_timeout=2.0, create=False
                )
            except (nats.js.errors.BucketNotFoundError, TimeoutError):
                await asyncio.sleep(self._poll)
        with contextlib.suppress(TimeoutError, nats.errors.NoRespondersError):
            await self._view.refresh(self._kv)  # else the follower reads it
        self._task = asyncio.create_task(self._view.follow(self._kv, self._poll))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await stop_tasks([task])

    @property
    def assignment_version(self) -> int:
        """The version of the newest placement seen (0 before any)."""
        return self._view.version

    @property
    def assignment(self) -> Assignment | None:
        """The newest placement seen (``None`` before any is stored)."""
        return self._view.latest

    async def wait_for_change(self) -> Assignment:
        """Wait for a placement newer than the one seen now, and return it. Bound it with
        :func:`asyncio.timeout`."""
        version = self._view.version
        while not await self._view.wait_newer(version, 3600.0):
            pass
        assert self._view.latest is not None
        return self._view.latest

    def owner_of(self, actor_id: str) -> str | None:
        """The node the newest placement seen gives *actor_id*'s shard to; ``None`` while
        the shard has no owner (being handed over) or before any placement is stored."""
        return owner_in(self._view.latest, actor_id)

    # One deadline across retries, which also bounds each NATS request: ASYNC109 is moot.
    async def request(
        self,
        actor_id: str,
        payload: bytes,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> bytes:
        """Send *payload* to *actor_id*'s owner and return its handler's answer.

        See :meth:`ClusterManager.request <aether.cluster.ClusterManager.request>`: the
        same rules, retries and errors.
        """
        return await route(self._nc, self._group, self._view, actor_id, payload, timeout)


_SHARDS: dict[int, ShardManager] = {}


def shard_of(num_shards: int, actor_id: str) -> int:
    manager = _SHARDS.get(num_shards)
    if manager is None:
        manager = _SHARDS[num_shards] = ShardManager(num_shards)
    return manager.shard_of(actor_id)


def owner_in(assignment: Assignment | None, actor_id: str) -> str | None:
    if assignment is None:
        return None
    return assignment.owners[shard_of(assignment.num_shards, actor_id)]


async def route(
    nc: Client,
    group: str,
    view: AssignmentView,
    actor_id: str,
    payload: bytes,
    deadline_after: float,
) -> bytes:
    """The request loop shared by ClusterManager.request and ShardRouter.request."""
    if not isinstance(actor_id, str) or not actor_id:
        raise ValueError(f"actor_id must be a non-empty str, got {actor_id!r}")
    data = encode_request(actor_id, payload)
    timeout = deadline_after
    deadline = time.monotonic() + timeout
    backoff = 0.01
    last = "no placement stored yet"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotOwnerError(
                actor_id, f"no owner took the request for {actor_id!r} within {timeout}s ({last})"
            )
        seen = view.version
        owner = owner_in(view.latest, actor_id)
        if owner is None:
            if view.latest is not None:
                last = "its shard has no owner (being handed over)"
            await view.wait_newer(seen, min(remaining, 0.5))
            continue
        try:
            reply = await nc.request(node_subject(group, owner), data, timeout=remaining)
        except nats.errors.NoRespondersError:
            last = f"{owner!r} is not listening"
        except nats.errors.TimeoutError as exc:
            raise RequestTimeoutError(
                actor_id,
                owner,
                f"{owner!r} did not answer the request for {actor_id!r} within {timeout}s "
                "(its outcome is unknown)",
            ) from exc
        else:
            headers = reply.headers or {}
            status = headers.get(STATUS)
            if status == OK:
                return bytes(reply.data)
            if status == ERROR:
                error_type, _, message = reply.data.decode("utf-8", "replace").partition(": ")
                raise HandlerError(actor_id, owner, error_type, message)
            last = f"{owner!r} answered {status or 'without a status'}"
        # Not taken: wait for a newer placement, or a little while (the owner may be
        # about to take the shard under the version this process has already seen).
        await view.wait_newer(seen, min(max(deadline - time.monotonic(), 0), backoff))
        backoff = min(backoff * 2, 0.25)
