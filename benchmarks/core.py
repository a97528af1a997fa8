"""Core benchmarks of aether's JetStream event store, each next to its baseline in one run.

Run it with ``.venv/bin/python benchmarks/core.py`` (``--quick`` for a smoke run,
``--events N`` for the replay history length). It starts one embedded ``nats-server``
(file storage, temp dir) and measures:

1. **append**: warm-cache ``JetStreamEventStore.save_event`` vs raw nats-py
   ``js.publish`` with the same headers (``Nats-Msg-Id`` and a correctly chained
   ``Nats-Expected-Last-Subject-Sequence``) and same-size, pre-encoded payloads, on the
   same stream; as alternating tight loops and interleaved append by append.
2. **get_latest_version** p50/p90 on an actor with N events vs an actor with 1 event.
3. **replay**: ``get_events`` / ``iter_events`` of the N-event actor vs the naive nats-py
   loop (ordered push consumer, ``next_msg`` + ``json.loads`` per message).
4. **peer**: the ``eventsourcing`` library (SQLite recorder, file in a temp dir) reading
   back one aggregate of N events: ``recorder.select_events`` + ``mapper.to_domain_event``
   (the counterpart of ``get_events``), and ``app.repository.get`` (also applies them).

Fairness on a shared, noisy machine: contenders and baselines share the server, the stream
and the client connection, run in alternating order within each round (rounds repeated,
one untimed warm-up round first), and the reported figure is the median over rounds; the
ratio compares medians measured in this same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import nats
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from nats.aio.client import Client
from nats.js import JetStreamContext

from aether import Event
from aether.store import JetStreamEventStore
from aether.testing import NatsServer

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "core.json"
STREAM = "bench"
BATCH = 1000  # save_events batch size (the server's atomic batch limit)

Timed = Callable[[], Awaitable[float]]


@dataclass(frozen=True)
class Params:
    """Sizes of one run."""

    events: int  # history length of the replayed / "big" actor
    rounds: int  # timed replay rounds (plus one untimed warm-up round)
    append_rounds: int  # timed append rounds (plus one untimed warm-up round)
    appends: int  # appends per contender per append round
    latency_calls: int  # get_latest_version calls per actor (after 50 warm-up calls)


FULL = Params(events=20_000, rounds=9, append_rounds=30, appends=250, latency_calls=5_000)
QUICK = Params(events=2_000, rounds=3, append_rounds=8, appends=100, latency_calls=500)


@dataclass
class Row:
    """One line of the report: a contender, its baseline and their ratio."""

    workload: str
    unit: str
    aether: float
    baseline_name: str
    baseline: float
    ratio: float
    target_kind: Literal["min", "max", "info"]
    target: float | None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.target_kind == "info":
            return None
        if self.target_kind == "min":
            return self.ratio >= self.target
        return self.ratio <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "peer"
        return f"{'>=' if self.target_kind == 'min' else '<='} {self.target:.2f}x"


# -- helpers -------------------------------------------------------------------------------


def make_event(actor_id: str, version: int) -> Event:
    """The event used everywhere: a small, typical domain event (~200 bytes of JSON)."""
    return Event(
        event_type="Deposited",
        actor_id=actor_id,
        version=version,
        data={"amount": version, "currency": "EUR", "note": "benchmark deposit"},
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def paired_ratio(contender: Sequence[float], baseline: Sequence[float]) -> float:
    """Median of the per-round ratios (a cross-check of the ratio of medians)."""
    return statistics.median(c / b for c, b in zip(contender, baseline, strict=True))


async def run_rounds(contenders: dict[str, Timed], rounds: int) -> dict[str, list[float]]:
    """Run every contender once per round, rotating the order each round.

    Round 0 is an untimed warm-up. Returns each contender's per-round results.
    """
    names = list(contenders)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(rounds + 1):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            value = await contenders[name]()
            if round_no > 0:
                results[name].append(value)
    return results


# -- 1. append -----------------------------------------------------------------------------


class AppendPair:
    """The two appenders of the append benchmark, each on its own actor of one stream.

    Both get ready-made input (aether: ``Event`` objects; raw: their ``to_json()`` bytes
    and ids), so aether's validation and encoding count against it. Both wait for each
    ack before the next append (sequential, one writer) and both carry ``Nats-Msg-Id``
    and ``Nats-Expected-Last-Subject-Sequence`` (the raw side chains it from each ack), so
    the server does the same dedup and concurrency check for both. The actor ids have the
    same length, so payloads and headers have the same size.
    """

    def __init__(self, store: JetStreamEventStore, js: JetStreamContext) -> None:
        self.store = store
        self.js = js
        self.store_actor, self.raw_actor = "append-s", "append-r"
        self.raw_subject = store.subject_for(self.raw_actor)
        self.store_version = self.raw_version = self.raw_seq = 0

    async def warm(self) -> None:
        """Fill the store's cache for its actor (a miss: one read, then the append)."""
        self.store_version += 1
        await self.store.save_event(make_event(self.store_actor, self.store_version))

    def store_events(self, n: int) -> list[Event]:
        first = self.store_version + 1
        self.store_version += n
        return [make_event(self.store_actor, v) for v in range(first, first + n)]

    def raw_payloads(self, n: int) -> list[tuple[str, bytes]]:
        first = self.raw_version + 1
        self.raw_version += n
        events = [make_event(self.raw_actor, v) for v in range(first, first + n)]
        return [(ev.id, ev.to_json()) for ev in events]

    async def raw_publish(self, msg_id: str, payload: bytes) -> None:
        headers = {
            "Nats-Msg-Id": msg_id,
            "Nats-Expected-Last-Subject-Sequence": str(self.raw_seq),
        }
        ack = await self.js.publish(self.raw_subject, payload, headers=headers)
        self.raw_seq = ack.seq

    async def check(self) -> None:
        """Every append landed, and the store never had to read before a write."""
        if self.store.stats.cache_misses != 1:
            raise RuntimeError("the version cache was not warm during the append benchmark")
        if await self.store.get_latest_version(self.store_actor) != self.store_version:
            raise RuntimeError("aether append count mismatch")
        if await self.store.get_latest_version(self.raw_actor) != self.raw_version:
            raise RuntimeError("raw append count mismatch")


