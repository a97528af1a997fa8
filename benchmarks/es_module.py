"""aether's persistence module for the eventsourcing library (``aether.ext.eventsourcing``)
against the library's own SQLite and PostgreSQL modules: the same application operations
(``app.save``, ``repository.get``, ``notification_log.select``) on each, in the same rounds.

The three applications are one class (:class:`benchmarks._eventsourcing.PersistenceBenchApp`,
the library's defaults: no snapshots, no aggregate cache) with three environments that
differ only in their persistence settings; they are opened on first use and shared by the
three workloads (``--only eventsourcing``). PostgreSQL runs only when the suite has a DSN
(the same throwaway schema as the other eventsourcing baselines; the application's tables
have names of their own).

Every figure is aether's module against each baseline (``aether`` / ``es_sqlite`` /
``es_postgres``), and every line has a target: at least 1.0x PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.model import (
    Point,
    Series,
    Sizes,
    SuiteResult,
    Target,
    WorkloadResult,
    median,
    percentile,
    run_rounds,
)
from benchmarks.workloads import _doc

if TYPE_CHECKING:
    from uuid import UUID

    from benchmarks._eventsourcing import ModuleApp
    from benchmarks.workloads import Bench

__all__ = [
    "AETHER",
    "ES_WORKLOADS",
    "POSTGRES",
    "SQLITE",
    "es_targets",
    "eventsourcing_get",
    "eventsourcing_log",
    "eventsourcing_save",
    "latency_series",
    "module_env",
    "open_apps",
    "sqlite_env",
]

ES_WORKLOADS = ("eventsourcing_save", "eventsourcing_get", "eventsourcing_log")
AETHER, SQLITE, POSTGRES = "aether", "es_sqlite", "es_postgres"
MODULE = "aether.ext.eventsourcing"
LABELS = {
    AETHER: f"{MODULE} (JetStream)",
    SQLITE: "eventsourcing SQLite",
    POSTGRES: "eventsourcing PostgreSQL",
}
#: events per aggregate of the notification log's history
LOG_AGGREGATE = 100


# -- settings (pure) ---------------------------------------------------------------------


def module_env(url: str, stream: str, storage: str) -> dict[str, str]:
    """The aether application's environment: the suite's server, a stream of its own."""
    return {
        "PERSISTENCE_MODULE": MODULE,
        "NATS_URL": url,
        "NATS_STREAM": stream,
        "NATS_STORAGE": storage,
    }


def sqlite_env(peer_env: dict[str, str]) -> dict[str, str]:
    """The SQLite application's environment: the SQLite peer's, in a database file of its
    own next to the peer's (the SQLite module names its table ``stored_events`` whatever
    the application)."""
    path = Path(peer_env["SQLITE_DBNAME"])
    return {**peer_env, "SQLITE_DBNAME": str(path.with_name("es_module.db"))}


def open_apps(bench: Bench) -> list[ModuleApp]:
    """The three applications (aether first; PostgreSQL only if the suite has its peer),
    opened on first use and closed by the suite (``Bench.closers``)."""
    if bench.es_apps:
        return bench.es_apps
    if not bench.url:
        raise RuntimeError(
            "the eventsourcing workloads need the server's URL (run_suite with a URL, or "
            "SuiteOptions.url) for the persistence module's own connection"
        )
    from benchmarks.baselines import load_eventsourcing

    module = load_eventsourcing()
    stream = f"{bench.store.stream_name}_es"
    bench.streams += [stream, f"{stream}_snapshots"]
    envs = {AETHER: module_env(bench.url, stream, bench.store.config.storage)}
    for peer in bench.peers:
        if peer.key == SQLITE:
            envs[SQLITE] = sqlite_env(peer.env)
        elif peer.key == POSTGRES:
            envs[POSTGRES] = dict(peer.env)
    if SQLITE not in envs:
        raise RuntimeError("the eventsourcing workloads need the SQLite peer")
    apps: list[ModuleApp] = []
    try:
        for key, env in envs.items():
            apps.append(module.ModuleApp(key, LABELS[key], env))
    except BaseException:
        for app in apps:
            app.close()
        raise
    bench.es_apps = apps
    bench.closers += [app.close for app in apps]
    return apps


# -- figures (pure) ----------------------------------------------------------------------


def latency_series(key: str, label: str, rounds: Sequence[Sequence[float]]) -> Series:
    """Per-call seconds, round by round -> a latency series in µs: the median of the
    rounds' p50s, with p90 and p99 over every call."""
    per_round = [median(times) * 1e6 for times in rounds]
    every = [t * 1e6 for times in rounds for t in times]
    return Series(
        key,
        label,
        "us",
        median(per_round),
        samples=per_round,
        extra={"p90": percentile(every, 0.9), "p99": percentile(every, 0.99)},
    )


