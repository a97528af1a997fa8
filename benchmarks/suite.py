"""Running the whole suite: connect, set up the baselines, run the workloads, judge targets."""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import nats
from nats.aio.client import Client

import aether
from aether.store import JetStreamConfig, JetStreamEventStore
from benchmarks.baselines import (
    PostgresSetup,
    RawNats,
    load_eventsourcing,
    open_postgres_peer,
    open_sqlite_peer,
)
from benchmarks.es_module import ES_WORKLOADS, es_targets
from benchmarks.load import load_targets
from benchmarks.model import (
    FULL,
    QUICK,
    WORKLOADS,
    NullProgress,
    ProgressSink,
    Sizes,
    Skipped,
    SuiteResult,
    Target,
)
from benchmarks.workloads import Bench

if TYPE_CHECKING:
    from benchmarks._eventsourcing import EsPeer

__all__ = ["DEFAULT_OUT_DIR", "POSTGRES_DSN_ENV", "Connector", "SuiteOptions", "run_suite"]

#: this checkout's ``benchmarks/results``, wherever the suite is run from
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"
POSTGRES_DSN_ENV = "AETHER_BENCH_POSTGRES_DSN"
_HISTORY_WORKLOADS = ("latest_version", "replay", "snapshot_tail")
_PEER_WORKLOADS = ("append_single", *_HISTORY_WORKLOADS, "load", *ES_WORKLOADS)

#: a NATS URL, or a coroutine function returning a connected client
Connector = str | Callable[[], Awaitable[Client]]


@dataclass(frozen=True)
class SuiteOptions:
    """What to run and where to write it."""

    #: the small preset (a smoke run, well under a minute); ignored if ``sizes`` is given
    quick: bool = False
    #: explicit sizes (tests use tiny ones)
    sizes: Sizes | None = None
    #: directory for results.json, results.md and the charts; None writes nothing
    out_dir: Path | None = DEFAULT_OUT_DIR
    #: DSN of a PostgreSQL server for the eventsourcing/PostgreSQL baseline
    postgres_dsn: str | None = None
    #: draw the PNG charts (needs matplotlib)
    charts: bool = True
    #: workload ids (or prefixes such as "append") to run; empty runs all
    only: tuple[str, ...] = ()
    #: how the server was obtained, for the report (e.g. "embedded nats-server")
    server: str = ""
    #: the server's URL for the bus workload's processes, when ``connect`` is not a URL
    #: (without either, that workload starts a server of its own)
    url: str | None = None
    #: the events stream's storage
    storage: Literal["file", "memory"] = "file"
    #: the command that produced the run, for the report
    command: str = "python -m benchmarks.run"
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_sizes(self) -> Sizes:
        if self.sizes is not None:
            return self.sizes
        return QUICK if self.quick else FULL

    def selected(self) -> list[str]:
        """The workload ids to run, in suite order. Raises ValueError for an unknown name."""
        if not self.only:
            return list(WORKLOADS)
        chosen: set[str] = set()
        for name in self.only:
            matches = [w for w in WORKLOADS if w == name or w.startswith(f"{name}_")]
            if not matches:
                raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")
            chosen.update(matches)
        return [w for w in WORKLOADS if w in chosen]