async def bench_append(store: JetStreamEventStore, js: JetStreamContext, p: Params) -> list[Row]:
    """Warm-cache ``save_event`` vs ``js.publish``, measured two ways in the same run.

    * **loops**: each round times a tight loop of ``appends`` appends per side, the two
      loops alternating (order flipped every round). This is the plain sequential
      throughput a writer loop sees, with each side's code hot in the CPU caches.
    * **interleaved**: each round alternates the two sides append by append (pair order
      flipped every pair) and sums each side's time. Both sides see exactly the same
      machine state, which removes drift from a noisy host; and, as in an application
      that runs its own code between appends, neither side's code stays hot, so every
      layer of Python per append counts fully.
    """
    pair = AppendPair(store, js)
    await pair.warm()

    async def store_loop() -> float:
        events = pair.store_events(p.appends)
        t0 = time.perf_counter()
        for ev in events:
            await store.save_event(ev)
        return p.appends / (time.perf_counter() - t0)

    async def raw_loop() -> float:
        prepared = pair.raw_payloads(p.appends)
        t0 = time.perf_counter()
        for msg_id, payload in prepared:
            await pair.raw_publish(msg_id, payload)
        return p.appends / (time.perf_counter() - t0)

    loops = await run_rounds({"aether": store_loop, "raw": raw_loop}, p.append_rounds)

    interleaved: dict[str, list[float]] = {"aether": [], "raw": []}
    clock = time.perf_counter
    for round_no in range(p.append_rounds + 1):  # round 0: warm-up
        events = pair.store_events(p.appends)
        prepared = pair.raw_payloads(p.appends)
        spent_store = spent_raw = 0.0
        gc.collect()
        for i, (ev, (msg_id, payload)) in enumerate(zip(events, prepared, strict=True)):
            if i % 2 == 0:
                t0 = clock()
                await store.save_event(ev)
                t1 = clock()
                await pair.raw_publish(msg_id, payload)
                t2 = clock()
                spent_store += t1 - t0
                spent_raw += t2 - t1
            else:
                t0 = clock()
                await pair.raw_publish(msg_id, payload)
                t1 = clock()
                await store.save_event(ev)
                t2 = clock()
                spent_raw += t1 - t0
                spent_store += t2 - t1
        if round_no > 0:
            interleaved["aether"].append(p.appends / spent_store)
            interleaved["raw"].append(p.appends / spent_raw)
    await pair.check()

    rows = []
    for label, results in (("loops", loops), ("interleaved", interleaved)):
        aether, raw = statistics.median(results["aether"]), statistics.median(results["raw"])
        rows.append(
            Row(
                workload=f"append: save_event, warm cache ({label})",
                unit="events/s",
                aether=aether,
                baseline_name="nats-py js.publish (same headers, pre-encoded payload)",
                baseline=raw,
                ratio=aether / raw,
                target_kind="min",
                target=0.9,
                detail={
                    "appends_per_round": p.appends,
                    "paired_ratio_median": paired_ratio(results["aether"], results["raw"]),
                    "rounds": results,
                },
            )
        )
    return rows


