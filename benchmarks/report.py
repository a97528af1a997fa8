"""The written results: ``results.json`` (everything) and ``results.md`` (the tables)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.model import Point, Ratio, Series, SuiteResult, WorkloadResult

__all__ = [
    "RATIO_NOTE",
    "format_duration",
    "format_series",
    "format_value",
    "render_markdown",
    "write",
]

RATIO_NOTE = (
    "Every ratio compares aether with a baseline measured in the same run (medians of "
    "interleaved rounds): above 1.00x aether is faster (more events/s, or a lower latency: "
    "for latencies the ratio is baseline / aether), below 1.00x it is slower."
)


def write(result: SuiteResult, out_dir: Path) -> dict[str, Path]:
    """Write results.json and results.md into *out_dir*; returns {kind: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    md_path = out_dir / "results.md"
    md_path.write_text(render_markdown(result), encoding="utf-8")
    return {"json": json_path, "markdown": md_path}


def format_value(value: float, unit: str) -> str:
    if unit == "us":
        return f"{value:,.0f} µs"
    if unit == "ms":
        return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"
    suffix = unit.split("/", 1)[0] if "/" in unit else unit
    return f"{value:,.0f} {suffix}/s" if "/" in unit else f"{value:,.2f} {suffix}"


def format_series(series: Series) -> str:
    """The series' figure, with its conflicts/s or p99 if it has them."""
    return format_value(series.value, series.unit) + _extra_text(series)


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _ratio_text(ratio: Ratio) -> str:
    return f"{ratio.value:.2f}x"


def _mark(passed: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not run"}[passed]


def render_markdown(result: SuiteResult) -> str:
    env = result.environment
    lines = [
        "# aether benchmark results",
        "",
        f"- when: {result.started_at}, {result.parameters['preset']} preset, "
        f"took {format_duration(result.elapsed_s)}",
        f"- command: `{env.get('command', 'python -m benchmarks.run')}`",
        f"- server: nats-server {env['nats_server']} ({env['server']}, {env['storage']} storage)",
        f"- machine: {env['cpus']} CPUs ({env['cpu']}), {env['platform']}, {env['python']}",
        f"- versions: aether {env['aether']}, nats-py {env['nats_py']}, "
        f"eventsourcing {env['eventsourcing']}"
        + (f", SQLite {env['sqlite']}" if "sqlite" in env else "")
        + (f", PostgreSQL {env['postgresql']}" if "postgresql" in env else ""),
    ]
    if "load_average_at_start" in env:
        lines.append(
            f"- load average at start: {', '.join(map(str, env['load_average_at_start']))}"
        )
    lines.append("")
    if result.skipped:
        for skipped in result.skipped:
            lines.append(f"> **Skipped: {skipped.what}.** {skipped.reason}.")
            lines.append(">")
        lines.pop()
        lines.append("")
    lines += [RATIO_NOTE, ""]

    if result.targets:
        lines += [
            "## Targets",
            "",
            "| target | ratio | goal | result |",
            "| --- | ---: | ---: | --- |",
        ]
        for target in result.targets:
            value = "—" if target.value is None else f"{target.value:.2f}x"
            name = target.title if target.primary else f"{target.title} (standing)"
            lines.append(
                f"| {name} | {value} | {target.threshold_text()} | {_mark(target.passed)} |"
            )
        lines.append("")
        for target in result.targets:
            if target.comment and target.value is not None:
                lines.append(f"- *{target.title}*: {target.comment}")
        lines.append("")

    lines.append("## Workloads")
    lines.append("")
    for workload in result.workloads:
        lines += _workload_section(workload)
    lines.append("## Baselines")
    lines.append("")
    for key, text in result.baselines.items():
        lines.append(f"- `{key}`: {text}")
    lines.append("")
    return "\n".join(lines)


def _workload_section(workload: WorkloadResult) -> list[str]:
    lines = [
        f"### {workload.title}",
        "",
        f"{workload.description} ({format_duration(workload.elapsed_s)})",
        "",
    ]
    if len(workload.points) == 1:
        lines += _flat_table(workload.points[0], workload)
    else:
        lines += _history_table(workload)
    for note in workload.notes:
        lines.append(f"- {note}")
    if workload.notes:
        lines.append("")
    return lines


def _flat_table(point: Point, workload: WorkloadResult) -> list[str]:
    """One row per contender, with the main aether figure's ratio against it; other
    ratios (aether against aether, interleaved figures) follow as a list."""
    latency = all(s.unit == "us" for s in point.series.values())
    what = "p50 (p99)" if latency else "median"
    heading = what if point.x is None else f"{what} ({point.x:,} events)"
    main = _first_aether(point)
    lines = [f"| contender | {heading} | aether vs this |", "| --- | ---: | ---: |"]
    against = {r.baseline: r for r in point.ratios if r.contender == main}
    for key, series in point.series.items():
        ratio = against.get(key)
        lines.append(
            f"| {series.label} (`{key}`) | {format_series(series)} "
            f"| {_ratio_text(ratio) if ratio else '—'} |"
        )
    lines.append("")
    others = [r for r in point.ratios if r.contender != main]
    for ratio in others:
        contender = point.series[ratio.contender].label
        lines.append(f"- {contender}, {ratio.label}: {_ratio_text(ratio)}")
    if others:
        lines.append("")
    return lines


def _first_aether(point: Point) -> str:
    for key in point.series:
        if key.startswith("aether."):
            return key
    return ""


def _extra_text(series: Series) -> str:
    if "conflicts_per_s" in series.extra:
        return f", {series.extra['conflicts_per_s']:,.0f} conflicts/s"
    if series.unit == "us" and "p99" in series.extra:
        return f" (p99 {series.extra['p99']:,.0f})"
    return ""


def _history_table(workload: WorkloadResult) -> list[str]:
    """Rows: contenders, then aether's ratios; columns: history lengths."""
    points = sorted(workload.points, key=lambda p: p.x or 0)
    xs = [p.x or 0 for p in points]
    unit = next(iter(points[0].series.values())).unit
    what = "p50 latency (p90)" if unit == "us" else "median events/s"
    header = f"| {what} \\ {workload.x_label} | " + " | ".join(f"{x:,}" for x in xs) + " |"
    lines = [header, "| --- |" + " ---: |" * len(xs)]
    keys: list[str] = []
    labels: dict[str, str] = {}
    for point in points:
        for key, series in point.series.items():
            if key not in labels:
                keys.append(key)
                labels[key] = series.label
    for key in keys:
        cells = []
        for point in points:
            found = point.series.get(key)
            if found is None:
                cells.append("—")
            elif "p90" in found.extra:
                p90 = found.extra["p90"]
                cells.append(f"{format_value(found.value, found.unit)} (p90 {p90:,.0f})")
            else:
                cells.append(format_value(found.value, found.unit))
        lines.append(f"| {labels[key]} (`{key}`) | " + " | ".join(cells) + " |")
    ratio_keys: list[tuple[str, str, str]] = []
    for point in points:
        for ratio in point.ratios:
            ident = (ratio.contender, ratio.baseline, ratio.label)
            if ident not in ratio_keys:
                ratio_keys.append(ident)
    for contender, baseline, label in ratio_keys:
        cells = []
        for point in points:
            match = next(
                (r for r in point.ratios if (r.contender, r.baseline) == (contender, baseline)),
                None,
            )
            cells.append("—" if match is None else _ratio_text(match))
        lines.append(f"| **aether {label}** | " + " | ".join(cells) + " |")
    lines.append("")
    return lines