async def run_suite(
    connect: Connector,
    options: SuiteOptions | None = None,
    progress: ProgressSink | None = None,
) -> SuiteResult:
    """Run the selected workloads and their baselines; write the results if asked.

    Creates its own uniquely named streams on the server and deletes them at the end.
    Raises BenchDependencyError up front if an optional dependency is missing.
    """
    options = options or SuiteOptions()
    progress = progress or NullProgress()
    selected = options.selected()
    sizes = options.resolved_sizes()
    needs_peers = any(w in selected for w in _PEER_WORKLOADS)
    if needs_peers:
        load_eventsourcing()
    if "bus_nats" in selected and options.url is None and not isinstance(connect, str):
        from aether.testing import find_nats_server

        find_nats_server()  # NatsServerNotFoundError now rather than after the other workloads
    if options.charts and options.out_dir is not None:
        from benchmarks import charts

        charts.check_available()

    started = time.perf_counter()

    async def open_connection() -> Client:
        return await (nats.connect(connect) if isinstance(connect, str) else connect())

    nc = await open_connection()
    result = SuiteResult(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        environment=_environment(nc, options),
        parameters={
            "preset": "custom" if options.sizes else ("quick" if options.quick else "full"),
            "workloads": selected,
            "storage": options.storage,
            **asdict(sizes),
            **options.extra,
        },
        baselines={
            "raw": "nats-py used directly: the same JetStream operations and headers, "
            "pre-encoded payloads where possible (the client ceiling)",
        },
    )
    if "bus_local" in selected:
        result.baselines["asyncio"] = (
            "plain asyncio: the bus's fan-out hand-written with one asyncio.Queue per subscriber"
        )
    stream = f"aether_bench_{secrets.token_hex(3)}"
    extra_streams: list[str] = []
    try:
        store = await JetStreamEventStore.open(nc, stream, JetStreamConfig(storage=options.storage))
        try:
            with tempfile.TemporaryDirectory(prefix="aether-bench-") as tmp:
                peers, postgres = _open_peers(options, needs_peers, Path(tmp), result)
                try:
                    bench = Bench(
                        store,
                        RawNats(nc, nc.jetstream(), store.stream_name),
                        sizes,
                        progress,
                        peers,
                        connect=open_connection,
                        url=connect if isinstance(connect, str) else options.url,
                        streams=extra_streams,
                    )
                    try:
                        await _run_workloads(bench, selected, result, progress)
                    finally:
                        for close in bench.closers:
                            with contextlib.suppress(Exception):
                                close()
                finally:
                    for peer in peers:
                        if postgres is None or peer is not postgres.peer:
                            peer.close()
                    if postgres is not None:
                        postgres.close()
        finally:
            for name in (store.stream_name, f"{store.stream_name}_snapshots", *extra_streams):
                with contextlib.suppress(Exception):
                    await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=10)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    result.elapsed_s = time.perf_counter() - started
    result.targets = evaluate_targets(result, sizes)

    if options.out_dir is not None:
        from benchmarks import report

        result.files.update(report.write(result, options.out_dir))
        if options.charts:
            from benchmarks import charts

            result.files.update(charts.write(result, options.out_dir))
    return result


def _open_peers(
    options: SuiteOptions, needs_peers: bool, tmp: Path, result: SuiteResult
) -> tuple[list[EsPeer], PostgresSetup | None]:
    if not needs_peers:
        return [], None
    peers = [open_sqlite_peer(tmp)]
    result.environment["sqlite"] = sqlite3.sqlite_version
    result.baselines["es_sqlite"] = (
        f"eventsourcing {_version('eventsourcing')} with its SQLite recorder "
        "(a file in a temp dir, default settings), in-process"
    )
    postgres: PostgresSetup | None = None
    if not options.postgres_dsn:
        result.skipped.append(
            Skipped(
                "eventsourcing on PostgreSQL",
                'no PostgreSQL DSN given: run `eval "$(benchmarks/setup_postgres.sh)"` '
                f"(sets {POSTGRES_DSN_ENV}) or pass --postgres-dsn",
            )
        )
        return peers, None
    try:
        postgres = open_postgres_peer(options.postgres_dsn)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        result.skipped.append(
            Skipped("eventsourcing on PostgreSQL", f"cannot use the given DSN: {reason}")
        )
        return peers, None
    peers.append(postgres.peer)
    result.environment["postgresql"] = postgres.server_version
    result.baselines["es_postgres"] = (
        f"eventsourcing {_version('eventsourcing')} with its PostgreSQL recorder "
        f"(PostgreSQL {postgres.server_version}, psycopg {_version('psycopg')}, "
        "a throwaway schema, default settings)"
    )
    return peers, postgres


async def _run_workloads(
    bench: Bench, selected: list[str], result: SuiteResult, progress: ProgressSink
) -> None:
    populated = False
    for workload_id in selected:
        if workload_id in _HISTORY_WORKLOADS and not populated:
            seconds = await bench.populate()
            result.parameters["populate_s"] = round(seconds, 2)
            progress.message(f"histories written in {seconds:.1f}s")
            populated = True
        t0 = time.perf_counter()
        workload = await getattr(bench, workload_id)()
        workload.elapsed_s = time.perf_counter() - t0
        result.workloads.append(workload)
        progress.message(f"{workload.title}: {workload.elapsed_s:.1f}s")


