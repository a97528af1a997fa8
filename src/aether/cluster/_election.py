"""Leader election on a JetStream key-value bucket, with a lease and a fencing term.

Protocol
========

One KV bucket (default ``aether_leases``, history 1) holds one key per group, the lease
record. Its value is JSON ``{"node": <node id>, "token": <random per election object>,
"lease": <the writer's lease in seconds>, "term": <int, absent in the first record of a
term>}``.

- **Campaign.** A candidate reads the key's last message with the JetStream Get API
  (``last_by_subj``), which the stream leader answers, so it sees every acknowledged
  write (ADR-31, "JetStream Direct Get": unlike Direct Get, the Get API is
  read-after-write coherent). If there is none, or it is a delete/purge tombstone
  (``KV-Operation: DEL``/``PURGE``) or a server expiry marker (``Nats-Marker-Reason``),
  it *creates* the record: a publish with ``Nats-Expected-Last-Subject-Sequence`` set
  to that message's sequence (0 when there is none). JetStream appends it only if the
  subject's last sequence still is that number, else answers error 10071 (wrong last
  sequence), so of any number of candidates exactly one wins. (A record that has stayed
  unchanged too long is taken over the same way: see "Records that never go away".)
  This is how ADR-8 ("JetStream based Key-Value Stores") defines KV ``Create`` and
  ``Update``; nats-py's ``KeyValue.create`` does the same but does not take an expiry
  marker for a deleted key, and its ``update`` cannot send a TTL, hence the publishes
  made here.
- **Term.** The winner's term is the stream sequence (the KV revision) of the record
  that began its leadership. Stream sequences only grow, and every leadership begins
  with a write after the previous leader's last one, so terms strictly increase across
  successive leaderships: a fencing token. (Deleting and re-creating the bucket starts
  sequences again from 1: don't, while a group runs.)
- **Lease.** Every record carries a per-message TTL (``Nats-TTL`` header; ADR-43,
  "JetStream Per-Message TTL", nats-server 2.11+), counted by the server from the
  message's stream timestamp, i.e. from when it stored the record. The bucket is
  created with ``allow_msg_ttl`` and ``subject_delete_marker_ttl`` (KV "limit
  markers", ADR-48): when a record expires the server removes it and places a marker
  (``Nats-Marker-Reason: MaxAge``), which watchers see. The server keeps TTLs in whole
  seconds (it refuses less than 1 s, and nats-server 2.15 expires ``"1500ms"`` after
  1 s, measured), so the TTL sent is the integer ``ceil(lease)``, never less than the
  lease. Expiry was measured never early and up to 0.3 s late.
- **Renewal.** The leader rewrites the record every ``lease / 3`` with the revision
  check (an *update*), which also restarts the TTL. A renewal that meets another
  revision ends the leadership at once.
- **Resign.** On a clean exit the leader first stops considering itself leader, then
  deletes the key with a revision check (``KV-Operation: DEL`` with
  ``Nats-Expected-Last-Subject-Sequence``). Every candidate watches the key (a KV
  watch: an ordered push consumer on the key's subject), so one of them wins at once.
  Candidates also poll every ``lease / 2`` in case a watch update is missed (a
  reconnect, a stream leader change).

Safety: at most one ``is_leader`` at any instant
================================================

:attr:`LeaderElection.is_leader` is computed when it is read, on the monotonic clock
(:func:`time.monotonic`, which keeps counting while a process is stopped): it is true
only while ``now < sent + lease - margin``, where ``sent`` is when the last successful
create/renewal *was sent*. The server stored that record after it was sent and keeps it
for ``ceil(lease) >= lease`` seconds, so this node's belief ends at least ``margin``
before any other candidate's create can succeed. It follows that:

- a leader that cannot renew (partitioned, its server down, a slow network) reads
  ``is_leader == False`` before its lease can expire on the server;
- a process paused (SIGSTOP, a long GC or swap stall) past its lease reads
  ``is_leader == False`` as soon as it runs again, before any renewal succeeds, and an
  answer received late is judged by its send time, so it cannot revive a lapsed lease;
- a lapsed leadership is never resumed: the node campaigns again and, if it wins, does
  so with a new record and a new term.

The assumptions are those of every lease: the server's clock and this process's
monotonic clock advance at nearly the same rate (``margin``, default ``lease / 10``,
absorbs the drift), and the server's wall clock does not jump forward (nats-server
times TTLs on the wall clock, so a forward step of the clock, or replicas whose clocks
disagree in a cluster, can expire a record early; keep servers on NTP with slewing).
Use :attr:`~LeaderElection.term` as a fencing token on the resources the leader
writes, so that a write made by a deposed leader is refused where it lands.

Records that never go away
==========================

A record the server never expires would otherwise hold the group for ever: a value
written by hand or by a foreign writer without a TTL, one this module cannot parse (it
still counts as a record: someone may hold it), or one with a TTL far longer than the
lease. So expiry is not the only way a record ends. A candidate notes, on its own
monotonic clock, when it *first* read each revision of the key (the moment the answer
arrived, hence after the server stored that record). When that same revision is still
the key's last one ``stale_after = 1.25 * max(lease, writer's lease)`` later, the
candidate takes it over exactly like a create: a write with
``Nats-Expected-Last-Subject-Sequence`` set to *that* revision. Why this cannot depose
a live leader, whoever wrote the record:

- The record's writer, if it is a leader of this module, sent it at some ``sent`` before
  the server stored it, so before the candidate first saw it; it believes it leads on
  it only until ``sent + its lease - margin``, which is more than a quarter of a lease
  before the candidate's write can even be sent.
- It can lead longer only by renewing, and a renewal is a new revision: if one lands
  before the takeover, the takeover's revision check fails (and the candidate starts
  counting again from the new revision); if the takeover lands first, the renewal's
  check fails and the leader steps down. The same check makes two candidates racing
  over one stale record produce exactly one winner.
- A leader renews every ``lease / 3``, so a revision it owns never stays unchanged for
  ``1.25 * lease`` while it leads: the rule only ever fires on a record no live leader
  holds. (The extra quarter of a lease is headroom over the leader's own deadline: it
  absorbs clock drift between machines, like ``margin``.)
- The writer's lease comes from the record's ``lease`` field, believed only up to the
  record's ``Nats-TTL`` (this module's TTL is ``ceil(lease) >= lease``), so candidates
  configured with different leases stay safe; a value without both (a foreign or
  malformed one, or one written before this field existed) is judged by the
  candidate's own lease. Give every candidate of a group the same lease anyway.

The new leader's term is its record's revision, above the stale one's, as always. A
foreign record is thus taken within about ``1.25 * lease`` of a candidate's first read.

Liveness: a new leader within about two leases
==============================================

After a leader dies its record expires at most ``ceil(lease)`` after its last renewal;
candidates learn it at once from the expiry marker, or at the latest at their next poll
(``lease / 2``), so a new leader is elected within about ``ceil(lease) + lease / 2``
plus a round trip. After a clean resign, at once.

In a JetStream cluster give the bucket ``replicas=3``: the records then survive the
loss of one server, and a lease whose stream leader changes is kept or expires as
usual (publishes fail while the stream elects a leader; the leader steps down if that
outlasts its lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from aether._tasks import stop as stop_tasks
from aether.cluster._discovery import check_token
from aether.errors import UnsuitableStreamError, UnsupportedServerError
from aether.store._jsapi import require_jetstream

__all__ = ["LeaderElection"]

_log = logging.getLogger(__name__)

_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_MSG_TTL = "Nats-TTL"
_KV_OPERATION = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"
#: JetStream error codes of a failed expected-last-subject-sequence check.
_WRONG_LAST_SEQUENCE = (10071, 10164)
#: Characters of a KV key this module accepts as a group name (no ``.``: one token).
_KEY_CHARS = frozenset(string.ascii_letters + string.digits + "-_=/")
#: How long the server keeps its expiry marker (only watchers need it).
_MARKER_TTL = 60.0
#: nats-server supports per-message TTLs (ADR-43) from this version on.
_MSG_TTL_SINCE = (2, 11)
#: A revision unchanged this many (writer's) leases after a candidate first saw it
#: cannot belong to a live leader: the candidate may take it over (see the module docs).
_STALE_LEASES = 1.25


@dataclass(frozen=True)
class _Record:
    """The key's last message: ``live`` is False for none, a tombstone or a marker.

    ``lease`` is the writer's lease as its record declares it, capped by the record's
    TTL; None when the record does not carry both (a foreign or malformed value).
    """

    revision: int
    live: bool
    node: str | None = None
    token: str | None = None
    term: int = 0
    lease: float | None = None


def _seconds(text: object) -> float | None:
    """A positive finite number of seconds from a JSON field or a ``Nats-TTL`` header."""
    if isinstance(text, bool):
        return None
    try:
        value = float(text) if isinstance(text, int | float) else float(str(text).strip())
    except ValueError:
        return None
    return value if 0 < value < math.inf else None


def _parse(revision: int, data: bytes | None, headers: dict[str, str] | None) -> _Record:
    if headers and (headers.get(_KV_OPERATION) in ("DEL", "PURGE") or _MARKER_REASON in headers):
        return _Record(revision, live=False)
    try:
        value = json.loads(data or b"")
        node, token, term = value["node"], value["token"], value.get("term", revision)
        if not (isinstance(node, str) and isinstance(token, str) and isinstance(term, int)):
            raise TypeError("bad field types")
    except (ValueError, KeyError, TypeError, AttributeError):
        # Something that is not ours holds the key: a live lease held by nobody we know,
        # taken when it goes away or when it has stayed unchanged too long.
        return _Record(revision, live=True)
    lease = _seconds(value.get("lease"))
    ttl = _seconds(headers.get(_MSG_TTL)) if headers else None
    writer_lease = min(lease, ttl) if lease is not None and ttl is not None else None
    return _Record(revision, live=True, node=node, token=token, term=term, lease=writer_lease)


class LeaderElection:
    """One candidate in the leader election of a group (see the module docs).

    Use it as an async context manager: entering creates the bucket if needed, starts
    the watch and the campaign task and returns at once (without waiting for an
    outcome); leaving resigns (see :meth:`close`). It does not own *nc*.

    Reading the outcome:

    - :attr:`is_leader`: computed from the monotonic clock at read time; the only
      answer to act on. Check it (or :attr:`lease_remaining`) right before each act.
    - :attr:`term`: the fencing token, strictly increasing across leaderships.
    - :attr:`leader_id`: who leads, as last seen (a hint for routing, not a guarantee).

    Following changes (for instance a cluster manager that must start or stop work):

    - ``on_elected(term)``: called when this node becomes leader, right after
      :attr:`is_leader` becomes true.
    - ``on_deposed(term)``: called once per leadership when it ends: a renewal met
      another record, the lease lapsed without a renewal (a timer at the deadline, so
      it may run a little after :attr:`is_leader` turned false), or the node resigned.
      Between ``on_elected`` and ``on_deposed`` :attr:`is_leader` may already be false
      (a lapse detected late); it never becomes true again for the same term.
    - ``await wait_for_change()``: returns after the next change of :attr:`is_leader`,
      :attr:`leader_id` or :attr:`term` (both callbacks included); re-read the
      properties then. Callbacks run in the event loop, before waiters resume; they
      must not block, and an exception they raise is logged and ignored.

    Args:
        nc: a connected nats-py client on a JetStream-enabled server (2.11 or later).
        node_id: this candidate's id (a NATS subject token). Each
            :class:`LeaderElection` object also draws a random token, so a restarted
            process with the same id never mistakes its predecessor's record for its
            own.
        group: the election's name, a KV key (letters, digits, ``-``, ``_``, ``=``,
            ``/``); one leader per group and bucket.
        lease: how long a record stays valid without renewal. Shorter: faster
            failover, more renewals (three per lease) and less tolerance of a slow
            server or event loop.
        bucket: the KV bucket of the lease records, shared by the groups.
        replicas: replicas of the bucket when this call creates it (3 in a cluster).
            An existing bucket is used as it is.
        margin: how long before ``sent + lease`` a leader stops believing it leads;
            default ``lease / 10``. Must be less than a third of the lease.
        on_elected: called with the term when this node becomes leader (see above).
        on_deposed: called with the term when it stops being leader (see above).

    Raises:
        ValueError: (constructor) a bad ``node_id``, ``group``, ``lease`` or ``margin``.
        JetStreamNotEnabledError: (on entering) the server has no JetStream.
        UnsupportedServerError: (on entering) nats-server older than 2.11 (no
            per-message TTL).
        UnsuitableStreamError: (on entering) the existing bucket does not allow
            per-message TTLs.
    """

    def __init__(
        self,
        nc: Client,
        node_id: str,
        *,
        group: str = "aether",
        lease: timedelta = timedelta(seconds=5),
        bucket: str = "aether_leases",
        replicas: int = 1,
        margin: timedelta | None = None,
        on_elected: Callable[[int], object] | None = None,
        on_deposed: Callable[[int], object] | None = None,
    ) -> None:
        check_token("node_id", node_id)
        if not group or not set(group) <= _KEY_CHARS:
            raise ValueError(f"group must be a KV key ([-_=/A-Za-z0-9]+), got {group!r}")
        seconds = lease.total_seconds()
        if seconds <= 0:
            raise ValueError(f"lease must be positive, got {lease}")
        margin_s = seconds / 10 if margin is None else margin.total_seconds()
        if not 0 <= margin_s < seconds / 3:
            raise ValueError(f"margin must be in [0, lease / 3), got {margin}")
        self._nc = nc
        self._node_id = node_id
        self._group = group
        self._lease = seconds
        self._valid_for = seconds - margin_s
        self._ttl = max(1, math.ceil(seconds))
        self._renew_every = seconds / 3
        self._poll_every = seconds / 2
        self._bucket = bucket
        self._stream = f"KV_{bucket}"
        self._subject = f"$KV.{bucket}.{group}"
        self._replicas = replicas
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._token = secrets.token_hex(8)
        self._js = nc.jetstream(timeout=max(self._poll_every, 0.5))
        # (revision, monotonic instant this candidate first read it): for stale records
        self._seen: tuple[int, float] | None = None
        self._kv: Any = None

        # Leadership: set together when a create/renewal succeeds.
        self._term = 0  # our term while leading, else the last term seen
        self._revision = 0  # revision of our last acknowledged record
        self._valid_until: float | None = None  # monotonic; None when not leading
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._leader_id: str | None = None

        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._closed = False

    # ------------------------------------------------------------------ properties

    @property
    def node_id(self) -> str:
        """This candidate's id."""
        return self._node_id

    @property
    def group(self) -> str:
        """The election's name (its key in the bucket)."""
        return self._group

    @property
    def lease(self) -> timedelta:
        """The lease."""
        return timedelta(seconds=self._lease)

    @property
    def running(self) -> bool:
        """True between entering and leaving the context."""
        return self._running

    @property
    def is_leader(self) -> bool:
        """Whether this node leads *now*: its lease, measured from the send time of its
        last successful create/renewal on the monotonic clock, has not run out.

        Never true for two nodes of a group at the same instant (see the module docs for
        the assumptions).
        """
        valid_until = self._valid_until
        return valid_until is not None and time.monotonic() < valid_until

    @property
    def valid_until(self) -> float | None:
        """The :func:`time.monotonic` instant at which leadership ends without another
        renewal; None when this node does not consider itself leader.

        :attr:`is_leader` is ``valid_until is not None and time.monotonic() <
        valid_until``; the instant may already be past (a lapse not yet handled).
        """
        return self._valid_until

    @property
    def lease_remaining(self) -> float:
        """Seconds of leadership left without another renewal; 0.0 when not leading.

        For an act that takes time: start it only if it ends before this runs out.
        """
        valid_until = self._valid_until
        if valid_until is None:
            return 0.0
        return max(valid_until - time.monotonic(), 0.0)

    @property
    def term(self) -> int:
        """This node's term while it leads; otherwise the term of the last leader seen
        (0 if none). Terms strictly increase across successive leaderships of a group.
        """
        return self._term

    @property
    def leader_id(self) -> str | None:
        """This node's id while it leads; otherwise the leader last seen in the bucket,
        or None when there was none (or its record was not written by this module).
        """
        if self.is_leader:
            return self._node_id
        if self._valid_until is not None:
            return None  # our own lease lapsed; who leads now is not known yet
        return self._leader_id

    # ------------------------------------------------------------------ waiting

    async def wait_for_change(self) -> None:
        """Return after the next change of :attr:`is_leader`, :attr:`leader_id` or
        :attr:`term` (also after a lapse, when the deadline timer fires).

        Raises:
            RuntimeError: if the election is not running (a waiter is woken with this
                error when the context exits).
        """
        if not self._running:
            raise RuntimeError("LeaderElection is not running")
        self._changed.clear()
        await self._changed.wait()
        if not self._running:
            raise RuntimeError("LeaderElection is not running")

    async def wait_until_leader(self) -> int:
        """Wait until this node leads, and return its term.

        It may have lost the lease again by the time the caller runs: check
        :attr:`is_leader` before acting. Wrap in :func:`asyncio.timeout` to bound it.

        Raises:
            RuntimeError: if the election is not running or stops meanwhile.
        """
        while True:
            if not self._running:
                raise RuntimeError("LeaderElection is not running")
            if self.is_leader:
                return self._term
            await self.wait_for_change()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> LeaderElection:
        if self._running or self._closed:
            raise RuntimeError("a LeaderElection can be entered once")
        await self._open_bucket()
        self._running = True
        self._tasks = [
            asyncio.create_task(self._watch(), name=f"election-watch-{self._node_id}"),
            asyncio.create_task(self._campaign(), name=f"election-{self._node_id}"),
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
        """Stop campaigning and resign: step down locally (``on_deposed`` runs), then
        delete the record with a revision check so another candidate wins at once.

        Idempotent. The delete is tried for up to one lease while the connection is open
        (a revision the node missed is looked up and used); if it fails the record
        simply expires. Exit before closing the connection, or the others wait for the
        expiry.
        """
        if self._closed:
            return
        self._closed = True
        self._running = False
        await stop_tasks(self._tasks)  # again until each ends: a request may swallow one
        self._tasks = []
        held = self._valid_until is not None and self._revision > 0
        revision = self._revision
        self._step_down("resigned")
        if held:
            await self._release(revision)
        self._notify()

    # ------------------------------------------------------------------ internals

    async def _open_bucket(self) -> None:
        await require_jetstream(self._nc, max(self._poll_every, 1.0))
        version = self._nc.connected_server_version
        if (version.major, version.minor) < _MSG_TTL_SINCE:
            raise UnsupportedServerError(
                f"leader election needs per-message TTLs (nats-server 2.11+), "
                f"connected to {version}"
            )
        config = KeyValueConfig(
            bucket=self._bucket, history=1, replicas=self._replicas, limit_marker_ttl=_MARKER_TTL
        )
        try:
            self._kv = await self._js.create_key_value(config)
        except nats.js.errors.BadRequestError as exc:
            # It exists with another configuration (e.g. replicas): use it as it is.
            try:
                self._kv = await self._js.key_value(self._bucket)
            except nats.js.errors.BucketNotFoundError:
                raise exc from None
        info = await self._js.stream_info(self._stream)
        if not info.config.allow_msg_ttl:
            raise UnsuitableStreamError(
                self._stream,
                "allow_msg_ttl",
                f"KV bucket {self._bucket!r} must allow per-message TTLs, or leases of "
                f"dead leaders never expire",
            )

    async def _read(self) -> _Record:
        try:
            msg = await self._js.get_msg(self._stream, subject=self._subject)
        except nats.js.errors.NotFoundError:
            return _Record(0, live=False)
        assert msg.seq is not None
        return _parse(msg.seq, msg.data, msg.headers)

    async def _write(self, expected: int, term: int | None, wait: float) -> int:
        """Append a lease record if the key's last revision is *expected*; its revision.

        Raises KeyWrongLastSequenceError when it is not.
        """
        value: dict[str, object] = {
            "node": self._node_id,
            "token": self._token,
            "lease": self._lease,
        }
        if term is not None:
            value["term"] = term
        payload = json.dumps(value, separators=(",", ":")).encode()
        return await self._publish(payload, {_MSG_TTL: str(self._ttl)}, expected, wait)

    async def _publish(
        self, payload: bytes, headers: dict[str, str], expected: int, wait: float
    ) -> int:
        headers = {**headers, _EXPECTED_LAST_SUBJECT_SEQ: str(expected)}
        try:
            ack = await self._js.publish(self._subject, payload, timeout=wait, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise nats.js.errors.KeyWrongLastSequenceError(
                    description=exc.description
                ) from None
            raise
        return int(ack.seq)

    async def _campaign(self) -> None:
        while True:
            try:
                if self._valid_until is not None:
                    await self._renew()
                else:
                    await self._try_acquire()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a timeout, a reconnect, a stream leader change
                _log.debug("election %s/%s: %r", self._group, self._node_id, exc)
                await asyncio.sleep(min(self._renew_every / 3, 0.2))

    async def _try_acquire(self) -> None:
        """One campaign round: take the key if free, our own lapsed record, or a record
        unchanged for too long; else wait."""
        self._wake.clear()
        record = await self._read()
        seen = time.monotonic()  # after the answer: the record was stored before this
        if record.live and record.token != self._token:
            self._observe(record.node, record.term)
            if self._seen is None or self._seen[0] != record.revision:
                self._seen = (record.revision, seen)
            stale_at = self._seen[1] + _STALE_LEASES * max(self._lease, record.lease or 0.0)
            if seen < stale_at:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self._poll_every, stale_at - seen)):
                        await self._wake.wait()
                return
            # Unchanged since before stale_at - 1.25 leases: nobody leads on it (module
            # docs); take it over if it is still the last record when the write lands.
            _log.warning(
                "election %s: %s takes over revision %d (%s), unchanged for %.1f s",
                self._group,
                self._node_id,
                record.revision,
                f"node {record.node!r}" if record.node is not None else "not a lease record",
                seen - self._seen[1],
            )
        # Free, a record of ours whose leadership lapsed (or whose create's answer was
        # lost), or a stale one: a new record over it starts a new term.
        sent = time.monotonic()
        try:
            revision = await self._write(record.revision, None, self._poll_every)
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # someone else was faster: read again
        self._begin(revision, sent)

    async def _renew(self) -> None:
        """Wait for the next renewal time and renew; step down when it cannot be done."""
        assert self._valid_until is not None
        next_at = self._valid_until - self._valid_for + self._renew_every
        await asyncio.sleep(max(next_at - time.monotonic(), 0.0))
        valid_until = self._valid_until
        if valid_until is None:
            return
        sent = time.monotonic()
        if sent >= valid_until:
            self._step_down("lease lapsed before renewal")
            return
        try:
            revision = await self._write(self._revision, self._term, valid_until - sent)
        except nats.js.errors.KeyWrongLastSequenceError:
            record = await self._read()
            if record.live and record.token == self._token and record.term == self._term:
                # A renewal whose answer was lost did land: carry on from it (the lease
                # is still counted from the last renewal we know the send time of).
                self._revision = record.revision
                return
            self._step_down("the record was replaced")
            if record.live:
                self._observe(record.node, record.term)
            return
        except (nats.errors.TimeoutError, TimeoutError, nats.errors.Error) as exc:
            _log.debug("election %s/%s: renewal failed: %r", self._group, self._node_id, exc)
            if time.monotonic() >= valid_until:
                self._step_down("no renewal within the lease")
            else:
                await asyncio.sleep(min(self._renew_every / 3, valid_until - time.monotonic()))
            return
        if time.monotonic() >= sent + self._valid_for or self._valid_until is None:
            # The answer came too late (a pause, a slow server): the lease is judged by
            # the send time, so it has already lapsed. Campaign again.
            self._revision = revision
            self._step_down("renewal answered after the lease ran out")
            return
        self._revision = revision
        self._set_deadline(sent + self._valid_for)

    def _begin(self, revision: int, sent: float) -> None:
        valid_until = sent + self._valid_for
        if time.monotonic() >= valid_until:
            return  # won, but too late to lead on it: the next round takes it over
        self._revision = revision
        self._term = revision
        self._leader_id = self._node_id
        self._set_deadline(valid_until)
        _log.info("election %s: %s elected, term %d", self._group, self._node_id, revision)
        self._callback(self._on_elected, revision)
        self._notify()

    def _set_deadline(self, valid_until: float) -> None:
        self._valid_until = valid_until
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        loop = asyncio.get_running_loop()
        self._deadline_timer = loop.call_later(
            max(valid_until - time.monotonic(), 0.0), self._deadline_reached
        )

    def _deadline_reached(self) -> None:
        self._deadline_timer = None
        valid_until = self._valid_until
        if valid_until is None:
            return
        remaining = valid_until - time.monotonic()
        if remaining > 0:  # the loop's timers may fire a hair early
            self._deadline_timer = asyncio.get_running_loop().call_later(
                remaining, self._deadline_reached
            )
            return
        self._step_down("lease ran out")
        self._wake.set()

    def _step_down(self, reason: str) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._valid_until is None:
            return
        self._valid_until = None
        self._leader_id = None
        _log.info(
            "election %s: %s deposed, term %d: %s", self._group, self._node_id, self._term, reason
        )
        self._callback(self._on_deposed, self._term)
        self._notify()

    def _observe(self, node: str | None, term: int) -> None:
        if (node, term) != (self._leader_id, self._term):
            self._leader_id = node
            self._term = max(self._term, term)
            self._notify()

    async def _release(self, revision: int) -> None:
        deadline = time.monotonic() + self._lease
        while time.monotonic() < deadline and not self._nc.is_closed:
            try:
                # kv.delete(key, last=revision), with the answer's error decoded
                await self._publish(b"", {_KV_OPERATION: "DEL"}, revision, self._poll_every)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    record = await self._read()
                except Exception:
                    return
                if not (record.live and record.token == self._token):
                    return  # not ours any more
                revision = record.revision
            except Exception as exc:
                _log.debug("election %s: resign failed: %r", self._group, exc)
                await asyncio.sleep(min(self._renew_every / 3, 0.2))

    async def _watch(self) -> None:
        """Wake the campaign on every change of the key (a KV watch), restarting the
        watch after a failure; the campaign polls anyway, so this only speeds it up."""
        while True:
            watcher: Any = None
            try:
                watcher = await self._kv.watch(self._group)
                async for entry in watcher:
                    if entry is None:
                        continue  # "caught up" marker
                    if entry.operation is None:
                        record = _parse(entry.revision, entry.value, None)
                        if record.token != self._token and record.revision > self._revision:
                            # A later record of another node proves ours is gone: stop
                            # leading now if the clock has not stopped us already. (An
                            # older one is a lagging watch's news, and is ignored.)
                            self._step_down("another node's record appeared")
                            self._observe(record.node, record.term)
                    elif self._valid_until is None:
                        self._observe(None, self._term)
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.debug("election %s: watch failed: %r", self._group, exc)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            await asyncio.sleep(self._poll_every)

    def _callback(self, callback: Callable[[int], object] | None, term: int) -> None:
        if callback is None:
            return
        try:
            callback(term)
        except Exception:
            _log.exception("election %s: callback %r failed", self._group, callback)

    def _notify(self) -> None:
        self._changed.set()

    def __repr__(self) -> str:
        return (
            f"LeaderElection(node_id={self._node_id!r}, group={self._group!r}, "
            f"is_leader={self.is_leader}, term={self._term})"
        )
