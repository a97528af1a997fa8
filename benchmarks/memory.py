"""Peak memory (RSS) of aether's JetStream store, each workload in a process of its own.

Run it from the repository root with ``.venv/bin/python -m benchmarks.memory``
(``--quick`` for a smoke run, ``--events N`` for the replayed history, ``--actors N`` for
the actors written). It starts one embedded ``nats-server`` (file storage, temp dir),
writes the history once, then runs every measurement in a fresh Python subprocess, so that
each peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that workload alone:

1. **baseline**: a process that imported aether, connected and opened the store.
2. **iter_events** over the N-event actor, keeping no event (bounded: two pull batches).
3. **get_events** over the same N events: the list is held (the contrast).
4. **actors**: N distinct actors written (one event each, 128 concurrent tasks) with the
   default ``version_cache_size`` (100,000), and with a small cache (1,000).

Every figure is compared with the baseline measured in the same run: the growth over it
(MiB) and the ratio to it. The JSON report goes to ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import nats

import aether
from aether import Event
from aether.store import JetStreamConfig, JetStreamEventStore
from aether.testing import NatsServer

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "memory.json"
HISTORY_STREAM = "memory_history"
HISTORY_ACTOR = "history"
BATCH = 1000  # save_events batch size (the server's atomic batch limit)
WRITERS = 128  # concurrent tasks writing the actors
DEFAULT_CACHE = JetStreamConfig().version_cache_size
SMALL_CACHE = 1000
MIB = 1024 * 1024


@dataclass(frozen=True)
class Params:
    """Sizes of one run."""

    events: int  # history length of the replayed actor
    actors: int  # distinct actors written in the cache workloads
    small_cache: int  # version_cache_size of the small-cache workload


FULL = Params(events=100_000, actors=200_000, small_cache=SMALL_CACHE)
QUICK = Params(events=10_000, actors=20_000, small_cache=SMALL_CACHE)


@dataclass
class Row:
    """One measured workload. ``peak_rss_mib`` is the process's ``ru_maxrss``;
    ``workload_growth_mib`` what the workload alone added to the RSS it started from
    (None where the high-water mark cannot be reset)."""

    workload: str
    peak_rss_mib: float
    over_baseline_mib: float
    ratio_to_baseline: float
    workload_growth_mib: float | None
    growth_over_baseline_mib: float | None
    seconds: float
    detail: dict[str, Any]


def make_event(actor_id: str, version: int) -> Event:
    """The benchmark's typical small event (~200 bytes of JSON), as in ``baselines.py``."""
    return Event(
        event_type="Deposited",
        actor_id=actor_id,
        version=version,
        data={"amount": version, "currency": "EUR", "note": "benchmark deposit"},
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def proc_status_bytes(field: str) -> int | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak) from /proc/self/status; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0), so the
    next ``VmHWM`` is the workload's own peak, not the imports'."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


# -- the child processes ---------------------------------------------------------------------


async def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement; returns what the parent reports. Runs in a fresh process.

    ``peak_rss_bytes`` is the process's lifetime peak (``ru_maxrss``: imports, connection
    and workload). Where Linux allows it, the high-water mark is also reset once the store
    is open, so ``workload_peak_bytes - rss_before_bytes`` is what the workload itself added.
    """
    nc = await nats.connect(spec["url"])
    try:
        mode = spec["mode"]
        config = JetStreamConfig(version_cache_size=spec.get("cache_size", DEFAULT_CACHE))
        store = await JetStreamEventStore.open(nc, spec["stream"], config)
        setup_peak = peak_rss_bytes()  # read before the reset, which also lowers ru_maxrss
        rss_before = proc_status_bytes("VmRSS")
        was_reset = reset_peak_rss()
        started = time.perf_counter()
        detail: dict[str, Any] = {}
        if mode == "baseline":
            detail["latest"] = await store.get_latest_version(HISTORY_ACTOR)
        elif mode == "iter_events":
            count = 0
            async for _ in store.iter_events(HISTORY_ACTOR):
                count += 1
            detail["events"] = count
        elif mode == "get_events":
            events = await store.get_events(HISTORY_ACTOR)
            detail["events"] = len(events)
        elif mode == "actors":
            detail.update(await write_actors(store, spec["actors"]))
        else:
            raise ValueError(f"unknown mode {mode!r}")
        detail["seconds"] = time.perf_counter() - started
        detail["peak_rss_bytes"] = max(setup_peak, peak_rss_bytes())
        detail["rss_before_bytes"] = rss_before
        detail["workload_peak_bytes"] = proc_status_bytes("VmHWM") if was_reset else None
        return detail
    finally:
        await nc.close()


async def write_actors(store: JetStreamEventStore, actors: int) -> dict[str, Any]:
    """Write one event to each of *actors* distinct actors, *WRITERS* at a time."""
    todo = iter(range(actors))

    async def writer() -> None:
        for i in todo:
            await store.save_event(make_event(f"actor-{i}", 1))

    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    return {
        "actors": actors,
        "cache_size": store.config.version_cache_size,
        "cached": store.stats.cached_actors,  # the bound holds: min(actors, cache_size)
        "cache_misses": store.stats.cache_misses,
    }


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and return its JSON answer.

    The child runs this file as a script, not ``-m benchmarks.memory``: it imports aether
    and nothing of the ``benchmarks`` package, so its baseline is aether's alone.
    """
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measurement {spec['mode']} failed:\n{done.stderr}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


