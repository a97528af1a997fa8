"""The benchmark suite (``benchmarks/``, ``python -m benchmarks.run``) in its smallest mode:
what it writes, not how fast.

No timing assertions here: ratios and targets depend on the machine. These tests check
that every workload runs next to its baselines, and that the JSON, the Markdown and the
charts are written, with PostgreSQL reported as skipped when no DSN is given.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from click.testing import CliRunner

from benchmarks import WORKLOADS, BenchDependencyError, Sizes, SuiteOptions, run_suite
from benchmarks.baselines import require
from benchmarks.run import bench

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
    replay_rounds=1,
    long_replay_rounds=1,
    long_history=10,
    snapshot_tail=2,
    snapshot_rounds=1,
)
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
    assert not any(key.startswith("es_postgres.") for key in series)

    # Targets are judged (values present), whatever the verdict on this machine.
    targets = {t["id"]: t for t in data["targets"]}
    assert {"pipelined_vs_publish_async", "replay_vs_es_sqlite"} <= set(targets)
    for target in targets.values():
        assert target["value"] is not None and target["passed"] in (True, False)

    # PostgreSQL: skipped, and said so in the JSON and the Markdown.
    assert [s["what"] for s in data["skipped"]] == ["eventsourcing on PostgreSQL"]
    assert "no PostgreSQL DSN" in data["skipped"][0]["reason"]
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "Skipped: eventsourcing on PostgreSQL" in markdown
    assert "| target | ratio | goal | result |" in markdown
    for title in WORKLOADS.values():
        assert f"### {title}" in markdown

    for name in ("latest_version_latency", "replay_throughput", "append_throughput"):
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
