"""The benchmark suite (``benchmarks/``, ``python -m benchmarks.run``) in its smallest mode:
what it writes, not how fast.

No timing assertions here: ratios and targets depend on the machine. These tests check
that every workload runs next to its baselines, and that the JSON, the Markdown and the
charts are written, with PostgreSQL reported as skipped when no DSN is given; and the
pure parts (sizes, targets, report rows) on made-up figures.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest
from click.testing import CliRunner
from nats.aio.client import Client

from benchmarks import WORKLOADS, BenchDependencyError, Sizes, SuiteOptions, Target, run_suite
from benchmarks.baselines import make_event, require
from benchmarks.bus import local_bus_round, queue_round
from benchmarks.es_module import ES_WORKLOADS, es_targets, module_env, sqlite_env
from benchmarks.es_module import latency_series as es_latency_series
from benchmarks.model import Point, Series, SuiteResult, WorkloadResult
from benchmarks.report import render_markdown
from benchmarks.run import _x_text, bench
from benchmarks.subscribe import latency_series, live_note
from benchmarks.suite import evaluate_targets

ROOT = Path(__file__).resolve().parent.parent

TINY = Sizes(
    history_lengths=(1, 5, 20),
    append_rounds=1,
    single_appends=3,
    peer_appends=2,
    writers=3,
    pipelined_appends=2,
    hot_successes=3,
    hot_rounds=1,
    latency_calls=3,
    load_lengths=(1, 10),
    load_calls=2,
    replay_rounds=1,
    long_replay_rounds=1,
    long_history=10,
    snapshot_tail=2,
    snapshot_rounds=1,
    catchup_events=40,
    catchup_actors=4,
    catchup_rounds=1,
    live_calls=3,
    bus_events=50,
    bus_subscribers=3,
    bus_fanout_events=20,
    bus_rounds=1,
    es_save_sizes=(1, 3),
    es_saves=2,
    es_get_lengths=(2, 5),
    es_gets=2,
    es_rounds=1,
    es_log_events=6,
    es_log_pages=(2, 10),
    es_log_rounds=1,
)
NEW_WORKLOADS = ("subscribe_catchup", "subscribe_live", "bus_local", "bus_nats")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pngs(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.png"))


async def _bench_streams(url: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        names = await nc.jetstream().streams_info()
        return [s.config.name for s in names if s.config.name.startswith("aether_bench_")]
    finally:
        await nc.close()


async def test_suite_runs_every_workload_and_writes_results(nats_url: str, tmp_path: Path) -> None:
    result = await run_suite(nats_url, SuiteOptions(sizes=TINY, out_dir=tmp_path))

    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert [w["id"] for w in data["workloads"]] == list(WORKLOADS)
    for workload in data["workloads"]:
        assert workload["points"], workload["id"]
        for point in workload["points"]:
            assert point["series"] and point["ratios"], workload["id"]
            for ratio in point["ratios"]:
                assert math.isfinite(ratio["value"]) and ratio["value"] > 0
                assert ratio["contender"] in point["series"]
                assert ratio["baseline"] in point["series"]
    histories = {p["x"] for p in data["workloads"][3]["points"]}
    assert histories == {1, 5, 20}

    # Every baseline family ran: raw nats-py and eventsourcing on SQLite.
    series = {key for w in data["workloads"] for p in w["points"] for key in p["series"]}
    assert {"raw.publish_async", "raw.js_publish", "raw.pull", "es_sqlite.decode"} <= series
    assert {"aether.get_events", "es_sqlite.repository_get"} <= series  # the load workload
    # ... and the read side's and the bus's: aether's own reads, asyncio, raw core NATS.
    assert {
        "aether.get_events.one_actor",
        "aether.get_events.per_actor",
        "aether.get_latest_version",
        "asyncio.queues",
        "raw.core",
        "raw.core.decode",
    } <= series
    assert not any(key.startswith("es_postgres.") for key in series)

    # Targets are judged (values present), whatever the verdict on this machine.
    targets = {t["id"]: t for t in data["targets"]}
    assert {"pipelined_vs_publish_async", "replay_vs_es_sqlite"} <= set(targets)
    assert {"catchup_vs_get_events", "live_vs_round_trip"} <= set(targets)
    for target_id, target in targets.items():
        if target_id.endswith("_vs_postgres"):  # the eventsourcing lines: no PostgreSQL here
            assert target["value"] is None and target["passed"] is None, target_id
        else:
            assert target["value"] is not None and target["passed"] in (True, False)
    es_lines = [t for t in targets if t.startswith("eventsourcing_")]
    assert len(es_lines) == 6  # app.save x2, repository.get x2, notification log x2
    assert {"load_1_vs_round_trip", "load_10_vs_round_trip", "load_10_vs_postgres"} <= set(targets)
    # The eventsourcing module's workloads ran against SQLite, line by line.
    for workload in data["workloads"]:
        if workload["id"] in ES_WORKLOADS:
            for point in workload["points"]:
                assert {r["baseline"].split(".")[0] for r in point["ratios"]} == {"es_sqlite"}
                assert any(key.startswith("aether.") for key in point["series"])

    # PostgreSQL: skipped, and said so in the JSON and the Markdown.
    assert [s["what"] for s in data["skipped"]] == ["eventsourcing on PostgreSQL"]
    assert "no PostgreSQL DSN" in data["skipped"][0]["reason"]
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "Skipped: eventsourcing on PostgreSQL" in markdown
    assert "| target | ratio | goal | result |" in markdown
    for title in WORKLOADS.values():
        assert f"### {title}" in markdown

    for name in (
        "latest_version_latency",
        "load_latency",
        "replay_throughput",
        "append_throughput",
    ):
        path = tmp_path / f"{name}.png"
        assert result.files[name] == path
        assert path.read_bytes()[:8] == PNG_MAGIC

    assert data["environment"]["nats_server"].count(".") == 2
    assert await _bench_streams(nats_url) == []  # cleaned up after itself


async def test_unusable_postgres_dsn_is_reported_as_skipped(nats_url: str, tmp_path: Path) -> None:
    options = SuiteOptions(
        sizes=TINY,
        out_dir=tmp_path,
        charts=False,
        only=("append_single",),
        postgres_dsn="postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2",
    )
    result = await run_suite(nats_url, options)
    assert [w.id for w in result.workloads] == ["append_single"]
    assert len(result.skipped) == 1
    assert result.skipped[0].reason.startswith("cannot use the given DSN")
    assert _pngs(tmp_path) == []
    assert "Skipped: eventsourcing on PostgreSQL" in (tmp_path / "results.md").read_text()


def test_only_takes_prefixes_and_rejects_unknown_names() -> None:
    assert SuiteOptions(only=("append",)).selected() == [
        "append_single",
        "append_pipelined",
        "append_hot",
    ]
    assert SuiteOptions(only=("bus", "subscribe")).selected() == list(NEW_WORKLOADS)
    assert SuiteOptions(only=("replay", "latest_version")).selected() == [
        "latest_version",
        "replay",
    ]
    with pytest.raises(ValueError, match="unknown workload"):
        SuiteOptions(only=("nope",)).selected()


def test_missing_optional_dependency_names_the_extra() -> None:
    with pytest.raises(BenchDependencyError, match=r'pip install -e "\.\[bench\]"'):
        require("aether_no_such_module", "the test")


def test_importing_the_suite_and_its_command_needs_no_heavy_dependency() -> None:
    code = (
        "import sys, aether, aether.store, benchmarks, benchmarks.run; "
        "heavy = {'matplotlib', 'eventsourcing', 'psycopg'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_suite_is_not_part_of_the_aether_package() -> None:
    code = (
        "import importlib.util, sys; "
        "missing = [m for m in ('aether._bench', 'aether.cli.bench') "
        "if importlib.util.find_spec(m) is not None]; "
        "assert not missing, missing"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("module", ["benchmarks.run", "benchmarks"])
def test_entry_point_help_runs_from_the_repository_root(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m benchmarks.run" in done.stdout
    for option in ("--quick", "--only", "--out", "--url", "--postgres-dsn", "--no-charts"):
        assert option in done.stdout


def test_cli_bench_runs_and_prints_the_table(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AETHER_BENCH_POSTGRES_DSN", raising=False)
    out = tmp_path / "results"
    args = ["--url", nats_url, "--quick", "--only", "append_single", "--out", str(out)]
    result = CliRunner().invoke(bench, [*args, "--no-charts"])
    assert result.exit_code == 0, result.output
    assert "aether save_event" in result.output
    assert "aether vs this" in result.output
    assert "skipped eventsourcing on PostgreSQL" in result.output
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [w["id"] for w in data["workloads"]] == ["append_single"]
    assert data["parameters"]["preset"] == "quick"
    assert (out / "results.md").is_file()
    assert not list(out.glob("*.png"))


def test_cli_bench_rejects_an_unknown_workload(tmp_path: Path) -> None:
    result = CliRunner().invoke(bench, ["--only", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown workload 'nope'" in result.output


def test_cli_bench_runs_the_read_side_and_bus_workloads(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AETHER_BENCH_POSTGRES_DSN", raising=False)
    out = tmp_path / "results"
    args = ["--url", nats_url, "--quick", "--only", "subscribe", "--only", "bus"]
    result = CliRunner().invoke(bench, [*args, "--out", str(out), "--no-charts"])
    assert result.exit_code == 0, result.output
    for text in ("aether subscribe(after=0)", "aether NatsEventBus", "100 subscribers"):
        assert text in result.output
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [w["id"] for w in data["workloads"]] == list(NEW_WORKLOADS)
    assert data["parameters"]["catchup_events"] == 5_000
    assert data["skipped"] == []  # no eventsourcing workload: nothing to skip
    targets = {t["id"]: t for t in data["targets"]}
    for target_id in ("catchup_vs_get_events", "live_vs_round_trip"):
        assert targets[target_id]["value"] is not None
    assert targets["replay_vs_es_sqlite"]["value"] is None  # not run
    nats_bus = data["workloads"][3]["points"][0]["series"]
    for key in ("aether.nats_bus", "raw.core"):
        extra = nats_bus[key]["extra"]
        assert extra["lost"] == extra["dropped"] == extra["disordered"] == 0, key
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| contender | p50 (p99) | aether vs this |" in markdown
    assert "| median events/s \\ subscribers | 1 | 100 |" in markdown
    assert not list(out.glob("*.png"))


async def test_bus_nats_starts_its_own_server_without_a_url(nats_url: str) -> None:
    """Given a connection but no URL, the cross-process workload cannot tell its processes
    where to connect: it starts a server of aether.testing for them."""

    async def connect() -> Client:
        return await nats.connect(nats_url)

    options = SuiteOptions(sizes=TINY, out_dir=None, only=("bus_nats",))
    result = await run_suite(connect, options)
    workload = result.workload("bus_nats")
    assert workload is not None
    assert "started for this workload" in workload.notes[0]
    assert workload.points[0].ratios[0].value > 0


async def test_local_bus_rounds_deliver_everything() -> None:
    events = [make_event("bus-t0001", v) for v in range(1, 501)]
    for subscribers in (1, 7):
        rate, dropped = await local_bus_round(events, subscribers)
        assert rate > 0 and dropped == 0
        assert await queue_round(events, subscribers) > 0


def test_new_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="multiple of catchup_actors"):
        Sizes(catchup_events=1_000, catchup_actors=300)
    for name in ("catchup_actors", "live_calls", "bus_subscribers", "bus_rounds"):
        zero: dict[str, Any] = {name: 0}
        with pytest.raises(ValueError, match=name):
            Sizes(**zero)


# -- the read side's targets and report rows, on made-up figures ----------------------------


def _result(*workloads: WorkloadResult) -> SuiteResult:
    env = {
        "nats_server": "2.12.0",
        "server": "test",
        "storage": "file",
        "cpus": 2,
        "cpu": "cpu",
        "platform": "linux",
        "python": "CPython 3.12",
        "aether": "0",
        "nats_py": "0",
        "eventsourcing": "0",
    }
    return SuiteResult("now", env, {"preset": "custom"}, {}, workloads=list(workloads))


def _catchup(subscribe: float, one_actor: float, per_actor: float) -> WorkloadResult:
    workload = WorkloadResult("subscribe_catchup", WORKLOADS["subscribe_catchup"], "")
    point = Point(None)
    for key, value in (
        ("aether.subscribe", subscribe),
        ("aether.get_events.one_actor", one_actor),
        ("aether.get_events.per_actor", per_actor),
    ):
        point.add(Series(key, key, "events/s", value, samples=[value]))
    point.ratio("aether.subscribe", "aether.get_events.one_actor", "vs one actor")
    point.ratio("aether.subscribe", "aether.get_events.per_actor", "vs per actor")
    workload.points.append(point)
    return workload


def _live(live_us: list[float], glv_us: list[float], after_ack_us: list[float]) -> WorkloadResult:
    workload = WorkloadResult("subscribe_live", WORKLOADS["subscribe_live"], "")
    point = Point(None)
    live = point.add(latency_series("aether.subscribe.live", "live", live_us))
    live.extra["after_ack_p50"] = sorted(after_ack_us)[len(after_ack_us) // 2]
    live.extra["after_ack_p99"] = max(after_ack_us)
    live.extra["before_ack_share"] = sum(x < 0 for x in after_ack_us) / len(after_ack_us)
    point.add(latency_series("aether.get_latest_version", "one round trip", glv_us))
    point.add(latency_series("aether.save_event", "append alone", glv_us))
    point.ratio(
        "aether.subscribe.live", "aether.get_latest_version", "vs glv", speed_of_latency=True
    )
    workload.points.append(point)
    return workload


def _targets(result: SuiteResult) -> dict[str, Target]:
    return {t.id: t for t in evaluate_targets(result, TINY)}


def test_catchup_target_is_the_ratio_to_get_events_of_as_many_events() -> None:
    met = _targets(_result(_catchup(36_000, 40_000, 20_000)))["catchup_vs_get_events"]
    assert met.value == pytest.approx(0.9)
    assert met.passed is True
    assert "same history in turn" in met.comment and "1.80x" in met.comment
    missed = _targets(_result(_catchup(30_000, 40_000, 45_000)))["catchup_vs_get_events"]
    assert missed.value == pytest.approx(0.75)
    assert missed.passed is False
    assert "Below target" in missed.comment
    not_run = _targets(_result())["catchup_vs_get_events"]
    assert not_run.value is None and not_run.passed is None


def test_live_target_is_the_p50_over_one_round_trip() -> None:
    live = [300.0, 400.0, 500.0]
    glv = [150.0, 200.0, 250.0]
    target = _targets(_result(_live(live, glv, [-20.0, -10.0, 30.0])))["live_vs_round_trip"]
    assert target.value == pytest.approx(2.0)
    assert target.passed is True  # at the threshold: p50 <= 2x
    comment = target.comment
    assert "p50 400 µs" in comment and "p99 500 µs" in comment and "200 µs" in comment
    assert "67% of the appends" in comment
    slower = _targets(_result(_live([500.0] * 3, glv, [1.0])))["live_vs_round_trip"]
    assert slower.value == pytest.approx(2.5) and slower.passed is False


def test_latency_series_and_live_note() -> None:
    series = latency_series("k", "label", [float(x) for x in range(1, 101)])
    assert series.unit == "us"
    assert series.value == pytest.approx(50.0, abs=1)
    assert series.extra["p99"] == pytest.approx(99.0, abs=1)
    assert series.extra["calls"] == 100
    point = _live([300.0, 310.0], [200.0, 210.0], [-40.0, 10.0]).points[0]
    note = live_note(point)
    assert "p50 10 µs" in note and "50% of the appends" in note


def test_report_rows_of_the_new_workloads() -> None:
    bus = WorkloadResult("bus_local", WORKLOADS["bus_local"], "", x_label="subscribers")
    for subscribers, bus_rate, queue_rate in ((1, 1e6, 1.1e6), (100, 30_000.0, 20_000.0)):
        point = Point(subscribers)
        point.add(Series("aether.event_bus", "aether EventBus", "events/s", bus_rate))
        point.add(Series("asyncio.queues", "asyncio.Queue", "events/s", queue_rate))
        point.ratio("aether.event_bus", "asyncio.queues", "vs asyncio.Queue fan-out")
        bus.points.append(point)
    result = _result(
        _catchup(36_000, 40_000, 20_000),
        _live([300.0, 400.0, 500.0], [200.0] * 3, [-5.0]),
        bus,
    )
    result.targets = evaluate_targets(result, TINY)
    markdown = render_markdown(result)
    assert "| aether.subscribe (`aether.subscribe`) | 36,000 events/s | — |" in markdown
    assert (
        "| aether.get_events.one_actor (`aether.get_events.one_actor`) | 40,000 events/s | 0.90x |"
        in markdown
    )
    assert "| contender | p50 (p99) | aether vs this |" in markdown
    assert "| live (`aether.subscribe.live`) | 400 µs (p99 500) | — |" in markdown
    assert "| one round trip (`aether.get_latest_version`) | 200 µs (p99 200) | 0.50x |" in markdown
    assert "| median events/s \\ subscribers | 1 | 100 |" in markdown
    assert "| **aether vs asyncio.Queue fan-out** | 0.91x | 1.50x |" in markdown
    assert "| 0.90x | >= 0.80x | met |" in markdown
    assert "| 2.00x | <= 2.00x | met |" in markdown


def test_cli_names_what_a_point_counts() -> None:
    assert _x_text(1, "subscribers") == "1 subscriber"
    assert _x_text(100, "subscribers") == "100 subscribers"
    assert _x_text(1_000, "events in the actor's history") == "1,000 events"
    assert _x_text(5, None) == "5"


# -- the eventsourcing persistence modules ------------------------------------------------


def test_cli_bench_runs_the_eventsourcing_module_workloads(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AETHER_BENCH_POSTGRES_DSN", raising=False)
    out = tmp_path / "results"
    args = ["--url", nats_url, "--quick", "--only", "eventsourcing", "--no-charts"]
    result = CliRunner().invoke(bench, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("aether.ext.eventsourcing (JetStream)", "eventsourcing SQLite", "repository.get"):
        assert text in result.output
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [w["id"] for w in data["workloads"]] == list(ES_WORKLOADS)
    assert [[p["x"] for p in w["points"]] for w in data["workloads"]] == [
        [1, 10],
        [10, 1_000],
        [10, 1_000],
    ]
    assert [s["what"] for s in data["skipped"]] == ["eventsourcing on PostgreSQL"]
    targets = [t for t in data["targets"] if t["workload"] in ES_WORKLOADS]
    assert len(targets) == 6 and all(t["value"] is None for t in targets)  # no PostgreSQL
    assert all("SQLite module" in t["comment"] for t in targets)
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| p50 latency (p90) \\ events per aggregate | 10 | 1,000 |" in markdown
    assert "| median events/s \\ notifications per select | 10 | 1,000 |" in markdown
    assert asyncio.run(_bench_streams(nats_url)) == []  # the module's stream deleted too


def test_eventsourcing_environments() -> None:
    env = module_env("nats://127.0.0.1:4222", "bench_es", "memory")
    assert env == {
        "PERSISTENCE_MODULE": "aether.ext.eventsourcing",
        "NATS_URL": "nats://127.0.0.1:4222",
        "NATS_STREAM": "bench_es",
        "NATS_STORAGE": "memory",
    }
    peer = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": "/tmp/x/es.db"}
    assert sqlite_env(peer) == {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": "/tmp/x/es_module.db",
    }


def test_eventsourcing_sizes_are_checked() -> None:
    for name in ("es_save_sizes", "es_get_lengths", "es_log_pages"):
        for bad in ((), (0, 1), (10, 1)):
            wrong: dict[str, Any] = {name: bad}
            with pytest.raises(ValueError, match=name):
                Sizes(**wrong)
    for name in ("es_saves", "es_gets", "es_rounds", "es_log_events", "es_log_rounds"):
        zero: dict[str, Any] = {name: 0}
        with pytest.raises(ValueError, match=name):
            Sizes(**zero)


def test_eventsourcing_latency_series_is_the_median_of_round_p50s() -> None:
    series = es_latency_series("aether.get", "get", [[0.001, 0.002, 0.003], [0.004, 0.005, 0.1]])
    assert series.unit == "us"
    assert series.samples == pytest.approx([2_000.0, 5_000.0])
    assert series.value == pytest.approx(3_500.0)
    assert series.extra["p99"] == pytest.approx(100_000.0)


def _es_workload(workload_id: str, x: int, unit: str, figures: dict[str, float]) -> WorkloadResult:
    op = {"eventsourcing_save": "save", "eventsourcing_get": "get", "eventsourcing_log": "log"}
    workload = WorkloadResult(workload_id, WORKLOADS[workload_id], "", x_label="things")
    point = Point(x)
    for prefix, value in figures.items():
        key = f"{prefix}.{op[workload_id]}"
        point.add(Series(key, key, unit, value, samples=[value]))
    for baseline in ("es_sqlite", "es_postgres"):
        point.ratio(
            f"aether.{op[workload_id]}",
            f"{baseline}.{op[workload_id]}",
            f"vs {baseline}",
            speed_of_latency=unit == "us",
        )
    workload.points.append(point)
    return workload


def test_eventsourcing_targets_are_one_per_line_against_postgresql() -> None:
    sizes = Sizes(es_save_sizes=(1, 10), es_get_lengths=(10,), es_log_pages=(10,))
    result = _result(
        _es_workload(
            "eventsourcing_save",
            1,
            "events/s",
            {"aether": 2_000, "es_sqlite": 4_000, "es_postgres": 1_000},
        ),
        _es_workload(
            "eventsourcing_get", 10, "us", {"aether": 500, "es_sqlite": 250, "es_postgres": 1_000}
        ),
        _es_workload(
            "eventsourcing_log",
            10,
            "notifications/s",
            {"aether": 10_000, "es_sqlite": 50_000, "es_postgres": 20_000},
        ),
    )
    targets = {t.id: t for t in es_targets(result, sizes)}
    assert list(targets) == [
        "eventsourcing_save_1_vs_postgres",
        "eventsourcing_save_10_vs_postgres",
        "eventsourcing_get_10_vs_postgres",
        "eventsourcing_log_10_vs_postgres",
    ]
    save1 = targets["eventsourcing_save_1_vs_postgres"]
    assert save1.value == pytest.approx(2.0) and save1.passed is True and save1.primary
    assert (
        save1.title == "eventsourcing app.save of 1 event: aether.ext.eventsourcing vs PostgreSQL"
    )
    assert "SQLite module: 0.50x" in save1.comment
    assert targets["eventsourcing_save_10_vs_postgres"].passed is None  # that line did not run
    get10 = targets["eventsourcing_get_10_vs_postgres"]
    assert get10.value == pytest.approx(2.0)  # latency: PostgreSQL's over aether's
    assert "p50 500 µs against 1,000 µs on PostgreSQL" in get10.comment
    assert "10-event aggregate" in get10.title
    log10 = targets["eventsourcing_log_10_vs_postgres"]
    assert log10.value == pytest.approx(0.5) and log10.passed is False
    assert log10.threshold_text() == ">= 1.00x"
    # ... and in the report: a target row per line, met or not.
    result.targets = es_targets(result, sizes)
    markdown = render_markdown(result)
    assert "| 2.00x | >= 1.00x | met |" in markdown
    assert "| 0.50x | >= 1.00x | **not met** |" in markdown
    assert "| — | >= 1.00x | not run |" in markdown


def test_only_eventsourcing_selects_the_persistence_module_workloads() -> None:
    assert SuiteOptions(only=("eventsourcing",)).selected() == list(ES_WORKLOADS)