# -- targets -------------------------------------------------------------------------------


def evaluate_targets(result: SuiteResult, sizes: Sizes) -> list[Target]:
    """The goals, each a ratio to a baseline of the same run, with an honest comment."""
    longest = max(sizes.history_lengths)
    lengths = _throughput_lengths(sizes)
    span = _span(lengths)
    targets = [
        Target(
            "pipelined_vs_publish_async",
            f"{sizes.writers} pipelined writers: save_event vs raw js.publish_async",
            "append_pipelined",
            "min",
            0.7,
            primary=True,
        ),
        Target(
            "replay_vs_es_sqlite",
            f"replay of {span}: get_events vs eventsourcing SQLite decode",
            "replay",
            "min",
            1.0,
            primary=True,
        ),
        Target(
            "single_vs_js_publish",
            "1 writer: warm-cache save_event vs raw js.publish (loops)",
            "append_single",
            "min",
            0.9,
            primary=False,
        ),
        Target(
            "latest_version_flat",
            f"get_latest_version p50: {longest:,}-event actor vs 1-event actor (latency)",
            "latest_version",
            "max",
            1.2,
            primary=False,
        ),
        Target(
            "replay_vs_ordered_consumer",
            f"replay of {span}: get_events vs nats-py ordered consumer",
            "replay",
            "min",
            1.5,
            primary=False,
        ),
        Target(
            "long_replay_vs_ceiling",
            f"replay of {_span(_long_lengths(sizes))}: get_events vs the nats-py counting ceiling",
            "replay",
            "min",
            0.8,
            primary=True,
        ),
        Target(
            "snapshot_tail_vs_es_sqlite",
            f"snapshot + {sizes.snapshot_tail:,} events on a {longest:,}-event actor vs "
            "eventsourcing SQLite repository.get with a snapshot",
            "snapshot_tail",
            "min",
            1.0,
            primary=True,
        ),
        Target(
            "catchup_vs_get_events",
            f"catch-up of {sizes.catchup_events:,} events of {sizes.catchup_actors:,} actors: "
            "subscribe vs get_events of as many events",
            "subscribe_catchup",
            "min",
            0.8,
            primary=True,
        ),
        Target(
            "live_vs_round_trip",
            "live subscribe, append start to delivery on another connection: p50 vs one "
            "get_latest_version round trip (latency)",
            "subscribe_live",
            "max",
            2.0,
            primary=True,
        ),
    ]
    for target in targets:
        _judge(target, result, longest, lengths)
    return targets + load_targets(result) + es_targets(result, sizes)


def _ratio(
    result: SuiteResult, workload: str, x: int | None, contender: str, baseline: str
) -> float | None:
    found = result.workload(workload)
    if found is None:
        return None
    for point in found.points:
        if point.x == x:
            for ratio in point.ratios:
                if (ratio.contender, ratio.baseline) == (contender, baseline):
                    return ratio.value
    return None


def _value(result: SuiteResult, workload: str, x: int | None, key: str) -> float | None:
    found = result.workload(workload)
    if found is None:
        return None
    for point in found.points:
        if point.x == x and key in point.series:
            return point.series[key].value
    return None


