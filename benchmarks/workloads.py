"""The workloads: aether's store next to its baselines, interleaved round by round.

Every workload runs aether and its baselines in the same rounds, in an order that
changes every round (A/B, B/A for two; a seeded random permutation for more), after one
untimed warm-up round, and reports medians; the latency workload interleaves call by call
instead. Ratios therefore compare figures that
saw the same machine state, which matters on a shared, noisy host.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from nats.aio.client import Client

from aether import ActorSnapshot, Event, VersionConflictError
from aether.store import JetStreamEventStore
from benchmarks.baselines import RawNats, make_event
from benchmarks.model import (
    WORKLOADS,
    ProgressSink,
    Series,
    Sizes,
    WorkloadResult,
    latency_series,
    median,
    round_orders,
    run_rounds,
)

if TYPE_CHECKING:
    from uuid import UUID

    from benchmarks._eventsourcing import EsPeer, ModuleApp

__all__ = ["Bench", "History", "Probe", "interleaved_latencies", "populate"]

P = ParamSpec("P")
T = TypeVar("T")

BATCH = 1000  # save_events batch size: nats-server's atomic batch limit
_LATENCY_WARMUP = 50


@dataclass
class History:
    """The actors holding a history of ``length`` events, one per backend."""

    length: int
    actor: str  # aether's actor id (the raw baselines read the same subject)
    subject: str
    peers: dict[str, UUID] = field(default_factory=dict)  # es peer key -> aggregate id


@dataclass
class Bench:
    """Everything the workloads share: the store, the baselines and the sizes."""

    store: JetStreamEventStore
    raw: RawNats
    sizes: Sizes
    progress: ProgressSink
    peers: list[EsPeer] = field(default_factory=list)
    histories: dict[int, History] = field(default_factory=dict)
    #: opens another connection to the server (the live subscriber's)
    connect: Callable[[], Awaitable[Client]] | None = None
    #: the server's URL, for the workloads that start processes (None: they start a
    #: server of their own)
    url: str | None = None
    #: streams the workloads created besides the store's (deleted by the suite)
    streams: list[str] = field(default_factory=list)
    #: the read-side workloads' stream (``read_stream``) and how many events it holds
    read_store: JetStreamEventStore | None = None
    read_position: int = 0
    #: the eventsourcing persistence-module workloads' applications (benchmarks.es_module)
    es_apps: list[ModuleApp] = field(default_factory=list)
    #: called by the suite at the end, before the streams are deleted
    closers: list[Callable[[], None]] = field(default_factory=list)

    def _workload(self, workload_id: str, description: str) -> WorkloadResult:
        return WorkloadResult(workload_id, WORKLOADS[workload_id], description)

    def _tick(self, workload_id: str) -> Callable[[], None]:
        return lambda: self.progress.advance(workload_id)

    # -- append: 1 writer ------------------------------------------------------------------

    async def append_single(self) -> WorkloadResult:
        """One writer appending to one actor, each append waiting for its ack.

        aether: warm-cache ``save_event`` of ready-made ``Event`` objects (its validation
        and encoding count against it). raw: ``js.publish`` of the same events pre-encoded,
        with the same headers. Measured as alternating tight loops (with the eventsourcing
        peers' single-event ``app.save`` in the same rounds) and interleaved append by
        append (both sides see exactly the same machine state, and neither keeps its code
        hot, as in an application doing its own work between appends).
        """
        wid, s, store = "append_single", self.sizes, self.store
        result = self._workload(wid, _doc(Bench.append_single, s))
        self.progress.start(wid, result.title, 2 * s.append_rounds + 2)
        store_actor, raw_actor = "single-a", "single-r"  # same length: same sizes on the wire
        raw_chain = self.raw.chain(raw_actor, store.subject_for(raw_actor))
        store_version = 1
        await store.save_event(make_event(store_actor, store_version))  # warms the cache
        misses = store.stats.cache_misses

        def store_events(n: int) -> list[Event]:
            nonlocal store_version
            first = store_version + 1
            store_version += n
            return [make_event(store_actor, v) for v in range(first, first + n)]

        async def aether_loop() -> float:
            events = store_events(s.single_appends)
            t0 = time.perf_counter()
            for ev in events:
                await store.save_event(ev)
            return s.single_appends / (time.perf_counter() - t0)

        async def raw_loop() -> float:
            prepared = self.raw.prepare(raw_actor, raw_chain, s.single_appends)
            t0 = time.perf_counter()
            for msg_id, payload in prepared:
                await self.raw.publish(raw_chain, msg_id, payload)
            return s.single_appends / (time.perf_counter() - t0)

        contenders: dict[str, Callable[[], Awaitable[float]]] = {
            "aether.save_event": aether_loop,
            "raw.js_publish": raw_loop,
        }
        for peer in self.peers:
            contenders[f"{peer.key}.save"] = _sync(peer.append, s.peer_appends)
        loops = await run_rounds(contenders, s.append_rounds, self._tick(wid))

        interleaved: dict[str, list[float]] = {"aether": [], "raw": []}
        clock = time.perf_counter
        for round_no in range(s.append_rounds + 1):  # round 0: warm-up
            events = store_events(s.single_appends)
            prepared = self.raw.prepare(raw_actor, raw_chain, s.single_appends)
            spent_store = spent_raw = 0.0
            for i, (ev, (msg_id, payload)) in enumerate(zip(events, prepared, strict=True)):
                if i % 2 == 0:
                    t0 = clock()
                    await store.save_event(ev)
                    t1 = clock()
                    await self.raw.publish(raw_chain, msg_id, payload)
                    t2 = clock()
                    spent_store += t1 - t0
                    spent_raw += t2 - t1
                else:
                    t0 = clock()
                    await self.raw.publish(raw_chain, msg_id, payload)
                    t1 = clock()
                    await store.save_event(ev)
                    t2 = clock()
                    spent_raw += t1 - t0
                    spent_store += t2 - t1
            if round_no > 0:
                interleaved["aether"].append(s.single_appends / spent_store)
                interleaved["raw"].append(s.single_appends / spent_raw)
            self.progress.advance(wid)

        if store.stats.cache_misses != misses:
            raise RuntimeError("the version cache was not warm during the append benchmark")
        if await store.get_latest_version(store_actor) != store_version:
            raise RuntimeError("aether append count mismatch")
        if await store.get_latest_version(raw_actor) != raw_chain.version:
            raise RuntimeError("raw append count mismatch")

        point = result.point()
        labels = {
            "aether.save_event": "aether save_event (warm cache), loop",
            "raw.js_publish": "nats-py js.publish, same headers, loop",
        }
        for peer in self.peers:
            labels[f"{peer.key}.save"] = f"{peer.label}: app.save of 1 event, loop"
        for key, label in labels.items():
            point.add(_series(key, label, "events/s", loops[key]))
        point.add(
            _series(
                "aether.save_event.interleaved",
                "aether save_event, interleaved with raw",
                "events/s",
                interleaved["aether"],
            )
        )
        point.add(
            _series(
                "raw.js_publish.interleaved",
                "nats-py js.publish, interleaved with aether",
                "events/s",
                interleaved["raw"],
            )
        )
        point.ratio("aether.save_event", "raw.js_publish", "vs raw js.publish (loops)")
        point.ratio(
            "aether.save_event.interleaved",
            "raw.js_publish.interleaved",
            "vs raw js.publish (interleaved)",
        )
        for peer in self.peers:
            point.ratio("aether.save_event", f"{peer.key}.save", f"vs {peer.label} app.save")
        self.progress.finish(wid)
        return result

    # -- append: concurrent writers on distinct actors -------------------------------------

    async def append_pipelined(self) -> WorkloadResult:
        """``writers`` concurrent writers, each appending to its own actor.

        aether: one asyncio task per writer, ``save_event`` in a loop (warm caches). The
        store keeps one request per actor in flight, so the connection carries up to
        ``writers`` appends at once. raw: the same shape with ``js.publish_async``, each
        writer awaiting its ack before its next append (the next
        ``Nats-Expected-Last-Subject-Sequence`` is only known from the ack): the client
        ceiling for this workload. The window figure (every message at once, each to a
        fresh subject, then every ack) is the client's pipelining ceiling without any
        per-actor ordering; no per-actor-ordered writer can reach it.
        """
        wid, s, store = "append_pipelined", self.sizes, self.store
        result = self._workload(wid, _doc(Bench.append_pipelined, s))
        self.progress.start(wid, result.title, s.append_rounds + 1)
        writers, per_writer = s.writers, s.pipelined_appends
        store_actors = [f"pipe-a{i:03d}" for i in range(writers)]
        raw_actors = [f"pipe-r{i:03d}" for i in range(writers)]
        versions = dict.fromkeys(store_actors, 1)
        await asyncio.gather(*(store.save_event(make_event(a, 1)) for a in store_actors))
        misses = store.stats.cache_misses
        chains = [self.raw.chain(a, store.subject_for(a)) for a in raw_actors]
        window_round = 0

        async def aether_writers() -> float:
            batches = []
            for actor in store_actors:
                first = versions[actor] + 1
                versions[actor] += per_writer
                batches.append([make_event(actor, v) for v in range(first, first + per_writer)])

            async def writer(events: list[Event]) -> None:
                for ev in events:
                    await store.save_event(ev)

            t0 = time.perf_counter()
            await asyncio.gather(*(writer(batch) for batch in batches))
            return writers * per_writer / (time.perf_counter() - t0)

        async def raw_writers() -> float:
            prepared = [
                self.raw.prepare(a, c, per_writer) for a, c in zip(raw_actors, chains, strict=True)
            ]
            t0 = time.perf_counter()
            await asyncio.gather(
                *(self.raw.publish_async_chain(c, p) for c, p in zip(chains, prepared, strict=True))
            )
            return writers * per_writer / (time.perf_counter() - t0)

        async def raw_window() -> float:
            nonlocal window_round
            window_round += 1
            messages = []
            for i in range(writers * per_writer):
                ev = make_event(f"pipe-w{window_round:03d}-{i:05d}", 1)
                messages.append((store.subject_for(ev.actor_id), ev.id, ev.to_json()))
            t0 = time.perf_counter()
            await self.raw.publish_async_window(messages)
            return len(messages) / (time.perf_counter() - t0)

        rounds = await run_rounds(
            {
                "aether.save_event": aether_writers,
                "raw.publish_async": raw_writers,
                "raw.publish_async.window": raw_window,
            },
            s.append_rounds,
            self._tick(wid),
        )
        if store.stats.cache_misses != misses:
            raise RuntimeError("the version cache was not warm during the pipelined appends")
        for actor in (store_actors[0], store_actors[-1]):
            if await store.get_latest_version(actor) != versions[actor]:
                raise RuntimeError("aether pipelined append count mismatch")

        point = result.point()
        point.add(
            _series(
                "aether.save_event",
                f"aether save_event, {writers} writers",
                "events/s",
                rounds["aether.save_event"],
            )
        )
        point.add(
            _series(
                "raw.publish_async",
                f"nats-py js.publish_async, {writers} writers, same headers",
                "events/s",
                rounds["raw.publish_async"],
            )
        )
        point.add(
            _series(
                "raw.publish_async.window",
                f"nats-py js.publish_async, {writers * per_writer} at once (fresh subjects)",
                "events/s",
                rounds["raw.publish_async.window"],
            )
        )
        point.ratio("aether.save_event", "raw.publish_async", "vs raw publish_async, same shape")
        point.ratio("aether.save_event", "raw.publish_async.window", "vs raw window (no ordering)")
        self.progress.finish(wid)
        return result

    # -- append: concurrent writers on one hot actor ---------------------------------------

    async def append_hot(self) -> WorkloadResult:
        """``writers`` concurrent writers on one actor: each reads the latest version,
        saves latest + 1 and, on VersionConflictError, tries again with a fresh read.

        aether: ``get_latest_version`` + ``save_event``. raw: ``STREAM.MSG.GET`` of the
        subject's last message + ``js.publish`` expecting that sequence (a wrong-sequence
        answer is the conflict). Reported: successful events/s and conflicts/s.
        Within one process aether serialises each actor's appends (a per-actor lock);
        reads, and the re-read that reports a conflict, run without it.
        """
        wid, s, store = "append_hot", self.sizes, self.store
        result = self._workload(wid, _doc(Bench.append_hot, s))
        self.progress.start(wid, result.title, s.hot_rounds + 1)
        store_actor, raw_actor = "hot-a", "hot-r"
        raw_subject = store.subject_for(raw_actor)
        conflicts: dict[str, list[float]] = {"aether": [], "raw": []}

        async def race(name: str, attempt: Callable[[], Awaitable[bool]]) -> float:
            succeeded = failed = 0

            async def writer() -> None:
                nonlocal succeeded, failed
                while succeeded < s.hot_successes:
                    if await attempt():
                        succeeded += 1
                    else:
                        failed += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(writer() for _ in range(s.writers)))
            elapsed = time.perf_counter() - t0
            conflicts[name].append(failed / elapsed)
            return succeeded / elapsed

        async def aether_attempt() -> bool:
            latest = await store.get_latest_version(store_actor)
            try:
                await store.save_event(make_event(store_actor, latest + 1))
            except VersionConflictError:
                return False
            return True

        async def aether_hot() -> float:
            return await race("aether", aether_attempt)

        async def raw_hot() -> float:
            return await race("raw", lambda: self.raw.hot_attempt(raw_actor, raw_subject))

        rounds = await run_rounds(
            {"aether.hot": aether_hot, "raw.hot": raw_hot}, s.hot_rounds, self._tick(wid)
        )
        point = result.point()
        for key, name, label in (
            ("aether.hot", "aether", "aether get_latest_version + save_event"),
            ("raw.hot", "raw", "nats-py STREAM.MSG.GET + js.publish"),
        ):
            series = point.add(
                _series(key, f"{label}, {s.writers} writers", "events/s", rounds[key])
            )
            series.extra["conflicts_per_s"] = median(conflicts[name][1:])  # [0]: warm-up
            series.extra["conflicts_per_event"] = series.extra["conflicts_per_s"] / series.value
        point.ratio("aether.hot", "raw.hot", "successful events/s vs raw")
        result.notes.append(
            "Conflicts per successful event: aether "
            f"{point.series['aether.hot'].extra['conflicts_per_event']:.1f}, raw "
            f"{point.series['raw.hot'].extra['conflicts_per_event']:.1f}. In one process "
            "aether's per-actor lock serialises the appends (reads run concurrently), so "
            "the appends of the race reach the server one after another."
        )
        self.progress.finish(wid)
        return result

    # -- histories -------------------------------------------------------------------------

    async def populate(self) -> float:
        """Write every history (aether, then each peer). Returns seconds."""
        t0 = time.perf_counter()
        total = sum(self.sizes.history_lengths)
        self.progress.start("populate", f"populate histories ({total:,} events each)", total)
        for length in self.sizes.history_lengths:
            actor = f"hist-{length}"
            history = History(length, actor, self.store.subject_for(actor))
            await populate(self.store, actor, length)
            for peer in self.peers:
                history.peers[peer.key] = peer.create(length)
            self.histories[length] = history
            self.progress.advance("populate", length)
        self.progress.finish("populate")
        return time.perf_counter() - t0

    # -- get_latest_version ----------------------------------------------------------------

    async def latest_version(self) -> WorkloadResult:
        """Latency of asking for an actor's latest version, by history length.

        aether: ``get_latest_version`` (one ``STREAM.MSG.GET last_by_subj`` request, the
        event decoded). raw: the same request with nats-py, ``json.loads`` of the answer
        and of the event. eventsourcing: ``recorder.select_events(id, desc=True,
        limit=1)``. Calls are interleaved one by one across contenders and history
        lengths (in a new random order every time), so all see the same machine state.
        Figures are p50 and p90 (p99 and the mean in the JSON) over every timed call.
        """
        wid, s = "latest_version", self.sizes
        result = self._workload(wid, _doc(Bench.latest_version, s))
        result.x_label = "events in the actor's history"
        calls = s.latency_calls
        self.progress.start(wid, result.title, _LATENCY_WARMUP + calls)

        probes: list[Probe] = []
        for length, history in self.histories.items():
            probes.append(
                (
                    length,
                    "aether.get_latest_version",
                    _bind(self.store.get_latest_version, history.actor),
                )
            )
            probes.append((length, "raw.msg_get", _bind(self.raw.latest_version, history.subject)))
            for peer in self.peers:
                probes.append(
                    (
                        length,
                        f"{peer.key}.select_last",
                        _sync(peer.latest_version, history.peers[peer.key]),
                    )
                )
        samples = await interleaved_latencies(probes, calls, self._tick(wid), "latest version")

        labels = {
            "aether.get_latest_version": "aether get_latest_version",
            "raw.msg_get": "nats-py STREAM.MSG.GET last_by_subj",
        }
        for peer in self.peers:
            labels[f"{peer.key}.select_last"] = f"{peer.label}: select_events(desc, limit=1)"
        for length in self.histories:
            point = result.point(length)
            for key, label in labels.items():
                values = samples[(length, key)]
                point.add(latency_series(key, label, values))
            point.ratio("aether.get_latest_version", "raw.msg_get", "vs raw", speed_of_latency=True)
            for peer in self.peers:
                point.ratio(
                    "aether.get_latest_version",
                    f"{peer.key}.select_last",
                    f"vs {peer.label}",
                    speed_of_latency=True,
                )
        self.progress.finish(wid)
        return result

    # -- replay ----------------------------------------------------------------------------

    async def replay(self) -> WorkloadResult:
        """Reading an actor's whole history, by history length: events/s.

        aether: ``get_events`` (a pull consumer, two batches in flight, each message
        decoded into a validated ``Event`` with a parsed timestamp), and ``iter_events``
        (the same replay streamed, in bounded memory: no list of the whole history). raw
        pull: the same kind of pull consumer in nats-py, messages counted but not decoded
        (the client ceiling). raw ordered: the naive nats-py loop, ordered push consumer with
        ``next_msg`` + ``json.loads``. eventsourcing: ``recorder.select_events`` +
        ``mapper.to_domain_event`` per event (in-process for SQLite: no network hop).
        """
        wid, s = "replay", self.sizes
        result = self._workload(wid, _doc(Bench.replay, s))
        result.x_label = "events in the actor's history"
        total = sum(s.rounds_for(length) + 1 for length in self.histories)
        self.progress.start(wid, result.title, total)
        store = self.store
        for length, history in self.histories.items():

            async def get_events(history: History = history) -> float:
                t0 = time.perf_counter()
                events = await store.get_events(history.actor)
                elapsed = time.perf_counter() - t0
                if len(events) != history.length or events[-1].version != history.length:
                    raise RuntimeError(f"get_events returned {len(events)} events")
                return history.length / elapsed

            async def iter_events(history: History = history) -> float:
                t0 = time.perf_counter()
                count = last = 0
                async for event in store.iter_events(history.actor):
                    count, last = count + 1, event.version
                elapsed = time.perf_counter() - t0
                if count != history.length or last != history.length:
                    raise RuntimeError(f"iter_events yielded {count} events")
                return history.length / elapsed

            contenders: dict[str, Callable[[], Awaitable[float]]] = {
                "aether.get_events": get_events,
                "aether.iter_events": iter_events,
                "raw.pull": _bind(self.raw.replay_pull, history.subject, length),
                "raw.ordered": _bind(self.raw.replay_ordered, history.subject, length),
            }
            for peer in self.peers:
                contenders[f"{peer.key}.decode"] = _sync(
                    peer.select_decode, history.peers[peer.key], length
                )
            rounds = await run_rounds(contenders, s.rounds_for(length), self._tick(wid))
            labels = {
                "aether.get_events": "aether get_events",
                "aether.iter_events": "aether iter_events (bounded memory)",
                "raw.pull": "nats-py pull consumer, no decode (client ceiling)",
                "raw.ordered": "nats-py ordered consumer + json.loads",
            }
            for peer in self.peers:
                labels[f"{peer.key}.decode"] = f"{peer.label}: select_events + to_domain_event"
            point = result.point(length)
            for key, label in labels.items():
                point.add(_series(key, label, "events/s", rounds[key]))
            for peer in self.peers:
                point.ratio("aether.get_events", f"{peer.key}.decode", f"vs {peer.label} decode")
            point.ratio("aether.get_events", "raw.pull", "vs raw pull, no decode (ceiling)")
            point.ratio(
                "aether.iter_events", "raw.pull", "iter_events vs raw pull, no decode (ceiling)"
            )
            point.ratio("aether.get_events", "raw.ordered", "vs nats-py ordered consumer")
        shortest = result.point(min(self.histories))
        if shortest.x is not None and shortest.x <= 10:
            per_call = shortest.x / shortest.series["aether.get_events"].value * 1e3
            result.notes.append(
                f"A replay of {shortest.x} event{'' if shortest.x == 1 else 's'} takes "
                f"{per_call:.1f} ms with aether: on "
                "short histories the fixed cost (creating and deleting a server-side "
                "consumer, the first pull) dominates."
            )
        self.progress.finish(wid)
        return result

    # -- snapshot + tail -------------------------------------------------------------------

    async def snapshot_tail(self) -> WorkloadResult:
        """Rebuilding the longest actor from a snapshot ``snapshot_tail`` events before
        its end, against replaying its whole history. Milliseconds per rebuild.

        aether: ``get_latest_snapshot`` + ``get_events(from_version=snapshot.version + 1)``
        vs ``get_events``. eventsourcing: ``repository.get`` with a snapshot taken at
        the same version (snapshot + later events, applied to the aggregate). The
        rebuilds (a few milliseconds each) run in many interleaved rounds; the full
        replay (seconds) in a few rounds of its own, so that none of the rebuilds is
        timed just after one.
        """
        wid, s, store = "snapshot_tail", self.sizes, self.store
        result = self._workload(wid, _doc(Bench.snapshot_tail, s))
        history = self.histories[max(self.histories)]
        n, tail = history.length, s.snapshot_tail
        result.x_label = "events in the actor's history"
        self.progress.start(wid, result.title, s.snapshot_rounds + s.snapshot_full_rounds + 2)
        snap_version = n - tail
        state = {"balance": sum(range(1, snap_version + 1))}
        await store.save_snapshot(ActorSnapshot(history.actor, snap_version, state))
        for peer in self.peers:
            peer.take_snapshot(history.peers[peer.key], snap_version)

        async def aether_snapshot_tail() -> float:
            t0 = time.perf_counter()
            snapshot = await store.get_latest_snapshot(history.actor)
            if snapshot is None:
                raise RuntimeError("snapshot not found")
            events = await store.get_events(history.actor, from_version=snapshot.version + 1)
            elapsed = time.perf_counter() - t0
            if len(events) != tail:
                raise RuntimeError(f"snapshot tail has {len(events)} events, expected {tail}")
            return elapsed * 1e3

        async def aether_full() -> float:
            t0 = time.perf_counter()
            events = await store.get_events(history.actor)
            elapsed = time.perf_counter() - t0
            if len(events) != n:
                raise RuntimeError(f"get_events returned {len(events)} events")
            return elapsed * 1e3

        contenders: dict[str, Callable[[], Awaitable[float]]] = {
            "aether.snapshot_tail": aether_snapshot_tail,
        }
        for peer in self.peers:
            timed = _sync(peer.snapshot_tail, history.peers[peer.key], n)

            async def in_ms(timed: Callable[[], Awaitable[float]] = timed) -> float:
                return await timed() * 1e3

            contenders[f"{peer.key}.snapshot_tail"] = in_ms
        rounds = await run_rounds(contenders, s.snapshot_rounds, self._tick(wid))
        full = {"aether.full_replay": aether_full}
        rounds |= await run_rounds(full, s.snapshot_full_rounds, self._tick(wid))
        point = result.point(n)
        labels = {
            "aether.snapshot_tail": (
                f"aether get_latest_snapshot + get_events(from_version={n - tail + 1})"
            ),
            "aether.full_replay": f"aether get_events, all {n:,}",
        }
        for peer in self.peers:
            labels[f"{peer.key}.snapshot_tail"] = f"{peer.label}: repository.get with snapshot"
        for key, label in labels.items():
            point.add(_series(key, label, "ms", rounds[key]))
        point.ratio(
            "aether.snapshot_tail",
            "aether.full_replay",
            "speed-up over full replay",
            speed_of_latency=True,
        )
        for peer in self.peers:
            point.ratio(
                "aether.snapshot_tail",
                f"{peer.key}.snapshot_tail",
                f"vs {peer.label} snapshot + tail",
                speed_of_latency=True,
            )
        self.progress.finish(wid)
        return result

    # -- the read side and the bus (benchmarks.subscribe, benchmarks.bus) ------------------

    async def read_stream(self) -> JetStreamEventStore:
        """The subscribe workloads' store, on a stream of its own (created on first use):
        ``subscribe(after=0)`` there reads exactly what these workloads wrote."""
        if self.read_store is None:
            name = f"{self.store.stream_name}_read"
            self.streams += [name, f"{name}_snapshots"]
            self.read_store = await JetStreamEventStore.open(self.raw.nc, name, self.store.config)
        return self.read_store

    async def subscribe_catchup(self) -> WorkloadResult:
        from benchmarks.subscribe import subscribe_catchup

        return await subscribe_catchup(self)

    async def subscribe_live(self) -> WorkloadResult:
        from benchmarks.subscribe import subscribe_live

        return await subscribe_live(self)

    async def bus_local(self) -> WorkloadResult:
        from benchmarks.bus import bus_local

        return await bus_local(self)

    async def bus_nats(self) -> WorkloadResult:
        from benchmarks.bus import bus_nats

        return await bus_nats(self)

    async def load(self) -> WorkloadResult:
        from benchmarks.load import load

        return await load(self)

    # -- the eventsourcing persistence modules (benchmarks.es_module) ---------------------

    async def eventsourcing_save(self) -> WorkloadResult:
        from benchmarks.es_module import eventsourcing_save

        return await eventsourcing_save(self)

    async def eventsourcing_get(self) -> WorkloadResult:
        from benchmarks.es_module import eventsourcing_get

        return await eventsourcing_get(self)

    async def eventsourcing_log(self) -> WorkloadResult:
        from benchmarks.es_module import eventsourcing_log

        return await eventsourcing_log(self)


Probe = tuple[int, str, Callable[[], Awaitable[int]]]


async def interleaved_latencies(
    probes: list[Probe], calls: int, tick: Callable[[], None], what: str
) -> dict[tuple[int, str], list[float]]:
    """Latencies in µs of each probe ``(x, key, call)``, keyed ``(x, key)``: after
    ``_LATENCY_WARMUP`` untimed calls, *calls* timed calls of each, interleaved one by one
    in a new random order every time (all see the same machine state). Each call must
    return its *x* (the *what* it reads: a version, an event count); *tick* runs once per
    round of calls."""
    samples: dict[tuple[int, str], list[float]] = {(x, key): [] for x, key, _ in probes}
    clock = time.perf_counter
    orders = round_orders([str(i) for i in range(len(probes))], _LATENCY_WARMUP + calls)
    for call, order in enumerate(orders):
        for x, key, probe in (probes[int(i)] for i in order):
            t0 = clock()
            got = await probe()
            elapsed = clock() - t0
            if got != x:
                raise RuntimeError(f"{key}: {what} {got}, expected {x}")
            if call >= _LATENCY_WARMUP:
                samples[(x, key)].append(elapsed * 1e6)
        tick()
    return samples


async def populate(store: JetStreamEventStore, actor_id: str, count: int) -> None:
    """Append *count* events to *actor_id* with atomic ``save_events`` batches of 1000."""
    version = await store.get_latest_version(actor_id)
    end = version + count
    while version < end:
        size = min(BATCH, end - version)
        batch = [make_event(actor_id, v) for v in range(version + 1, version + 1 + size)]
        await store.save_events(batch, expected_version=version)
        version += size


# -- helpers -------------------------------------------------------------------------------


def _series(key: str, label: str, unit: str, samples: list[float]) -> Series:
    return Series(key, label, unit, median(samples), samples=list(samples))


def _doc(method: Callable[..., object], sizes: Sizes) -> str:
    """A workload's description: its docstring in one Markdown paragraph, with the sizes
    it names (``writers``, ...) replaced by their values."""

    def literal(match: re.Match[str]) -> str:
        name = match.group(1)
        value = getattr(sizes, name, None)
        return f"{value:,}" if isinstance(value, int) else f"`{name}`"

    return re.sub(r"``([^`]+)``", literal, " ".join((method.__doc__ or "").split()))


def _bind(
    func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
) -> Callable[[], Awaitable[T]]:
    async def bound() -> T:
        return await func(*args, **kwargs)

    return bound


def _sync(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Callable[[], Awaitable[T]]:
    """An eventsourcing call: synchronous, so it blocks the loop (nothing else runs)."""

    async def call() -> T:
        return func(*args, **kwargs)

    return call