def add_ratios(point: Point, contender: str, op: str, *, latency: bool = False) -> None:
    """aether's ratio to each baseline that ran at this point."""
    for key in (SQLITE, POSTGRES):
        point.ratio(
            f"{contender}.{op}", f"{key}.{op}", f"vs {LABELS[key]}", speed_of_latency=latency
        )


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# -- workloads ---------------------------------------------------------------------------
#
# The operations are synchronous: each blocks the suite's event loop while it runs (the
# aether module's own loop runs on its factory's thread).


def _saver(
    app: ModuleApp, saves: int, size: int, sink: list[list[float]]
) -> Callable[[], Awaitable[float]]:
    async def timed() -> float:
        times = app.save(saves, size)
        sink.append(times)
        return saves * size / sum(times)

    return timed


def _getter(
    app: ModuleApp, aggregate_id: UUID, length: int, gets: int, sink: list[list[float]]
) -> Callable[[], Awaitable[float]]:
    async def timed() -> float:
        times = app.get(aggregate_id, length, gets)
        sink.append(times)
        return median(times)

    return timed


def _reader(app: ModuleApp, start: int, count: int, page: int) -> Callable[[], Awaitable[float]]:
    async def timed() -> float:
        return count / app.read_log(start, count, page)

    return timed


async def eventsourcing_save(bench: Bench) -> WorkloadResult:
    """``app.save`` of an aggregate with 1 and with 10 new events (one call, one
    transaction or atomic batch), ``es_saves`` saves per application per round, one after
    another on one aggregate created (untimed) at the start of the round; ``es_rounds``
    rounds after a warm-up, the applications in a different order every round. Figure:
    events/s (the saves' events over their summed time); the per-save p50 and p99 are in
    the JSON and the notes."""
    wid, s = "eventsourcing_save", bench.sizes
    result = bench._workload(wid, _doc(eventsourcing_save, s))
    result.x_label = "events per save"
    apps = open_apps(bench)
    bench.progress.start(wid, result.title, len(s.es_save_sizes) * (s.es_rounds + 1))
    for size in s.es_save_sizes:
        calls: dict[str, list[list[float]]] = {app.key: [] for app in apps}

        contenders = {
            f"{app.key}.save": _saver(app, s.es_saves, size, calls[app.key]) for app in apps
        }
        rounds = await run_rounds(contenders, s.es_rounds, bench._tick(wid))
        point = result.point(size)
        for app in apps:
            timed_calls = calls[app.key][1:]  # round 0 is the warm-up
            every = [t * 1e6 for times in timed_calls for t in times]
            series = Series(
                f"{app.key}.save",
                f"{app.label}, app.save of {_plural(size, 'event')}",
                "events/s",
                median(rounds[f"{app.key}.save"]),
                samples=rounds[f"{app.key}.save"],
                extra={"p50_us": percentile(every, 0.5), "p99_us": percentile(every, 0.99)},
            )
            point.add(series)
        add_ratios(point, AETHER, "save")
        result.notes.append(
            f"Per app.save of {_plural(size, 'event')}, p50 (p99): "
            + ", ".join(
                f"{app.label} {point.series[f'{app.key}.save'].extra['p50_us']:,.0f} µs "
                f"({point.series[f'{app.key}.save'].extra['p99_us']:,.0f})"
                for app in apps
            )
            + "."
        )
    bench.progress.finish(wid)
    return result


async def eventsourcing_get(bench: Bench) -> WorkloadResult:
    """``repository.get`` of an aggregate of 10 and of 1,000 events (written beforehand,
    untimed): every event selected, decoded and applied. ``es_gets`` calls per
    application per round, ``es_rounds`` rounds after a warm-up, the applications in a
    different order every round. Figure: latency, the median of the rounds' p50s (p90
    and p99 over every call in the JSON)."""
    wid, s = "eventsourcing_get", bench.sizes
    result = bench._workload(wid, _doc(eventsourcing_get, s))
    result.x_label = "events per aggregate"
    apps = open_apps(bench)
    bench.progress.start(wid, result.title, len(s.es_get_lengths) * (s.es_rounds + 2))
    for length in s.es_get_lengths:
        ids = {app.key: app.create(length) for app in apps}
        bench.progress.advance(wid)
        calls: dict[str, list[list[float]]] = {app.key: [] for app in apps}

        contenders = {
            f"{app.key}.get": _getter(app, ids[app.key], length, s.es_gets, calls[app.key])
            for app in apps
        }
        await run_rounds(contenders, s.es_rounds, bench._tick(wid))
        point = result.point(length)
        for app in apps:
            label = f"{app.label}, repository.get"
            point.add(latency_series(f"{app.key}.get", label, calls[app.key][1:]))
        add_ratios(point, AETHER, "get", latency=True)
    bench.progress.finish(wid)
    return result