# -- population ----------------------------------------------------------------------------


async def populate(store: JetStreamEventStore, actor_id: str, count: int) -> float:
    """Write *count* events to *actor_id* with atomic ``save_events`` batches; returns s."""
    t0 = time.perf_counter()
    version = await store.get_latest_version(actor_id)
    end = version + count
    while version < end:
        size = min(BATCH, end - version)
        batch = [make_event(actor_id, v) for v in range(version + 1, version + 1 + size)]
        if size == 1:
            await store.save_event(batch[0])
        else:
            await store.save_events(batch, expected_version=version)
        version += size
    return time.perf_counter() - t0


# -- 2. get_latest_version -----------------------------------------------------------------


async def bench_latest_version(
    store: JetStreamEventStore, big: str, small: str, p: Params
) -> tuple[Row, Row]:
    """``get_latest_version`` latency on the N-event actor vs the 1-event actor.

    Calls alternate big/small one by one (order flipped every pair), so both see the same
    machine noise; p50 and p90 are over all timed calls of each actor.
    """
    lat: dict[str, list[float]] = {big: [], small: []}
    expected = {big: p.events, small: 1}
    warmup = 50
    total = warmup + p.latency_calls
    for i in range(total):
        pair = (big, small) if i % 2 == 0 else (small, big)
        for actor in pair:
            t0 = time.perf_counter()
            got = await store.get_latest_version(actor)
            elapsed = time.perf_counter() - t0
            if got != expected[actor]:
                raise RuntimeError(f"{actor}: latest version {got}, expected {expected[actor]}")
            if i >= warmup:
                lat[actor].append(elapsed * 1e6)
    rows = []
    for name, q in (("p50", 0.5), ("p90", 0.9)):
        b, s = percentile(lat[big], q), percentile(lat[small], q)
        rows.append(
            Row(
                workload=f"get_latest_version {name}: {p.events} events vs 1",
                unit="us",
                aether=b,
                baseline_name="same call, 1-event actor",
                baseline=s,
                ratio=b / s,
                target_kind="max",
                target=1.2,
                detail={"calls_per_actor": len(lat[big])},
            )
        )
    return rows[0], rows[1]


# -- 3 & 4. replay and the eventsourcing peer ----------------------------------------------


class Account(Aggregate):
    """The peer's aggregate: the same kind of deposit events as aether's benchmark events."""

    def __init__(self) -> None:
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int, currency: str, note: str) -> None:
        self.balance += amount