def _judge(target: Target, result: SuiteResult, longest: int, lengths: list[int]) -> None:
    if target.id == "pipelined_vs_publish_async":
        target.value = _ratio(
            result, "append_pipelined", None, "aether.save_event", "raw.publish_async"
        )
        window = _ratio(
            result, "append_pipelined", None, "aether.save_event", "raw.publish_async.window"
        )
        if target.value is not None and window is not None:
            target.comment = (
                "Same shape on both sides: one append in flight per actor, since the next "
                "expected sequence is only known from the ack. Against publish_async with "
                f"every message in flight at once (no per-actor ordering) aether reaches "
                f"{window:.2f}x; no ordered writer can reach that window."
            )
            if not target.passed:
                target.comment += (
                    " Below target: aether's per-append client work (encoding, validation, "
                    "lock, cache, request bookkeeping) costs more than the raw loop's."
                )
    elif target.id == "replay_vs_es_sqlite":
        x = _judge_replay(target, result, "es_sqlite.decode", lengths)
        if not x:
            return
        ceiling = _value(result, "replay", x, "raw.pull")
        es = _value(result, "replay", x, "es_sqlite.decode")
        aether = _value(result, "replay", x, "aether.get_events")
        target.comment = _per_length(result, "es_sqlite.decode") + "."
        if ceiling and es and aether:
            target.comment += (
                f" At {x:,} events the client ceiling (a nats-py pull consumer that counts "
                f"messages without decoding them) reaches {ceiling:,.0f} events/s, "
                f"{ceiling / es:.2f}x the SQLite decode rate, and aether {aether / ceiling:.2f}x "
                f"of that ceiling: nats-py's per-message work costs {1e6 / ceiling:.1f} µs per "
                f"event, aether's own (its pull loop, decoding and validating each Event) "
                f"{1e6 / aether - 1e6 / ceiling:.1f} µs more, against {1e6 / es:.1f} µs per "
                f"event for SQLite."
            )
            if ceiling < es:
                target.comment += (
                    " Even without decoding, nats-py cannot reach SQLite's rate: every "
                    "JetStream message is parsed (protocol line and headers) in Python, while "
                    "SQLite rows are fetched in C, in-process, with no network hop."
                )
    elif target.id == "single_vs_js_publish":
        target.value = _ratio(result, "append_single", None, "aether.save_event", "raw.js_publish")
        interleaved = _ratio(
            result,
            "append_single",
            None,
            "aether.save_event.interleaved",
            "raw.js_publish.interleaved",
        )
        if interleaved is not None:
            target.comment = (
                f"Interleaved append by append (the same machine state for both): "
                f"{interleaved:.2f}x. One round trip per append either way."
            )
    elif target.id == "latest_version_flat":
        big = _value(result, "latest_version", longest, "aether.get_latest_version")
        workload = result.workload("latest_version")
        small_x = min(p.x for p in workload.points if p.x is not None) if workload else None
        small = _value(result, "latest_version", small_x, "aether.get_latest_version")
        if big and small and small_x != longest:
            target.value = big / small
            target.comment = "One request whatever the history length (no scan)."
    elif target.id == "replay_vs_ordered_consumer" and _judge_replay(
        target, result, "raw.ordered", lengths
    ):
        target.comment = _per_length(result, "raw.ordered") + "."
    elif target.id == "long_replay_vs_ceiling":
        x = _judge_replay(target, result, "raw.pull", _long_lengths_run(result))
        if x:
            ceiling = _value(result, "replay", x, "raw.pull")
            aether = _value(result, "replay", x, "aether.get_events")
            if ceiling and aether:
                target.comment = (
                    f"At {x:,} events: nats-py alone (a pull consumer counting messages) "
                    f"{1e6 / ceiling:.1f} µs per event, aether {1e6 / aether - 1e6 / ceiling:.1f} "
                    "µs more (its pull loop, decoding and validating each Event)."
                )
                streamed = _value(result, "replay", x, "aether.iter_events")
                if streamed:
                    target.comment += (
                        f" iter_events, which keeps no list of the history: "
                        f"{streamed / ceiling:.2f}x of the ceiling."
                    )
    elif target.id == "snapshot_tail_vs_es_sqlite":
        target.value = _ratio(
            result, "snapshot_tail", longest, "aether.snapshot_tail", "es_sqlite.snapshot_tail"
        )
    elif target.id == "catchup_vs_get_events":
        _judge_catchup(target, result)
    elif target.id == "live_vs_round_trip":
        _judge_live(target, result)


def _judge_catchup(target: Target, result: SuiteResult) -> None:
    wid, main = "subscribe_catchup", "aether.subscribe"
    target.value = _ratio(result, wid, None, main, "aether.get_events.one_actor")
    per_actor = _ratio(result, wid, None, main, "aether.get_events.per_actor")
    if target.value is None or per_actor is None:
        return
    target.comment = (
        "Compared with get_events of one actor holding as many events: the same event "
        "count and sizes through one consumer on either side, so the ratio is the cost per "
        "event of the subscription's pull loop and bookkeeping against the replay's. "
        f"Against get_events of each actor of the same history in turn (one consumer per "
        f"actor, as an application without subscribe reads them): {per_actor:.2f}x."
    )
    if not target.passed:
        target.comment += (
            " Below target: the subscription keeps one pull in flight where get_events "
            "keeps two, and tracks positions and lag per event."
        )