# -- the parent ------------------------------------------------------------------------------


async def populate(url: str, events: int) -> tuple[float, dict[str, Any]]:
    """Write the replayed history in atomic batches; returns (seconds, environment)."""
    nc = await nats.connect(url)
    try:
        store = await JetStreamEventStore.open(nc, HISTORY_STREAM)
        started = time.perf_counter()
        for first in range(1, events + 1, BATCH):
            last = min(first + BATCH, events + 1)
            await store.save_events([make_event(HISTORY_ACTOR, v) for v in range(first, last)])
        if await store.get_latest_version(HISTORY_ACTOR) != events:
            raise RuntimeError("history population mismatch")
        return time.perf_counter() - started, environment(nc)
    finally:
        await nc.close()


def environment(nc: Any) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "nats_server": str(nc.connected_server_version),
        "nats_py": dist_version("nats-py"),
        "aether": aether.__version__,
    }


def run(p: Params) -> dict[str, Any]:
    """Every measurement against one fresh server; returns the JSON report."""
    started = time.perf_counter()
    with NatsServer() as server:
        fill_s, env = asyncio.run(populate(server.url, p.events))
        print(
            f"nats-server {env['nats_server']}, file storage; history of {p.events:,} events "
            f"written in {fill_s:.1f}s",
            flush=True,
        )
        base = {"url": server.url, "stream": HISTORY_STREAM}
        specs: list[tuple[str, dict[str, Any]]] = [
            ("baseline (import, connect, open)", {**base, "mode": "baseline"}),
            (f"iter_events, {p.events:,} events", {**base, "mode": "iter_events"}),
            (f"get_events (list), {p.events:,} events", {**base, "mode": "get_events"}),
        ]
        for cache in (DEFAULT_CACHE, p.small_cache):
            workload = f"{p.actors:,} actors, version_cache_size={cache:,}"
            spec = {**base, "mode": "actors", "stream": f"memory_actors_{cache}"}
            specs.append((workload, {**spec, "actors": p.actors, "cache_size": cache}))
        answers: list[tuple[str, dict[str, Any]]] = []
        for workload, spec in specs:
            answer = run_child(spec)
            answers.append((workload, answer))
            growth = growth_bytes(answer)
            print(
                f"  {workload}: peak {answer['peak_rss_bytes'] / MIB:.1f} MiB"
                + ("" if growth is None else f", workload +{growth / MIB:.1f} MiB"),
                flush=True,
            )
    baseline = answers[0][1]["peak_rss_bytes"]
    baseline_growth = growth_bytes(answers[0][1])
    rows = []
    for workload, answer in answers:
        growth = growth_bytes(answer)
        rows.append(
            Row(
                workload=workload,
                peak_rss_mib=answer["peak_rss_bytes"] / MIB,
                over_baseline_mib=(answer["peak_rss_bytes"] - baseline) / MIB,
                ratio_to_baseline=answer["peak_rss_bytes"] / baseline,
                workload_growth_mib=None if growth is None else growth / MIB,
                growth_over_baseline_mib=(
                    None
                    if growth is None or baseline_growth is None
                    else (growth - baseline_growth) / MIB
                ),
                seconds=answer["seconds"],
                detail=answer,
            )
        )
    by_mode = {
        spec["mode"] + str(spec.get("cache_size", "")): row
        for (_, spec), row in zip(specs, rows, strict=True)
    }
    summary = derived(p, by_mode)
    return {
        "benchmark": "memory",
        "when": datetime.now(UTC).isoformat(),
        "params": asdict(p),
        "environment": env,
        "elapsed_s": time.perf_counter() - started,
        "rows": [asdict(row) for row in rows],
        "summary": summary,
    }