class Peer:
    """The ``eventsourcing`` library (9.x) with its SQLite recorder in a temp file."""

    def __init__(self, db_path: Path, count: int) -> None:
        self.count = count
        self.app: Application[UUID] = Application(
            env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(db_path)}
        )
        account = Account()  # version 1: the Created event
        for v in range(2, count + 1):
            account.deposit(v, "EUR", "benchmark deposit")
        self.app.save(account)
        self.account_id = account.id

    def select_and_decode(self) -> float:
        """``recorder.select_events`` + ``mapper.to_domain_event`` for each: events/s."""
        t0 = time.perf_counter()
        stored = self.app.recorder.select_events(self.account_id)
        decoded = [self.app.mapper.to_domain_event(s) for s in stored]
        elapsed = time.perf_counter() - t0
        if len(decoded) != self.count:
            raise RuntimeError(f"peer decoded {len(decoded)} events, expected {self.count}")
        return self.count / elapsed

    def repository_get(self) -> float:
        """``app.repository.get(id)``: select, decode and apply every event (events/s)."""
        t0 = time.perf_counter()
        account: Account = self.app.repository.get(self.account_id)
        elapsed = time.perf_counter() - t0
        if account.version != self.count:
            raise RuntimeError(f"peer aggregate at version {account.version}")
        return self.count / elapsed


async def bench_replay(
    store: JetStreamEventStore, js: JetStreamContext, big: str, peer: Peer, p: Params
) -> list[Row]:
    """Replay of the N-event actor: aether vs the naive nats-py loop and the peer.

    The naive loop is ``js.subscribe(subject, ordered_consumer=True)`` (given the stream
    name, sparing it a stream lookup) and ``next_msg`` + ``json.loads`` per message; its
    timing includes subscribing and unsubscribing, as aether's includes creating and
    deleting its consumer. aether decodes full ``Event`` objects (validated, timestamps
    parsed), the naive loop only dicts, so the comparison does not favour aether.
    """
    subject = store.subject_for(big)
    n = p.events

    async def aether_get_events() -> float:
        t0 = time.perf_counter()
        events = await store.get_events(big)
        elapsed = time.perf_counter() - t0
        if len(events) != n or events[-1].version != n:
            raise RuntimeError(f"get_events returned {len(events)} events")
        return n / elapsed

    async def aether_iter_events() -> float:
        count = 0
        t0 = time.perf_counter()
        async for _ in store.iter_events(big):
            count += 1
        elapsed = time.perf_counter() - t0
        if count != n:
            raise RuntimeError(f"iter_events yielded {count} events")
        return n / elapsed

    async def naive() -> float:
        t0 = time.perf_counter()
        sub = await js.subscribe(subject, ordered_consumer=True, stream=store.stream_name)
        count = 0
        last: dict[str, Any] = {}
        while count < n:
            msg = await sub.next_msg(timeout=5)
            last = json.loads(msg.data)
            count += 1
        await sub.unsubscribe()
        elapsed = time.perf_counter() - t0
        if last.get("version") != n:
            raise RuntimeError("naive replay ended on the wrong message")
        return n / elapsed

    async def peer_select() -> float:
        return peer.select_and_decode()

    async def peer_repository() -> float:
        return peer.repository_get()

    results = await run_rounds(
        {
            "get_events": aether_get_events,
            "naive": naive,
            "iter_events": aether_iter_events,
            "es_select": peer_select,
            "es_repository": peer_repository,
        },
        p.rounds,
    )
    med = {name: statistics.median(values) for name, values in results.items()}
    detail = {"events": n, "rounds": results}

    def paired(name: str, baseline: str) -> dict[str, Any]:
        return {"paired_ratio_median": paired_ratio(results[name], results[baseline])}

    naive_name = "nats-py ordered consumer + next_msg"
    return [
        Row(
            workload=f"replay: get_events ({n} events)",
            unit="events/s",
            aether=med["get_events"],
            baseline_name=naive_name,
            baseline=med["naive"],
            ratio=med["get_events"] / med["naive"],
            target_kind="min",
            target=1.5,
            detail={**paired("get_events", "naive"), **detail},
        ),
        Row(
            workload=f"replay: iter_events ({n} events)",
            unit="events/s",
            aether=med["iter_events"],
            baseline_name=naive_name,
            baseline=med["naive"],
            ratio=med["iter_events"] / med["naive"],
            target_kind="min",
            target=1.5,
            detail=paired("iter_events", "naive"),
        ),
        Row(
            workload=f"peer: get_events vs eventsourcing select+decode ({n})",
            unit="events/s",
            aether=med["get_events"],
            baseline_name="eventsourcing SQLite select_events + to_domain_event",
            baseline=med["es_select"],
            ratio=med["get_events"] / med["es_select"],
            target_kind="info",
            target=None,
            detail=paired("get_events", "es_select"),
        ),
        Row(
            workload=f"peer: get_events vs eventsourcing repository.get ({n})",
            unit="events/s",
            aether=med["get_events"],
            baseline_name="eventsourcing SQLite repository.get (replays aggregate)",
            baseline=med["es_repository"],
            ratio=med["get_events"] / med["es_repository"],
            target_kind="info",
            target=None,
            detail=paired("get_events", "es_repository"),
        ),
    ]