def _judge_live(target: Target, result: SuiteResult) -> None:
    workload = result.workload("subscribe_live")
    if workload is None or not workload.points:
        return
    series = workload.points[0].series
    live, glv = series.get("aether.subscribe.live"), series.get("aether.get_latest_version")
    append = series.get("aether.save_event")
    if live is None or glv is None or not glv.value:
        return
    target.value = live.value / glv.value
    target.comment = (
        f"p50 {live.value:,.0f} µs from the append's start to the subscriber (p99 "
        f"{live.extra['p99']:,.0f} µs) against {glv.value:,.0f} µs for one "
        f"get_latest_version round trip (p99 {glv.extra['p99']:,.0f} µs)"
    )
    if append is not None:
        target.comment += f"; the append alone takes {append.value:,.0f} µs (p50)"
    target.comment += (
        f". From the writer's ack the subscriber has it after {live.extra['after_ack_p50']:,.0f}"
        f" µs (p50; negative: before the ack, {live.extra['before_ack_share']:.0%} of the "
        "appends): the server sends the ack and the delivery together."
    )


def _span(lengths: list[int]) -> str:
    if len(lengths) == 1:
        return f"{lengths[0]:,} events"
    return f"{lengths[0]:,} to {lengths[-1]:,} events (worst length)"


def _long_lengths(sizes: Sizes) -> list[int]:
    """The lengths a long replay is judged on: 10,000 events and more, or the longest."""
    lengths = [x for x in sizes.history_lengths if x >= 10_000]
    return lengths or [max(sizes.history_lengths)]


def _long_lengths_run(result: SuiteResult) -> list[int]:
    lengths = _lengths_run(result)
    return [x for x in lengths if x >= 10_000] or lengths[-1:]


def _throughput_lengths(sizes: Sizes) -> list[int]:
    """The history lengths a replay target is judged on: 1,000 events and more (shorter
    replays measure fixed costs, not throughput), or the longest if none is that long."""
    lengths = [x for x in sizes.history_lengths if x >= 1000]
    return lengths or [max(sizes.history_lengths)]


def _judge_replay(target: Target, result: SuiteResult, baseline: str, lengths: list[int]) -> int:
    """Set the worst ratio over *lengths* (those that ran); returns its length (0: none)."""
    worst: tuple[float, int] | None = None
    for x in lengths:
        ratio = _ratio(result, "replay", x, "aether.get_events", baseline)
        if ratio is not None and (worst is None or ratio < worst[0]):
            worst = (ratio, x)
    if worst is None:
        return 0
    target.value = worst[0]
    return worst[1]


def _lengths_run(result: SuiteResult) -> list[int]:
    workload = result.workload("replay")
    return sorted(p.x for p in workload.points if p.x is not None) if workload else []


def _per_length(result: SuiteResult, baseline: str) -> str:
    parts = []
    for x in _lengths_run(result):
        ratio = _ratio(result, "replay", x, "aether.get_events", baseline)
        if ratio is not None:
            parts.append(f"{x:,} event{'' if x == 1 else 's'} {ratio:.2f}x")
    return "By history length: " + ", ".join(parts)


# -- environment ---------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return dist_version(dist)
    except PackageNotFoundError:
        return "not installed"


def _server_version(nc: Client) -> str:
    version = nc.connected_server_version
    text = f"{version.major}.{version.minor}.{version.patch}"
    return f"{text}-{version.prerelease}" if version.prerelease else text


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _environment(nc: Client, options: SuiteOptions) -> dict[str, Any]:
    env: dict[str, Any] = {
        "nats_server": _server_version(nc),
        "server": options.server or "given by the caller",
        "storage": options.storage,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "aether": aether.__version__,
        "nats_py": _version("nats-py"),
        "eventsourcing": _version("eventsourcing"),
        "command": options.command,
    }
    with contextlib.suppress(OSError, AttributeError):
        env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return env
