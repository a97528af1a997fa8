"""What the suite measures and reports: sizes, results, targets, and the round runner."""

from __future__ import annotations

import gc
import random
import statistics
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "FULL",
    "QUICK",
    "WORKLOADS",
    "BenchDependencyError",
    "NullProgress",
    "Point",
    "ProgressSink",
    "Ratio",
    "Series",
    "Sizes",
    "Skipped",
    "SuiteResult",
    "Target",
    "WorkloadResult",
    "median",
    "percentile",
    "round_orders",
    "run_rounds",
]

#: Workload ids, in the order the suite runs them (``--only`` takes these, or a prefix
#: such as ``append``).
WORKLOADS: dict[str, str] = {
    "append_single": "append: 1 writer on 1 actor",
    "append_pipelined": "append: concurrent writers on distinct actors (pipelined)",
    "append_hot": "append: concurrent writers on one hot actor",
    "latest_version": "get_latest_version latency vs history length",
    "replay": "replay throughput vs history length",
    "snapshot_tail": "snapshot + tail vs full replay",
    "load": "loading a short history: latency vs history length",
    "subscribe_catchup": "subscribe() catch-up throughput (every actor)",
    "subscribe_live": "subscribe() live latency: append to delivery on another connection",
    "bus_local": "local EventBus publish to delivery, by subscriber count",
    "bus_nats": "NatsEventBus across processes, publish to delivery",
    "eventsourcing_save": "eventsourcing app.save on aether.ext.eventsourcing vs SQLite, "
    "PostgreSQL",
    "eventsourcing_get": "eventsourcing repository.get on aether.ext.eventsourcing vs SQLite, "
    "PostgreSQL",
    "eventsourcing_log": "eventsourcing notification log reads on aether.ext.eventsourcing vs "
    "SQLite, PostgreSQL",
}


class BenchDependencyError(RuntimeError):
    """An optional dependency of the benchmark suite (the ``bench`` extra) is missing."""


