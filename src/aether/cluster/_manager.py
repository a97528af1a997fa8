"""ClusterManager: shards placed on live nodes, handed over without overlap, and routing.

Handoff protocol
================

State, in the JetStream KV bucket ``aether_shards_<group>`` (history 1):

- ``assignment``: the :class:`~aether.cluster._placement.Assignment` (version, owner of
  each shard, shards being released, the writer's election term). Only the leader of
  the group's :class:`~aether.cluster.LeaderElection` writes it, and every write is
  revision-checked (JetStream's expected-last-subject-sequence): a write based on
  anything but the latest version fails, so a deposed leader's late write is refused.
  A leader also writes nothing while the stored term is above its own, and nothing
  over a stored assignment it cannot build on (deleted, purged or unreadable: an
  operator's edit): a blind write could repeat a version a node already applied. It
  logs that once per cause and looks again backing off (up to 30 s); recovering is an
  operator's step (docs/howto/placement.md).
- ``node.<node_id>``: each node's record, ``{"state": "up", "applied": V, ...}``, which
  the node rewrites every ``min(heartbeat_interval, lease / 3)``, revision-checked.
  ``applied`` is its confirmation: it holds no shard that version ``V`` does not give
  it, and never takes one from an older version.

A node **holds** a shard only while (1) the latest version it applied gives it the
shard, and (2) its record lease is fresh: ``now < sent + lease`` on its own monotonic
clock, ``sent`` being when its last successful record write was sent. A node that
cannot reach NATS, or was paused past that, holds nothing when it runs again; it then
registers anew (a fresh record write, then a read of the assignment from the stream
leader) before it takes any shard.

A node that registers over a live record of *another* process with its node id (the id
started twice: a replacement started while the old process still runs) takes no shard
until that process's lease must have run out (``lease + lease / 4`` after it read the
record; the other process's renewal fails from then on, its revision being gone), and
reports ``applied`` 0 meanwhile (the other process, not it, may hold shards). Two live
processes with one id keep replacing each other's record and neither holds anything:
safe, and logged.

The leader moves a shard in two stored steps (:func:`~aether.cluster._placement.
next_assignment`): it **revokes** it (no owner; the old owner listed as releasing),
waits until the old owner is known not to hold it, and only then **grants** it to the
new owner. The old owner is known not to hold it when

- its record says ``applied >= `` the revoking version (it released the shard: it
  stopped taking requests for it, waited for its handlers in flight on it to end (those
  still running one lease later are cancelled, and it waits until they have unwound),
  and ran the ``lost`` notification first), or
- the leader **fenced** its record: a revision-checked write marking it fenced, made
  at once only when the record says ``"left"`` (the node's clean exit, written after it
  released everything) or ``"fenced"``; otherwise (a live record, or a record deleted,
  purged, unreadable or missing: an operator's edit says nothing about whether the node
  still runs) only once the record has stayed unchanged for ``lease + lease / 4`` of the
  leader's monotonic clock since the leader first saw it. That means the node's own
  lease has run out (its last renewal landed before what the leader saw); the revision
  check means it did not renew in between; and a fenced node (or one whose record is
  gone) must re-register and re-read the assignment, which by then revokes the shard.

Versions are only comparable within one **incarnation** of the bucket: deleted and
created again (an operator's edit, then a node entering), it starts over at version 1,
below what the nodes applied. A node records the bucket stream's identity (STREAM.INFO
``created`` of ``KV_aether_shards_<group>``) when it enters, and checks it each time it
registers (before and after reading the assignment) and before each leader write. On a
new identity it drops every shard it holds (``lost`` announced, handlers cancelled, as
on a lease expiry), forgets its view and applied version, and starts over: it reads the
assignment anew and takes the stored one whatever its version. A leader's term restarts
with it, so a view of the deleted bucket is never written into the new one. Deleting the
bucket erases the leases too: a node that recreates it may take shards within one lease
of the old holders' last renewal (the how-to says to stop the nodes first).

So the old owner's release always comes before the new owner's take, as each node
sees it. A node whose process dies holds nothing; its shards move once discovery drops
it (``failure_timeout``) and its record lease has run out (``lease + lease / 4`` after
its last renewal), whichever is later.

What a node does not control: a write a cancelled handler had already sent may still
land, and a handler running when its node's lease ran out (a paused process) runs on
until the node's event loop runs again and cancels it. Writes made through
:class:`~aether.store.JetStreamEventStore` are checked by the server against the
actor's expected version, so such a late write is refused (VersionConflictError)
instead of overwriting the new owner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from aether._tasks import stop as stop_tasks
from aether.cluster._discovery import NodeDiscovery
from aether.cluster._election import LeaderElection
from aether.cluster._placement import Assignment, Revocation, next_assignment, place
from aether.cluster._routing import (
    ASSIGNMENT_KEY,
    ERROR,
    NODE_KEY_PREFIX,
    NOT_OWNER,
    OK,
    STATUS,
    VERSION,
    AssignmentView,
    ClusterConfigError,
    ClusterError,
    HandlerError,
    NotOwnerError,
    RequestTimeoutError,
    RoutingError,
    ShardRouter,
    bucket_name,
    check_name,
    decode_request,
    node_subject,
    open_bucket,
    owner_in,
    route,
    seconds,
    shard_of,
)

__all__ = [
    "Assignment",
    "ClusterConfigError",
    "ClusterError",
    "ClusterManager",
    "Handler",
    "HandlerError",
    "NotOwnerError",
    "RequestTimeoutError",
    "Revocation",
    "RoutingError",
    "ShardRouter",
    "ShardsChanged",
]

_log = logging.getLogger("aether.cluster")

#: Failures that a retry may cure (a server or a stream leader being elected).
_TRANSIENT = (
    TimeoutError,  # nats.errors.TimeoutError too
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
)

#: The error answered for a request whose handler a release cancelled (HandlerError).
_CANCELLED = (
    b"HandlerCancelled: the actor's shard was handed over while the handler ran; "
    b"writes it had already sent may have landed"
)

#: ``async def handler(actor_id: str, payload: bytes) -> bytes``
Handler = Callable[[str, bytes], Awaitable[bytes]]


@dataclass(frozen=True)
class ShardsChanged:
    """This node gained or lost shards.

    Attributes:
        gained: shards this node takes (announced *before* it starts serving them).
        lost: shards this node no longer holds (announced *after* it stopped serving
            them and, for a revocation, after its handlers in flight on them ended:
            those still running one lease after the revocation are cancelled, and the
            announcement waits until they have finished unwinding). For an expiry the
            handlers are cancelled but not waited for.
        version: the assignment version that caused the change (for an expiry, the
            last version this node applied).
        at: :func:`time.monotonic` when the change took effect: for a gain, a moment
            before the node holds the shards; for a loss, the moment it stopped.
        expired: True when the shards were lost because this node's lease ran out or
            its record was fenced (it could not renew in time: NATS unreachable, the
            process paused), rather than revoked by the leader.
    """

    gained: frozenset[int]
    lost: frozenset[int]
    version: int
    at: float
    expired: bool = False


@dataclass
class _Record:
    """A node's record as the leader knows it."""

    revision: int  # 0: never written
    state: str  # "up", "left", "fenced", or "gone" (deleted, purged, unreadable, missing)
    applied: int
    seen: float  # the leader's monotonic time when it first saw this revision


