"""PNG charts of a suite run, drawn with matplotlib's Agg backend (no display needed).

matplotlib is imported lazily, so ``import benchmarks`` and
``python -m benchmarks.run --no-charts`` never need it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from benchmarks.baselines import require
from benchmarks.model import SuiteResult, WorkloadResult

__all__ = ["check_available", "write"]

_COLORS = {
    "aether": "#1f77b4",
    "raw": "#7f7f7f",
    "es_sqlite": "#2ca02c",
    "es_postgres": "#9467bd",
}
_STYLES = ["-", "--", ":", "-."]


def check_available() -> None:
    """Raise BenchDependencyError if matplotlib is missing."""
    require("matplotlib", "drawing the charts (or pass --no-charts)")


def _figure(width: float = 7.5, height: float = 4.5) -> Any:
    check_available()
    figure_module = importlib.import_module("matplotlib.figure")
    importlib.import_module("matplotlib.backends.backend_agg")
    return figure_module.Figure(figsize=(width, height), dpi=110, layout="constrained")


def write(result: SuiteResult, out_dir: Path) -> dict[str, Path]:
    """Draw every chart whose workload ran; returns {name: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    latency = result.workload("latest_version")
    if latency is not None and len(latency.points) > 1:
        path = out_dir / "latest_version_latency.png"
        _history_chart(
            latency,
            path,
            "get_latest_version latency (p50, whiskers to p90)",
            "µs per call (lower is better)",
            with_p90=True,
        )
        written["latest_version_latency"] = path
    load = result.workload("load")
    if load is not None and len(load.points) > 1:
        path = out_dir / "load_latency.png"
        _history_chart(
            load,
            path,
            "loading a history: latency (p50, whiskers to p90)",
            "µs per load, log scale (lower is better)",
            with_p90=True,
            log_y=True,  # 1 to 1,000 events: three orders of magnitude of work
        )
        written["load_latency"] = path
    replay = result.workload("replay")
    if replay is not None and len(replay.points) > 1:
        path = out_dir / "replay_throughput.png"
        _history_chart(replay, path, "replay throughput", "events/s (higher is better)")
        written["replay_throughput"] = path
    if any(result.workload(w) for w in ("append_single", "append_pipelined", "append_hot")):
        path = out_dir / "append_throughput.png"
        _append_chart(result, path)
        written["append_throughput"] = path
    return written


def _color(key: str) -> str:
    return _COLORS.get(key.split(".", 1)[0], "#d62728")


def _history_chart(
    workload: WorkloadResult,
    path: Path,
    title: str,
    ylabel: str,
    *,
    with_p90: bool = False,
    log_y: bool = False,
) -> None:
    fig = _figure()
    ax = fig.subplots()
    points = sorted(workload.points, key=lambda p: p.x or 0)
    keys: list[str] = []
    for point in points:
        keys += [k for k in point.series if k not in keys]
    style_of: dict[str, int] = {}
    for index, key in enumerate(keys):
        # Side by side around each history length (log axis), so whiskers do not overlap.
        dodge = 1.07 ** (index - (len(keys) - 1) / 2) if with_p90 else 1.0
        xs, ys, errs = [], [], []
        label = key
        for point in points:
            series = point.series.get(key)
            if series is None:
                continue
            xs.append((point.x or 0) * dodge)
            ys.append(series.value)
            errs.append(max(0.0, series.extra.get("p90", series.value) - series.value))
            label = series.label
        family = key.split(".", 1)[0]
        style = _STYLES[style_of.get(family, 0) % len(_STYLES)]
        style_of[family] = style_of.get(family, 0) + 1
        kwargs: dict[str, Any] = {
            "color": _color(key),
            "linestyle": style,
            "marker": "o",
            "label": label,
            "linewidth": 2.4 if family == "aether" else 1.6,
        }
        if with_p90:
            ax.errorbar(xs, ys, yerr=[[0.0] * len(errs), errs], capsize=3, **kwargs)
        else:
            ax.plot(xs, ys, **kwargs)
    ax.set_xscale("log")
    if with_p90 and not log_y:
        ax.set_ylim(bottom=0)  # latencies: a linear axis from zero shows the real gaps
    else:
        ax.set_yscale("log")
    ax.set_xticks([p.x for p in points])
    ax.set_xticklabels([f"{p.x:,}" for p in points])
    ax.set_xlabel(workload.x_label or "")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.minorticks_off()
    ax.legend(fontsize="small", loc="best")
    fig.savefig(path)


def _append_chart(result: SuiteResult, path: Path) -> None:
    panels = [
        workload
        for workload_id in ("append_single", "append_pipelined", "append_hot")
        if (workload := result.workload(workload_id)) is not None
    ]
    bars_total = sum(len(w.points[0].series) for w in panels)
    fig = _figure(7.5, 1.0 + 0.9 * len(panels) + 0.35 * bars_total)
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, workload in zip(axes[:, 0], panels, strict=True):
        workload_id = workload.id
        series = list(workload.points[0].series.values())
        labels = [s.label for s in series]
        values = [s.value for s in series]
        bars = ax.barh(labels, values, color=[_color(s.key) for s in series])
        ax.bar_label(bars, labels=[f"{v:,.0f}/s" for v in values], padding=3, fontsize="small")
        ax.invert_yaxis()
        ax.set_title(workload.title, fontsize="medium")
        ax.set_xlabel("successful events/s" if workload_id == "append_hot" else "events/s")
        ax.margins(x=0.2)
        ax.tick_params(axis="y", labelsize="small")
    fig.savefig(path)