# -- report --------------------------------------------------------------------------------


def format_value(value: float, unit: str) -> str:
    if unit == "us":
        return f"{value:,.0f} us"
    return f"{value:,.0f}/s"


def render(rows: Sequence[Row]) -> str:
    header = ("workload", "aether", "baseline", "ratio", "target", "result")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        result = {True: "PASS", False: "FAIL", None: "-"}[row.passed]
        lines.append(
            (
                row.workload,
                format_value(row.aether, row.unit),
                format_value(row.baseline, row.unit),
                f"{row.ratio:.2f}x",
                row.target_text(),
                result,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells))
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    out.append("baselines:")
    seen: set[str] = set()
    for row in rows:
        if row.baseline_name not in seen:
            seen.add(row.baseline_name)
            out.append(f"  - {row.baseline_name}")
    return "\n".join(out)


def environment(nc: Client) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "nats_server": str(nc.connected_server_version),
        "nats_py": dist_version("nats-py"),
        "eventsourcing": dist_version("eventsourcing"),
        "aether": dist_version("aether"),
    }


# -- main ----------------------------------------------------------------------------------


async def run(p: Params) -> tuple[list[Row], dict[str, Any]]:
    """Run every workload against one fresh server; returns the rows and the JSON report."""
    started = time.perf_counter()
    async with NatsServer() as server:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            store = await JetStreamEventStore.open(nc, STREAM)
            env = environment(nc)
            print(
                f"nats-server {env['nats_server']}, file storage; {p.events} events, "
                f"{p.append_rounds} append / {p.rounds} replay rounds (+1 warm-up each)",
                flush=True,
            )
            rows = await bench_append(store, js, p)
            print("append done", flush=True)

            big, small = "replay-big", "replay-one"
            fill_s = await populate(store, big, p.events)
            await store.save_event(make_event(small, 1))
            print(f"populated {p.events} events in {fill_s:.1f}s", flush=True)
            rows.extend(await bench_latest_version(store, big, small, p))
            print("get_latest_version done", flush=True)

            with tempfile.TemporaryDirectory(prefix="aether-bench-") as tmp:
                t0 = time.perf_counter()
                peer = Peer(Path(tmp) / "peer.sqlite", p.events)
                print(f"eventsourcing peer populated in {time.perf_counter() - t0:.1f}s")
                rows.extend(await bench_replay(store, js, big, peer, p))
                peer.app.close()
            print("replay done\n", flush=True)
        finally:
            await nc.close()

    elapsed = time.perf_counter() - started
    report = {
        "benchmark": "core",
        "when": datetime.now(UTC).isoformat(),
        "params": asdict(p),
        "environment": env,
        "elapsed_s": elapsed,
        "rows": [
            {
                **{k: v for k, v in asdict(row).items() if k != "detail"},
                "target": row.target_text(),
                "passed": row.passed,
                "detail": row.detail,
            }
            for row in rows
        ],
    }
    return rows, report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; returns 0 if every target is met, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--events", type=int, help="history length of the replayed actor")
    parser.add_argument("--rounds", type=int, help="timed rounds per workload")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    args = parser.parse_args(argv)
    p = QUICK if args.quick else FULL
    if args.events is not None:
        if args.events < 2:
            parser.error("--events must be at least 2")
        p = replace(p, events=args.events)
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        p = replace(p, rounds=args.rounds, append_rounds=args.rounds)
    rows, report = asyncio.run(run(p))
    print(render(rows))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\ntotal {report['elapsed_s']:.0f}s; results in {args.output}")
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