@dataclass(frozen=True)
class Sizes:
    """How much work one run does. :data:`FULL` and :data:`QUICK` are the presets."""

    #: history lengths of the get_latest_version / replay actors (the longest is also
    #: the snapshot + tail actor)
    history_lengths: tuple[int, ...] = (1, 1_000, 10_000, 100_000)
    #: timed rounds of the append workloads (each after one untimed warm-up round)
    append_rounds: int = 20
    #: appends per contender per round, 1 writer ...
    single_appends: int = 200
    #: ... and per eventsourcing peer (each is a committed transaction: slower)
    peer_appends: int = 50
    #: concurrent writers (pipelined appends and the hot actor)
    writers: int = 32
    #: appends per writer per round, pipelined
    pipelined_appends: int = 50
    #: successful appends per contender per round on the hot actor
    hot_successes: int = 150
    #: rounds of the hot-actor workload
    hot_rounds: int = 5
    #: timed get_latest_version calls per contender and history length (after a warm-up)
    latency_calls: int = 2_000
    #: history lengths of the load workload (short histories, the most frequent read) ...
    load_lengths: tuple[int, ...] = (1, 10, 100, 1_000)
    #: ... and timed loads per contender and length (after a warm-up)
    load_calls: int = 500
    #: timed replay rounds for short histories ...
    replay_rounds: int = 7
    #: ... and for histories of at least ``long_history`` events
    long_replay_rounds: int = 3
    long_history: int = 50_000
    #: events after the snapshot in the snapshot + tail workload
    snapshot_tail: int = 100
    #: rounds of the snapshot + tail workload's rebuilds (aether and the peers, interleaved;
    #: each a few milliseconds) ...
    snapshot_rounds: int = 60
    #: ... and, apart from them, of the full replay it is compared with (seconds each)
    snapshot_full_rounds: int = 3
    #: events of the subscribe catch-up history (a stream of its own) ...
    catchup_events: int = 20_000
    #: ... spread evenly over this many actors
    catchup_actors: int = 200
    #: timed rounds of the catch-up workload
    catchup_rounds: int = 5
    #: timed live deliveries (and get_latest_version calls), after a warm-up
    live_calls: int = 2_000
    #: events per round on the local bus with 1 subscriber, and across processes
    bus_events: int = 20_000
    #: subscribers of the local bus's fan-out point ...
    bus_subscribers: int = 100
    #: ... and events per round there (each delivered to every subscriber)
    bus_fanout_events: int = 5_000
    #: timed rounds of the bus workloads
    bus_rounds: int = 5
    #: eventsourcing persistence modules: new events per app.save ...
    es_save_sizes: tuple[int, ...] = (1, 10)
    #: ... and app.save calls per application per round
    es_saves: int = 50
    #: events of the aggregates repository.get reads ...
    es_get_lengths: tuple[int, ...] = (10, 1_000)
    #: ... and repository.get calls per application and length per round
    es_gets: int = 20
    #: timed rounds of the save and get workloads
    es_rounds: int = 10
    #: notifications read per round, and the limits (page sizes) they are read with ...
    es_log_events: int = 5_000
    es_log_pages: tuple[int, ...] = (10, 1_000)
    #: ... in this many timed rounds
    es_log_rounds: int = 5

    def __post_init__(self) -> None:
        if not self.history_lengths or min(self.history_lengths) < 1:
            raise ValueError("history_lengths must be positive")
        if list(self.history_lengths) != sorted(set(self.history_lengths)):
            raise ValueError("history_lengths must be strictly increasing")
        for name in (
            "append_rounds",
            "single_appends",
            "peer_appends",
            "writers",
            "pipelined_appends",
            "hot_successes",
            "hot_rounds",
            "latency_calls",
            "load_calls",
            "replay_rounds",
            "long_replay_rounds",
            "snapshot_rounds",
            "snapshot_full_rounds",
            "catchup_events",
            "catchup_actors",
            "catchup_rounds",
            "live_calls",
            "bus_events",
            "bus_subscribers",
            "bus_fanout_events",
            "bus_rounds",
            "es_saves",
            "es_gets",
            "es_rounds",
            "es_log_events",
            "es_log_rounds",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.snapshot_tail < 1 or self.snapshot_tail >= max(self.history_lengths):
            raise ValueError("snapshot_tail must be between 1 and the longest history - 1")
        if self.catchup_events % self.catchup_actors:
            raise ValueError("catchup_events must be a multiple of catchup_actors")
        for name in ("load_lengths", "es_save_sizes", "es_get_lengths", "es_log_pages"):
            values: tuple[int, ...] = getattr(self, name)
            if not values or min(values) < 1 or list(values) != sorted(set(values)):
                raise ValueError(f"{name} must be positive and strictly increasing")

    def rounds_for(self, length: int) -> int:
        return self.long_replay_rounds if length >= self.long_history else self.replay_rounds


FULL = Sizes()
QUICK = Sizes(
    history_lengths=(1, 1_000, 10_000),
    append_rounds=5,
    single_appends=100,
    peer_appends=20,
    pipelined_appends=20,
    hot_successes=50,
    hot_rounds=2,
    latency_calls=300,
    load_lengths=(1, 10, 100),
    load_calls=100,
    replay_rounds=3,
    long_replay_rounds=2,
    snapshot_rounds=10,
    snapshot_full_rounds=2,
    catchup_events=5_000,
    catchup_actors=50,
    catchup_rounds=2,
    live_calls=300,
    bus_events=5_000,
    bus_fanout_events=1_000,
    bus_rounds=2,
    es_saves=15,
    es_gets=10,
    es_rounds=3,
    es_log_events=1_000,
    es_log_rounds=2,
)


# -- results -------------------------------------------------------------------------------


@dataclass
class Series:
    """One contender's figure at one point: the median over rounds (latency: the p50)."""

    key: str  # "aether.save_event", "raw.js_publish", "es_sqlite.decode", ...
    label: str
    unit: str  # "events/s", "conflicts/s", "us", "ms"
    value: float
    samples: list[float] = field(default_factory=list)  # the per-round figures
    extra: dict[str, float] = field(default_factory=dict)  # p90, conflicts/s, ...


@dataclass
class Ratio:
    """``contender`` relative to ``baseline``. Unless ``higher_is_better`` is False, a value
    above 1 means the contender is faster (more events/s, or a lower latency)."""

    contender: str
    baseline: str
    value: float
    label: str
    #: median of the per-round ratios: a cross-check of the ratio of medians
    paired: float | None = None
    higher_is_better: bool = True


@dataclass
class Point:
    """The figures of one workload at one history length (None: not history-dependent)."""

    x: int | None
    series: dict[str, Series] = field(default_factory=dict)
    ratios: list[Ratio] = field(default_factory=list)

    def add(self, series: Series) -> Series:
        self.series[series.key] = series
        return series

    def ratio(
        self, contender: str, baseline: str, label: str, *, speed_of_latency: bool = False
    ) -> Ratio | None:
        """Add ``contender / baseline`` if both ran (for latencies: ``baseline / contender``,
        so that above 1 still means the contender is faster)."""
        c, b = self.series.get(contender), self.series.get(baseline)
        if c is None or b is None or not c.value or not b.value:
            return None
        value = b.value / c.value if speed_of_latency else c.value / b.value
        paired = None
        if c.samples and len(c.samples) == len(b.samples):
            pairs = zip(c.samples, b.samples, strict=True)
            paired = median([(y / x) if speed_of_latency else (x / y) for x, y in pairs])
        ratio = Ratio(contender, baseline, value, label, paired)
        self.ratios.append(ratio)
        return ratio


@dataclass
class WorkloadResult:
    id: str
    title: str
    description: str
    points: list[Point] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: label of ``Point.x`` when the workload varies the history length
    x_label: str | None = None

    def point(self, x: int | None = None) -> Point:
        for point in self.points:
            if point.x == x:
                return point
        point = Point(x)
        self.points.append(point)
        return point


@dataclass
class Target:
    """A goal stated as a ratio to a baseline measured in the same run."""

    id: str
    title: str
    workload: str
    kind: Literal["min", "max"]
    threshold: float
    primary: bool
    value: float | None = None  # None: the workload (or its baseline) did not run
    comment: str = ""

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.threshold if self.kind == "min" else self.value <= self.threshold

    def threshold_text(self) -> str:
        return f"{'>=' if self.kind == 'min' else '<='} {self.threshold:.2f}x"


@dataclass
class Skipped:
    what: str
    reason: str


@dataclass
class SuiteResult:
    started_at: str
    environment: dict[str, Any]
    parameters: dict[str, Any]
    baselines: dict[str, str]  # series key prefix -> description
    workloads: list[WorkloadResult] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: files written (kind -> path); not part of the JSON
    files: dict[str, Path] = field(default_factory=dict)

    def workload(self, workload_id: str) -> WorkloadResult | None:
        for workload in self.workloads:
            if workload.id == workload_id:
                return workload
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["files"]
        data["targets"] = [
            {**asdict(t), "threshold_text": t.threshold_text(), "passed": t.passed}
            for t in self.targets
        ]
        data["all_targets_met"] = all(t.passed is not False for t in self.targets)
        return data


# -- progress ------------------------------------------------------------------------------


class ProgressSink(Protocol):
    """Where the suite reports progress (the CLI shows rich progress bars)."""

    def start(self, workload: str, description: str, total: int) -> None: ...

    def advance(self, workload: str, steps: int = 1) -> None: ...

    def finish(self, workload: str) -> None: ...

    def message(self, text: str) -> None: ...


class NullProgress:
    """A :class:`ProgressSink` that shows nothing."""

    def start(self, workload: str, description: str, total: int) -> None:
        pass

    def advance(self, workload: str, steps: int = 1) -> None:
        pass

    def finish(self, workload: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass


# -- measuring -----------------------------------------------------------------------------

Timed = Callable[[], Awaitable[float]]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def latency_series(key: str, label: str, values: Sequence[float]) -> Series:
    """A latency figure in µs: the p50 of *values*, with p90, p99, mean and count as extras."""
    return Series(
        key,
        label,
        "us",
        percentile(values, 0.5),
        extra={
            "p90": percentile(values, 0.9),
            "p99": percentile(values, 0.99),
            "mean": sum(values) / len(values),
            "calls": len(values),
        },
    )


def round_orders(names: Sequence[str], rounds: int, seed: int = 0) -> list[list[str]]:
    """The order of *names* in each of *rounds* rounds.

    Two contenders alternate (A/B, B/A, ...). With more, each round is a random
    permutation (seeded: runs are repeatable) so that no contender always follows the
    same one: a baseline that leaves work behind (a database flushing after a commit)
    would otherwise always tax the same successor.
    """
    if len(names) <= 2:
        return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]
    rng = random.Random(seed)
    orders = []
    for _ in range(rounds):
        order = list(names)
        rng.shuffle(order)
        orders.append(order)
    return orders


async def run_rounds(
    contenders: Mapping[str, Timed],
    rounds: int,
    on_round: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Run every contender once per round, in an order that changes every round
    (:func:`round_orders`).

    Round 0 is an untimed warm-up. Returns each contender's per-round figures, so that
    contenders and baselines see the same drift of a noisy machine.
    """
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for round_no, order in enumerate(round_orders(list(contenders), rounds + 1)):
        for name in order:
            gc.collect()
            value = await contenders[name]()
            if round_no > 0:
                results[name].append(value)
        if on_round is not None:
            on_round()
    return results