async def eventsourcing_log(bench: Bench) -> WorkloadResult:
    """Reading the notification log: ``es_log_events`` notifications (written
    beforehand, untimed, as aggregates of up to 100 events) read from the first of them
    with ``notification_log.select(start, limit)`` page after page, with pages of 10
    notifications (the library's section size, what its followers pull) and of 1,000;
    ``es_log_rounds`` rounds after a warm-up, the applications in a different order every
    round. Figure: notifications/s."""
    wid, s = "eventsourcing_log", bench.sizes
    result = bench._workload(wid, _doc(eventsourcing_log, s))
    result.x_label = "notifications per select"
    apps = open_apps(bench)
    bench.progress.start(wid, result.title, 1 + len(s.es_log_pages) * (s.es_log_rounds + 1))
    starts: dict[str, int] = {}
    per = min(LOG_AGGREGATE, s.es_log_events)
    for app in apps:
        starts[app.key] = app.log_position() + 1
        written = 0
        while written < s.es_log_events:
            app.create(per)
            written += per
    bench.progress.advance(wid)
    count = s.es_log_events
    for page in s.es_log_pages:
        contenders = {f"{app.key}.log": _reader(app, starts[app.key], count, page) for app in apps}
        rounds = await run_rounds(contenders, s.es_log_rounds, bench._tick(wid))
        point = result.point(page)
        for app in apps:
            key = f"{app.key}.log"
            label = f"{app.label}, {count:,} notifications, select(limit={page:,})"
            point.add(Series(key, label, "notifications/s", median(rounds[key]), rounds[key]))
        add_ratios(point, AETHER, "log")
    bench.progress.finish(wid)
    return result


# -- targets -------------------------------------------------------------------------------

_LINES: dict[str, tuple[str, str, str]] = {
    # workload -> (series op, what a line is, its sizes field)
    "eventsourcing_save": ("save", "app.save of {x}", "es_save_sizes"),
    "eventsourcing_get": ("get", "repository.get of a {x} aggregate (p50)", "es_get_lengths"),
    "eventsourcing_log": ("log", "notification_log.select, pages of {x}", "es_log_pages"),
}


def _line_title(workload: str, x: int) -> str:
    text = _LINES[workload][1]
    if workload == "eventsourcing_get":
        amount = f"{x:,}-event"
    elif workload == "eventsourcing_save":
        amount = _plural(x, "event")
    else:
        amount = f"{x:,}"
    return f"eventsourcing {text.format(x=amount)}: {MODULE} vs PostgreSQL"


def es_targets(result: SuiteResult, sizes: Sizes) -> list[Target]:
    """One target per line of the three workloads: aether's module at least as fast as
    the library's PostgreSQL module (None where PostgreSQL or the workload did not run),
    with the ratio to SQLite in the comment."""
    targets: list[Target] = []
    for workload, (op, _, field_name) in _LINES.items():
        xs: tuple[int, ...] = getattr(sizes, field_name)
        found = result.workload(workload)
        for x in xs:
            target = Target(
                f"{workload}_{x}_vs_postgres",
                _line_title(workload, x),
                workload,
                "min",
                1.0,
                primary=True,
            )
            targets.append(target)
            point = None if found is None else next((p for p in found.points if p.x == x), None)
            if point is None:
                continue
            ratios = {r.baseline: r.value for r in point.ratios if r.contender == f"aether.{op}"}
            target.value = ratios.get(f"{POSTGRES}.{op}")
            sqlite = ratios.get(f"{SQLITE}.{op}")
            if sqlite is not None:
                target.comment = f"Against the library's SQLite module: {sqlite:.2f}x."
            mine = point.series.get(f"aether.{op}")
            theirs = point.series.get(f"{POSTGRES}.{op}")
            if mine is not None and theirs is not None and mine.unit == "us":
                target.comment += (
                    f" p50 {mine.value:,.0f} µs against {theirs.value:,.0f} µs on PostgreSQL."
                )
    return targets