def growth_bytes(answer: dict[str, Any]) -> int | None:
    """RSS the workload added on top of what the process held when it started."""
    peak, before = answer["workload_peak_bytes"], answer["rss_before_bytes"]
    return None if peak is None or before is None else int(peak - before)


def derived(p: Params, rows: dict[str, Row]) -> dict[str, float | None]:
    """Figures read off the rows: replay growth and the cache's cost per entry."""
    iterate, listed = rows["iter_events"], rows["get_events"]
    default, small = rows[f"actors{DEFAULT_CACHE}"], rows[f"actors{p.small_cache}"]
    cached_default = min(p.actors, DEFAULT_CACHE)
    cached_small = min(p.actors, p.small_cache)
    entries = max(1, cached_default - cached_small)

    def per(row: Row, other: Row | None, count: int) -> float | None:
        if row.workload_growth_mib is None:  # no reset: use the process peaks
            other_mib = 0.0 if other is None else other.over_baseline_mib
            return (row.over_baseline_mib - other_mib) * MIB / count
        other_growth = 0.0 if other is None else other.workload_growth_mib or 0.0
        return (row.workload_growth_mib - other_growth) * MIB / count

    return {
        "iter_events_growth_mib": iterate.workload_growth_mib,
        "get_events_growth_mib": listed.workload_growth_mib,
        "get_events_bytes_per_event": per(listed, None, p.events),
        "cache_bytes_per_entry": per(default, small, entries),
    }


def render(rows: Sequence[Row], summary: dict[str, float | None]) -> str:
    header = ["workload", "peak RSS MiB", "x baseline", "over baseline", "workload +MiB"]
    header.append("seconds")

    def mib(value: float | None, sign: bool = False) -> str:
        if value is None:
            return "-"
        return f"{value:+.1f}" if sign else f"{value:.1f}"

    lines = [header] + [
        [
            row.workload,
            mib(row.peak_rss_mib),
            f"{row.ratio_to_baseline:.2f}x",
            mib(row.over_baseline_mib, sign=True),
            mib(row.workload_growth_mib, sign=True),
            f"{row.seconds:.1f}",
        ]
        for row in rows
    ]
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
    out.append(
        "peak RSS: the process's ru_maxrss (imports, connection, workload); over baseline: "
        "minus the baseline process's;"
    )
    out.append(
        "workload +MiB: the RSS high-water mark reset once the store was open "
        "(/proc/self/clear_refs), so the workload's own growth."
    )
    per_event, per_entry = summary["get_events_bytes_per_event"], summary["cache_bytes_per_entry"]
    if per_event is not None and per_entry is not None:
        out.append(
            f"get_events holds ~{per_event:.0f} bytes per event; "
            f"a version-cache entry costs ~{per_entry:.0f} bytes of RSS"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--events", type=int, help="history length of the replayed actor")
    parser.add_argument("--actors", type=int, help="distinct actors in the cache workloads")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(asyncio.run(child(json.loads(args.child)))), flush=True)
        return 0
    p = QUICK if args.quick else FULL
    if args.events is not None:
        if args.events < 1:
            parser.error("--events must be at least 1")
        p = replace(p, events=args.events)
    if args.actors is not None:
        if args.actors < 1:
            parser.error("--actors must be at least 1")
        p = replace(p, actors=args.actors)
    report = run(p)
    rows = [Row(**row) for row in report["rows"]]
    print()
    print(render(rows, report["summary"]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\ntotal {report['elapsed_s']:.0f}s; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