#: Record states a node or a leader writes. "left": the node exited cleanly (it released
#: everything first); "fenced": a leader judged it unable to hold anything. Both let the
#: leader act at once. Anything else (a deleted, purged or unreadable record, or none) is
#: "gone": the node may be live and holding by its lease, so it is fenced only once the
#: record has stayed so for ``lease * 1.25`` of the leader's clock.
_STATES = frozenset({"up", "left", "fenced"})
_FINAL = frozenset({"left", "fenced"})


def _record_value(**fields: Any) -> bytes:
    return orjson.dumps(fields)


class ClusterManager:
    """One node of a sharded service: membership, leadership, shard placement, routing.

    Use it as an async context manager. Entering creates the group's KV bucket if
    needed, registers the node, joins :class:`~aether.cluster.NodeDiscovery` and the
    :class:`~aether.cluster.LeaderElection` of *group*, and starts serving requests; it
    returns without waiting for shards (see :meth:`wait_for_shards`). Leaving resigns the
    leadership, releases every shard (handlers in flight end first, ``lost`` is
    announced), marks the node's record ``"left"`` so its shards move at once, and
    leaves the group. The connection stays the caller's.

    Shards (``0 .. num_shards - 1``, :class:`~aether.cluster.ShardManager`) are placed on
    the live members by a consistent hash ring over their node ids
    (:func:`~aether.cluster._placement.place`): when a node joins or leaves only the
    shards that must move do. A shard is never held by two nodes at once as the nodes
    themselves see it (the protocol is in the module docs of ``aether.cluster._manager``).

    Learning about gained and lost shards: ``on_shards_changed`` (awaited: a ``gained``
    before requests for those shards are served, a ``lost`` before the leader is told the
    shards are released, so it can warm up or flush state) and :meth:`shard_changes`
    (an async iterator of the same :class:`ShardsChanged` events).

    Args:
        nc: a connected client on a JetStream-enabled server (2.11 or later, for the
            election's per-message TTLs).
        node_id: this node's id, unique in the group: 1 to 64 letters, digits, ``_``, ``-``.
        num_shards: the number of shards; the same on every node of the group for the
            life of the bucket (ClusterConfigError on entering otherwise).
        group: the cluster's name (same rules as *node_id*): the election group, the
            discovery group, the bucket ``aether_shards_<group>`` and the request
            subjects ``aether.shards.<group>.node.<node_id>``.
        lease: the election lease and this node's shard lease (timedelta or seconds).
            A node that cannot renew its record holds nothing past its lease; a dead
            node's shards move about ``lease * 1.25`` after its last renewal at the
            earliest.
        heartbeat_interval: discovery heartbeats, and the longest gap between record
            renewals (also at most ``lease / 3``).
        failure_timeout: a node not heard from for this long leaves the membership.
        replicas: replicas of the placement bucket and of the election's bucket when
            this node creates them (3 on a JetStream cluster).
        handler: ``async (actor_id, payload) -> bytes``, run for each request routed
            here while this node holds the actor's shard. Without one, the node still
            takes shards but answers every request "not owner". A handler still running
            one lease after its shard was revoked is cancelled (CancelledError at its
            current await; its request fails with HandlerError), and the release waits
            for it to unwind; so is one running when the lease runs out. A write it had
            already sent may still land: the event store's server-checked expected
            version turns a write that comes after the new owner's into a
            VersionConflictError, never a lost update.
        on_shards_changed: ``async (ShardsChanged) -> None``, awaited on each change.
        max_concurrent_requests: handlers running at once on this node.

    Raises:
        ClusterConfigError: (constructor) a bad node id or group, a non-positive
            duration or count; (on entering) the stored placement has another
            ``num_shards``.
    """

    def __init__(
        self,
        nc: Client,
        node_id: str,
        *,
        num_shards: int = 1024,
        group: str = "aether",
        lease: timedelta | float = timedelta(seconds=5),
        heartbeat_interval: timedelta | float = timedelta(seconds=1),
        failure_timeout: timedelta | float = timedelta(seconds=5),
        replicas: int = 1,
        handler: Handler | None = None,
        on_shards_changed: Callable[[ShardsChanged], Awaitable[None]] | None = None,
        max_concurrent_requests: int = 64,
    ) -> None:
        self._nc = nc
        self._node_id = check_name(node_id, "node_id")
        self._group = check_name(group, "group")
        if num_shards < 1 or max_concurrent_requests < 1 or replicas < 1:
            raise ClusterConfigError(
                "num_shards, replicas and max_concurrent_requests must be at least 1"
            )
        self._num_shards = num_shards
        self._lease = seconds(lease, "lease")
        self._heartbeat = seconds(heartbeat_interval, "heartbeat_interval")
        self._failure_timeout = seconds(failure_timeout, "failure_timeout")
        if self._failure_timeout <= self._heartbeat:
            raise ClusterConfigError("failure_timeout must be longer than heartbeat_interval")
        self._replicas = replicas
        self._handler = handler
        self._on_changed = on_shards_changed
        self._renew_every = min(self._heartbeat, self._lease / 3)
        self._fence_after = self._lease * 1.25
        self._timeout = max(min(self._lease / 2, 2.0), 0.2)
        self._semaphore = asyncio.Semaphore(max_concurrent_requests)

        self._kv: KeyValue | None = None
        self._view = AssignmentView()
        self._discovery: NodeDiscovery | None = None
        self._election: LeaderElection | None = None
        self._sub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._queues: list[asyncio.Queue[ShardsChanged | None]] = []

        # This node's holding (see the module docs).
        self._token = secrets.token_hex(8)
        self._registration = 0  # counts registrations: a record of ours has it
        self._seq = 0
        self._revision = 0  # our record's revision while registered
        self._registered = False
        self._ready = False  # registered and the assignment read since
        self._not_before = 0.0  # monotonic: no shard taken before (another process's lease)
        self._valid_until = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._incarnation = 0  # +1 at each lapse: work started before it is void
        self._owned: set[int] = set()
        self._applied = 0
        self._identity: str | None = None  # the bucket's incarnation the view comes from
        self._identities = 0  # +1 at each new incarnation of the bucket seen
        self._reapply = True
        self._inflight: dict[int, set[asyncio.Task[bytes]]] = {}  # shard -> handler tasks
        self._idle = asyncio.Condition()
        self._lock = asyncio.Lock()
        self._apply_wake = asyncio.Event()
        self._renew_wake = asyncio.Event()
        self._leader_wake = asyncio.Event()
        self._running = False
        self._closed = False
        self._refusal: str | None = None  # why the leader refuses to write, logged once
        self._refusal_backoff = 0.0
        self._refusal_until = 0.0
        self._refusals = 0  # the leader's refused writes (for tests)

    # -- properties ---------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._node_id

    @property
    def group(self) -> str:
        """The cluster's name."""
        return self._group

    @property
    def num_shards(self) -> int:
        """The number of shards."""
        return self._num_shards

    @property
    def members(self) -> frozenset[str]:
        """The live nodes as this node's discovery sees them (itself included)."""
        return self._discovery.members if self._discovery else frozenset([self._node_id])

    @property
    def is_leader(self) -> bool:
        """Whether this node leads the group now (it then writes the placement)."""
        return self._election is not None and self._election.is_leader

    @property
    def term(self) -> int:
        """The election term: this node's while it leads, else the last leader's seen."""
        return self._election.term if self._election is not None else 0

    @property
    def assignment(self) -> Assignment | None:
        """The newest placement this node has seen (not necessarily applied yet)."""
        return self._view.latest

    @property
    def assignment_version(self) -> int:
        """The version of the placement this node has applied (0 before any). Once the
        cluster is quiet every node reports the same version."""
        return self._applied

    @property
    def owned_shards(self) -> frozenset[int]:
        """The shards this node holds now (empty while its lease is not fresh)."""
        return frozenset(self._owned) if self._fresh() else frozenset()

    def shard_of(self, actor_id: str) -> int:
        """The shard of *actor_id* (:meth:`ShardManager.shard_of
        <aether.cluster.ShardManager.shard_of>` with this cluster's ``num_shards``)."""
        return shard_of(self._num_shards, actor_id)

    def owner_of(self, actor_id: str) -> str | None:
        """The node the newest placement seen gives *actor_id*'s shard to; ``None``
        while the shard has no owner (it is being handed over, or no node is live) and
        before any placement is stored. A hint for routing: only :meth:`owns`, on the
        owner itself, is authoritative."""
        return owner_in(self._view.latest, actor_id)

    def owns(self, actor_id: str) -> bool:
        """Whether this node holds *actor_id*'s shard at this instant: the placement it
        applied gives it the shard and its lease is fresh by its own clock."""
        return self._holds(self.shard_of(actor_id))

    def _fresh(self) -> bool:
        return self._registered and time.monotonic() < self._valid_until

    def _holds(self, shard: int) -> bool:
        return shard in self._owned and self._fresh()

    # -- notifications ------------------------------------------------------------------

    async def shard_changes(self) -> AsyncIterator[ShardsChanged]:
        """Every :class:`ShardsChanged` of this node from now on, until it leaves.

        Each iterator has its own unbounded queue: iterate promptly (or use
        ``on_shards_changed``, which the node awaits).
        """
        queue: asyncio.Queue[ShardsChanged | None] = asyncio.Queue()
        self._queues.append(queue)
        try:
            while (change := await queue.get()) is not None:
                yield change
        finally:
            with contextlib.suppress(ValueError):
                self._queues.remove(queue)

    async def wait_for_shards(self) -> frozenset[int]:
        """Wait until the stored placement is settled (no shard unowned or being
        released) and this node has applied it; the shards it holds then. Bound it with
        :func:`asyncio.timeout`."""
        while True:
            latest = self._view.latest
            if (
                latest is not None
                and not latest.releasing
                and None not in latest.owners
                and self._applied >= latest.version
                and self._fresh()
            ):
                return self.owned_shards
            await self._view.wait_newer(self._view.version, self._renew_every)

    async def _emit(self, change: ShardsChanged) -> None:
        for queue in self._queues:
            queue.put_nowait(change)
        if self._on_changed is not None:
            try:
                await self._on_changed(change)
            except Exception:
                _log.exception("cluster %s: on_shards_changed failed", self._node_id)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> ClusterManager:
        if self._running or self._closed:
            raise RuntimeError("a ClusterManager can be entered once")
        await self._open_state()
        latest = self._view.latest
        if latest is not None and latest.num_shards != self._num_shards:
            raise ClusterConfigError(
                f"the group {self._group!r} has {latest.num_shards} shards "
                f"(bucket {bucket_name(self._group)!r}), this node was given {self._num_shards}"
            )
        self._running = True
        try:
            self._sub = await self._nc.subscribe(
                node_subject(self._group, self._node_id), cb=self._on_request
            )
            with contextlib.suppress(*_TRANSIENT):
                await self._register()  # else the renewal task registers
            wake = self._leader_wake.set
            self._discovery = NodeDiscovery(
                self._nc,
                self._node_id,
                group=self._group,
                heartbeat_interval=timedelta(seconds=self._heartbeat),
                failure_timeout=timedelta(seconds=self._failure_timeout),
                on_change=lambda _: wake(),
            )
            await self._discovery.__aenter__()
            self._election = LeaderElection(
                self._nc,
                self._node_id,
                group=f"shards-{self._group}",
                lease=timedelta(seconds=self._lease),
                replicas=self._replicas,
                on_elected=lambda _: wake(),
                on_deposed=lambda _: wake(),
            )
            await self._election.__aenter__()
            self._view_listener()
            assert self._kv is not None
            self._tasks = [
                asyncio.create_task(self._view.follow(self._kv, self._renew_every)),
                asyncio.create_task(self._renew_loop()),
                asyncio.create_task(self._apply_loop()),
                asyncio.create_task(self._lead_loop()),
            ]
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _open_state(self) -> None:
        """Bind (or create) the bucket and read the placement, retrying timeouts and
        missing responders for ``max(10 s, 5 leases)``: a replicated bucket just created
        elects its stream leader first."""
        deadline = time.monotonic() + max(10.0, 5 * self._lease)
        while True:
            try:
                if self._kv is None:
                    self._kv = await open_bucket(
                        self._nc,
                        self._group,
                        replicas=self._replicas,
                        request_timeout=self._timeout,
                    )
                self._identity = await self._bucket_identity()
                await self._view.refresh(self._kv)
                return
            except _TRANSIENT:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(self._renew_every)

    def _view_listener(self) -> None:
        """Wake the applier and the leader whenever the view takes a newer version."""

        async def listen() -> None:
            while True:
                await self._view.wait_newer(self._view.version, 3600)
                self._apply_wake.set()
                self._leader_wake.set()

        self._spawn(listen())

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._running = False
        lead, others = self._tasks[3:], self._tasks[:3]
        await stop_tasks(lead)
        if self._election is not None:
            with contextlib.suppress(Exception):
                await self._election.close()
        await stop_tasks(others[1:2])  # no renewal: the record is ours to delete
        async with self._lock:  # the applier finishes what it started
            await stop_tasks(others[2:])
            lost = frozenset(self._owned)
            self._owned.clear()
            if lost:
                await self._drain(lost)
                await self._emit(ShardsChanged(frozenset(), lost, self._applied, time.monotonic()))
        self._cancel_deadline()
        was_registered, self._registered, self._ready = self._registered, False, False
        if was_registered and self._kv is not None:
            # A distinct final state (not a delete, which an operator can also make): the
            # leader may move this node's shards at once only on this.
            left = _record_value(
                node=self._node_id,
                state="left",
                applied=self._applied,
                token=self._token,
                registration=self._registration,
            )
            with contextlib.suppress(Exception):
                await self._kv.update(self._key(self._node_id), left, last=self._revision)
        if self._discovery is not None:
            with contextlib.suppress(Exception):
                await self._discovery.close()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        await stop_tasks(others[:1])
        await stop_tasks(list(self._background))
        for queue in self._queues:
            queue.put_nowait(None)

    # -- this node's record and lease ---------------------------------------------------

    def _key(self, node_id: str) -> str:
        return f"{NODE_KEY_PREFIX}{node_id}"

    def _own_value(self) -> bytes:
        return _record_value(
            node=self._node_id,
            state="up",
            applied=self._applied,
            token=self._token,
            registration=self._registration,
            seq=self._seq,
        )

    async def _register(self) -> None:
        """Write this node's record over whatever is there, then read the assignment
        from the stream leader: nothing read before counts for taking shards."""
        assert self._kv is not None
        self._registration += 1
        self._seq = 0
        key = self._key(self._node_id)
        foreign = False
        try:
            entry = await self._kv.get(key)
            last: int | None = entry.revision
            foreign = self._held_by_another(entry.value)
        except nats.js.errors.KeyNotFoundError as exc:
            last = exc.entry.revision if exc.entry is not None else None
        sent = time.monotonic()
        if foreign:
            # Another live process with this node id wrote that record: it may hold
            # shards until its lease, which began before it was read, runs out.
            self._not_before = sent + self._fence_after
            self._applied = 0
        try:
            if last is None:
                revision = await self._kv.create(key, self._own_value())
            else:
                revision = await self._kv.update(key, self._own_value(), last=last)
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # changed meanwhile (a fence): the next round tries again
        self._revision = revision
        self._registered = True
        self._extend(sent + self._lease)
        if foreign:
            _log.warning(
                "cluster %s: replaced the live record of another process with this node id; "
                "taking no shard for %.1fs (is the node id used twice?)",
                self._node_id,
                self._fence_after,
            )
        if time.monotonic() >= self._not_before:
            await self._read_fresh()  # else the renewal loop does, once it is time

    async def _bucket_identity(self) -> str:
        """The incarnation of the bucket: its stream's creation time (STREAM.INFO)."""
        js = self._nc.jetstream(timeout=self._timeout)
        info = await js.stream_info(f"KV_{bucket_name(self._group)}")
        return str(info.created)

    async def _check_identity(self) -> bool:
        """Whether the bucket is still the incarnation the view comes from; if not, start
        over in the new one (NotFoundError while there is no bucket at all)."""
        identity = await self._bucket_identity()
        if identity == self._identity:
            return True
        self._new_incarnation(identity)
        return False

    def _new_incarnation(self, identity: str) -> None:
        """The bucket was deleted and created again: drop every shard held, forget the
        view and the version applied (versions restart with the bucket)."""
        _log.warning(
            "cluster %s: the bucket %r was recreated; dropping every shard and starting "
            "over from its assignment",
            self._node_id,
            bucket_name(self._group),
        )
        lost = frozenset(self._owned)
        self._owned.clear()
        self._incarnation += 1
        self._cancel_handlers()
        if lost:
            at = time.monotonic()
            self._spawn(self._emit(ShardsChanged(frozenset(), lost, self._applied, at, True)))
        self._identity = identity
        self._identities += 1
        self._refusal, self._refusal_backoff, self._refusal_until = None, 0.0, 0.0
        self._view.reset()
        self._applied = 0
        self._ready = False  # registered in the new bucket, and its assignment read, first
        self._reapply = True
        self._renew_wake.set()
        self._leader_wake.set()

    async def _read_fresh(self) -> None:
        """Read the assignment from the stream leader (not a direct get, which a
        replica may answer from behind) and only then allow taking shards; in a new
        incarnation of the bucket, start over (its identity read before and after)."""
        assert self._kv is not None
        js = self._nc.jetstream(timeout=self._timeout)
        bucket = bucket_name(self._group)
        await self._check_identity()
        try:
            msg = await js.get_msg(
                f"KV_{bucket}", subject=f"$KV.{bucket}.{ASSIGNMENT_KEY}", direct=False
            )
        except nats.js.errors.NotFoundError:
            msg = None
        if not await self._check_identity():
            return  # recreated meanwhile: the renewal loop reads again
        if msg is not None:
            operation = (msg.headers or {}).get("KV-Operation")
            if msg.data and operation is None:
                with contextlib.suppress(ValueError):
                    self._view.offer(Assignment.from_json(msg.data), msg.seq or 0)
        self._ready = True
        self._reapply = True
        self._apply_wake.set()

    def _extend(self, valid_until: float) -> None:
        self._valid_until = valid_until
        self._cancel_deadline()
        delay = max(valid_until - time.monotonic(), 0.0)
        self._deadline = asyncio.get_running_loop().call_later(delay, self._deadline_reached)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_reached(self) -> None:
        self._deadline = None
        remaining = self._valid_until - time.monotonic()
        if remaining > 0:  # timers may fire a hair early
            self._deadline = asyncio.get_running_loop().call_later(
                remaining, self._deadline_reached
            )
            return
        self._lapse("lease ran out")

    def _lapse(self, reason: str) -> None:
        """Hold nothing from now on (the lease ran out or the record was fenced)."""
        if not self._registered:
            return
        _log.warning("cluster %s: dropping every shard: %s", self._node_id, reason)
        at = min(self._valid_until, time.monotonic())
        lost = frozenset(self._owned)
        self._owned.clear()
        self._registered = self._ready = False
        self._incarnation += 1
        self._cancel_deadline()
        self._cancel_handlers()  # they may run on past the lease, but no longer than needed
        if lost:
            self._spawn(self._emit(ShardsChanged(frozenset(), lost, self._applied, at, True)))
        self._renew_wake.set()

    async def _renew_loop(self) -> None:
        while True:
            try:
                if not self._registered:
                    await self._register()
                elif not self._ready and time.monotonic() >= self._not_before:
                    await self._read_fresh()
                else:
                    await self._renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # timeouts, reconnects: the lease decides
                _log.debug("cluster %s: record renewal: %r", self._node_id, exc)
            self._renew_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._renew_every):
                    await self._renew_wake.wait()

    async def _renew(self) -> None:
        assert self._kv is not None
        key = self._key(self._node_id)
        self._seq += 1
        incarnation = self._incarnation
        sent = time.monotonic()
        try:
            revision = await self._kv.update(key, self._own_value(), last=self._revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            # Fenced by the leader, or an earlier renewal whose answer was lost landed.
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                self._lapse("this node's record was deleted")
                return
            if not self._is_ours(entry.value):
                self._lapse(
                    "this node's record was replaced (fenced, or the node id is used twice)"
                )
                return
            self._revision = entry.revision or 0  # ours and live: renew from it at once
            self._renew_wake.set()
            return
        if incarnation == self._incarnation:
            self._revision = revision
            self._extend(sent + self._lease)
        if time.monotonic() >= self._valid_until:
            self._lapse("the renewal was answered after the lease ran out")

    def _held_by_another(self, value: bytes | None) -> bool:
        """Whether *value* is a live record written by another process (another token)."""
        try:
            doc = orjson.loads(value or b"")
            return bool(doc.get("state") == "up" and doc.get("token") != self._token)
        except (orjson.JSONDecodeError, AttributeError):
            return False

    def _is_ours(self, value: bytes | None) -> bool:
        try:
            doc = orjson.loads(value or b"")
            return bool(
                doc.get("state") == "up"
                and doc.get("token") == self._token
                and doc.get("registration") == self._registration
            )
        except (orjson.JSONDecodeError, AttributeError):
            return False

    # -- applying the placement ---------------------------------------------------------

    async def _apply_loop(self) -> None:
        while True:
            await self._apply_wake.wait()
            self._apply_wake.clear()
            async with self._lock:
                try:
                    await self._apply()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    _log.exception("cluster %s: applying the placement failed", self._node_id)

    async def _apply(self) -> None:
        latest = self._view.latest
        if latest is None or not self._ready or not self._fresh():
            return
        if latest.version <= self._applied and not self._reapply:
            return
        incarnation = self._incarnation
        mine = latest.shards_of(self._node_id)
        lost = frozenset(self._owned - mine)
        gained = frozenset(mine - self._owned)
        if lost:
            self._owned -= lost
            await self._drain(lost)
            await self._emit(ShardsChanged(frozenset(), lost, latest.version, time.monotonic()))
        if incarnation != self._incarnation:
            return  # lapsed meanwhile: start again once registered
        if gained:
            at = time.monotonic()
            if at >= self._valid_until:
                return  # the deadline timer is about to lapse us
            await self._emit(ShardsChanged(gained, frozenset(), latest.version, at))
            if incarnation != self._incarnation:
                # Lapsed while the application prepared: these shards are not held.
                at = min(self._valid_until, time.monotonic())
                await self._emit(ShardsChanged(frozenset(), gained, latest.version, at, True))
                return
            self._owned |= gained
        self._applied = max(self._applied, latest.version)
        self._reapply = False
        if lost or gained:
            _log.info(
                "cluster %s: version %d: +%d -%d shards, %d held",
                self._node_id,
                latest.version,
                len(gained),
                len(lost),
                len(self._owned),
            )
        self._renew_wake.set()  # confirm at once
        self._apply_wake.set()  # a newer version may have come meanwhile

    async def _drain(self, shards: frozenset[int]) -> None:
        """Wait for the handlers in flight on *shards* to end: those still running after
        one lease are cancelled, and waited for until they have finished unwinding."""

        def idle() -> bool:
            return not any(self._inflight.get(s) for s in shards)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._lease), self._idle:
                await self._idle.wait_for(idle)
        if idle():
            return
        running = [task for s in shards for task in self._inflight.get(s, ())]
        _log.warning(
            "cluster %s: cancelling %d handlers still running one lease after their shards "
            "were released; the release waits until they have unwound",
            self._node_id,
            len(running),
        )
        for task in running:
            task.cancel()
        async with self._idle:
            await self._idle.wait_for(idle)

    def _cancel_handlers(self) -> None:
        for running in self._inflight.values():
            for task in running:
                task.cancel()

    # -- requests -----------------------------------------------------------------------

    # One deadline across retries, which also bounds each NATS request: ASYNC109 is moot.
    async def request(
        self,
        actor_id: str,
        payload: bytes,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> bytes:
        """Send *payload* to the node holding *actor_id* and return its handler's answer.

        The request goes over core NATS request/reply to the owner named by the newest
        placement this process has seen (``aether.shards.<group>.node.<owner>``). The
        owner runs its handler only if it holds the actor's shard at that moment;
        otherwise it answers "not owner" without running it. Retried, until *timeout*
        seconds have passed: a shard with no owner (being handed over), an owner with no
        subscription (no responders), a "not owner" answer. Each retry waits for a newer
        placement or a short backoff (10 ms doubling to 250 ms).

        Raises:
            NotOwnerError: no owner took the request within *timeout* (the handler never
                ran: safe to send again).
            RequestTimeoutError: the owner got the request but no answer came within
                *timeout*: the outcome is unknown (not retried).
            HandlerError: the owner's handler raised, or was cancelled because the
                actor's shard was handed over while it ran (not retried: the outcome is
                unknown).
            ValueError: *actor_id* is empty.
        """
        return await route(self._nc, self._group, self._view, actor_id, payload, timeout)

    async def _on_request(self, msg: Msg) -> None:
        self._spawn(self._serve(msg))

    async def _serve(self, msg: Msg) -> None:
        try:
            actor_id, payload = decode_request(msg.data)
        except (ValueError, UnicodeDecodeError) as exc:
            await self._reply(msg, ERROR, f"MalformedRequest: {exc}".encode())
            return
        async with self._semaphore:
            shard = self.shard_of(actor_id)
            if self._handler is None or not self._holds(shard):
                await self._reply(msg, NOT_OWNER, b"")
                return
            # Its own task, so that a release can cancel the handler alone (_drain).
            task = asyncio.ensure_future(self._handler(actor_id, payload))
            running = self._inflight.setdefault(shard, set())
            running.add(task)
            try:
                try:
                    result = await task
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if not task.cancelled() or (current is not None and current.cancelling()):
                        raise  # this request itself is cancelled (the node is leaving)
                    await self._reply(msg, ERROR, _CANCELLED)
                except Exception as exc:
                    await self._reply(msg, ERROR, f"{type(exc).__name__}: {exc}".encode())
                else:
                    await self._reply(msg, OK, bytes(result))
            finally:
                running.discard(task)
                if not running and self._inflight.get(shard) is running:
                    del self._inflight[shard]
                async with self._idle:
                    self._idle.notify_all()

    async def _reply(self, msg: Msg, status: str, data: bytes) -> None:
        if not msg.reply:
            return
        headers = {STATUS: status, VERSION: str(self._applied)}
        try:
            await self._nc.publish(msg.reply, data, headers=headers)
        except Exception as exc:
            _log.debug("cluster %s: reply not sent: %r", self._node_id, exc)

    # -- the leader ---------------------------------------------------------------------

    async def _lead_loop(self) -> None:
        assert self._election is not None
        while True:
            term = await self._election.wait_until_leader()
            try:
                await self._lead(term)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("cluster %s: leading term %d failed", self._node_id, term)
                await asyncio.sleep(self._renew_every)

    async def _lead(self, term: int) -> None:
        """Keep the placement on the live members while this node leads *term*."""
        assert self._kv is not None and self._election is not None
        _log.info("cluster %s: leading, term %d", self._node_id, term)
        records: dict[str, _Record] = {}
        loaded = asyncio.Event()
        watcher = asyncio.create_task(self._watch_records(records, loaded))
        fenced: dict[str, int] = {}  # node -> the stored version read before fencing it
        # Discovery hears from every member within a heartbeat: wait for that before the
        # first decision, so a leader that just started does not place everything on itself.
        settle_until = time.monotonic() + self._heartbeat
        identities = self._identities  # a new incarnation of the bucket: start the term over
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._lease):
                    await loaded.wait()  # the records as they are, before deciding
            while (
                self._election.is_leader
                and self._election.term == term
                and identities == self._identities
            ):
                self._leader_wake.clear()
                wait = self._renew_every
                if time.monotonic() < settle_until:
                    wait = settle_until - time.monotonic()
                else:
                    wait = min(wait, await self._lead_step(term, records, fenced))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.01)):
                        await self._leader_wake.wait()
        finally:
            await stop_tasks([watcher])

    async def _lead_step(
        self, term: int, records: dict[str, _Record], fenced: dict[str, int]
    ) -> float:
        """One decision: fence what must be, write the next assignment if any; returns
        how long until something is due (a fence)."""
        assert self._kv is not None and self._election is not None and self._discovery
        stored = self._view.latest or Assignment.empty(self._num_shards)
        revision = self._view.revision if self._view.latest is not None else 0
        if stored.term > term:
            return self._renew_every  # a newer leader wrote: this one is about to step down
        now = time.monotonic()
        due = self._renew_every

        def released(revocation: Revocation) -> bool:
            record = records.get(revocation.node)
            if record is not None and record.state == "up" and record.applied >= revocation.version:
                return True
            return fenced.get(revocation.node, -1) >= revocation.version

        for node in sorted({r.node for r in stored.releasing.values() if not released(r)}):
            record = records.get(node)
            if record is None:
                # No record seen (never written, or its history gone): the node may still
                # be live, so it is treated as a record unchanged since now.
                record = records[node] = _Record(0, "gone", 0, now)
            if record.state in _FINAL or now - record.seen >= self._fence_after:
                if await self._fence(node, record, records, term):
                    fenced[node] = stored.version
            else:
                due = min(due, record.seen + self._fence_after - now)

        live = {n for n, r in records.items() if r.state == "up"}
        for node in sorted(self._discovery.members - live):
            # A member whose record the watch has not shown (yet, or ever: a watch that
            # stalled after a reconnect): read it, so it is not left without shards.
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await self._kv.get(self._key(node))
                self._note_record(records, node, entry.revision or 0, entry.value, None)
                if records[node].state == "up":
                    live.add(node)
        target = place(self._discovery.members & live, self._num_shards)
        step = next_assignment(stored, target, released=released, term=term, leader=self._node_id)
        if step is stored or not self._election.is_leader or self._election.term != term:
            return due
        if self._refusal is not None and now < self._refusal_until:
            return min(due, self._refusal_until - now)  # backing off: look again then
        try:
            if not await self._check_identity():
                return 0.0  # the view is of a deleted bucket: never write it into the new one
        except nats.js.errors.NotFoundError:
            return due  # no bucket at all (deleted): nothing to write into
        try:
            # Revision 0 expects no message at all on the key: never kv.create, which
            # writes over a delete marker.
            new_revision = await self._kv.update(ASSIGNMENT_KEY, step.to_json(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            problem = await self._stored_problem()
            if problem is None:
                await self._view.refresh(self._kv)  # another write came first: decide again
                return 0.0
            return self._refuse(problem)
        self._refusal, self._refusal_backoff, self._refusal_until = None, 0.0, 0.0
        self._view.offer(step, new_revision)
        _log.info(
            "cluster %s: placement version %d (term %d): %d shards releasing, %d unowned",
            self._node_id,
            step.version,
            term,
            len(step.releasing),
            step.owners.count(None),
        )
        return 0.0

    async def _stored_problem(self) -> str | None:
        """Why the stored assignment cannot be built on (deleted, purged, unreadable),
        or None when it is a valid one (a write raced this leader's)."""
        assert self._kv is not None
        try:
            entry = await self._kv.get(ASSIGNMENT_KEY)
        except nats.js.errors.KeyNotFoundError as exc:
            if exc.entry is None or not exc.entry.revision:
                return None
            return f"was deleted or purged (revision {exc.entry.revision})"
        try:
            Assignment.from_json(entry.value or b"")
        except ValueError as exc:
            return f"is unreadable (revision {entry.revision}: {exc})"
        return None

    def _refuse(self, problem: str) -> float:
        """Write no placement over a stored one that is gone or unreadable: a version
        written blindly could repeat one a node already applied. Logged once per cause;
        the next look backs off (the renewal interval, doubling up to 30 s)."""
        self._refusals += 1
        if problem != self._refusal:
            self._refusal = problem
            _log.error(
                "cluster %s: the stored shard assignment %s; refusing to write a new one, "
                "so no shard moves until it is recovered (see the placement how-to: "
                "stop every node of the group, delete the bucket %r, start them again)",
                self._node_id,
                problem,
                bucket_name(self._group),
            )
        self._refusal_backoff = min(max(self._refusal_backoff * 2, self._renew_every), 30.0)
        self._refusal_until = time.monotonic() + self._refusal_backoff
        return self._refusal_backoff

    async def _fence(
        self, node: str, record: _Record | None, records: dict[str, _Record], term: int
    ) -> bool:
        """Mark *node*'s record fenced, if it is still the revision the leader judged."""
        assert self._kv is not None
        key = self._key(node)
        value = _record_value(node=node, state="fenced", by=self._node_id, term=term, applied=0)
        try:
            # Revision 0 expects no message at all on the key (not kv.create, which would
            # write over a delete marker the leader has not judged yet).
            revision = await self._kv.update(
                key, value, last=record.revision if record is not None else 0
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError as exc:
                if exc.entry is not None and exc.entry.revision:
                    self._note_record(records, node, exc.entry.revision, None, "DEL")
            else:
                self._note_record(records, node, entry.revision or 0, entry.value, None)
            return False
        _log.info("cluster %s: fenced %s (term %d)", self._node_id, node, term)
        records[node] = _Record(revision, "fenced", 0, time.monotonic())
        return True

    def _note_record(
        self,
        records: dict[str, _Record],
        node: str,
        revision: int,
        value: bytes | None,
        operation: str | None,
    ) -> None:
        known = records.get(node)
        if known is not None and known.revision >= revision:
            return
        state, applied = "gone", 0
        if operation is None:
            try:
                doc = orjson.loads(value or b"")
                state, applied = str(doc.get("state", "up")), int(doc.get("applied", 0))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                # Not a record a node or a leader wrote (an operator's edit): its node
                # may still hold shards by its lease, as for a deleted record.
                state, applied = "gone", 0
            if state not in _STATES:
                state = "gone"
        records[node] = _Record(revision, state, applied, time.monotonic())
        self._leader_wake.set()

    async def _watch_records(self, records: dict[str, _Record], loaded: asyncio.Event) -> None:
        assert self._kv is not None
        while True:
            watcher: Any = None
            try:
                watcher = await self._kv.watch(f"{NODE_KEY_PREFIX}>")
                while True:
                    entry = await watcher.updates(timeout=None)
                    if entry is None:
                        loaded.set()
                        continue
                    node = entry.key[len(NODE_KEY_PREFIX) :]
                    self._note_record(
                        records, node, entry.revision or 0, entry.value, entry.operation
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.debug("cluster %s: record watch: %r", self._node_id, exc)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            await asyncio.sleep(self._renew_every)

    def __repr__(self) -> str:
        return (
            f"ClusterManager(node_id={self._node_id!r}, group={self._group!r}, "
            f"version={self._applied}, shards={len(self._owned)})"
        )
