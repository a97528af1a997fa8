"""``aether bench``: every workload next to its baselines, in one run, with ratios.

Runs the suite of :mod:`aether._bench` (also ``benchmarks/run.py`` in a checkout) against
an embedded nats-server, or the ``--url`` server, and writes ``results.json``,
``results.md`` and PNG charts to ``--out``. Needs the ``bench`` extra (eventsourcing,
matplotlib, psycopg): ``pip install 'aether[bench]'``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import click
from nats.aio.client import Client
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from aether._bench import (
    DEFAULT_OUT_DIR,
    POSTGRES_DSN_ENV,
    WORKLOADS,
    BenchDependencyError,
    Connector,
    SuiteOptions,
    SuiteResult,
    run_suite,
)
from aether._bench.report import RATIO_NOTE, format_duration, format_series

from ._connect import ConnectionSettings, ServerTarget, connect, connection_options, embedded_or_url
from ._errors import CliError, translate_errors
from ._output import make_table, stdout_console

__all__ = ["bench"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@connection_options(
    url_help="NATS server to benchmark [env NATS_URL; default: start an embedded nats-server]."
)
@click.option("--quick", is_flag=True, help="Small sizes: a smoke run, well under a minute.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT_DIR,
    show_default=True,
    help="Directory for results.json, results.md and the PNG charts.",
)
@click.option(
    "--postgres-dsn",
    envvar=POSTGRES_DSN_ENV,
    metavar="DSN",
    default=None,
    help="PostgreSQL for the eventsourcing/PostgreSQL baseline, e.g. "
    f"postgresql://user@127.0.0.1:5432/db [env {POSTGRES_DSN_ENV}; "
    "benchmarks/setup_postgres.sh starts one]. Skipped (and said so) without it.",
)
@click.option("--no-charts", is_flag=True, help="Do not draw the PNG charts (no matplotlib).")
@click.option(
    "--only",
    multiple=True,
    metavar="WORKLOAD",
    help=f"Run only these workloads (repeatable or comma-separated; a prefix such as "
    f"'append' selects a group): {', '.join(WORKLOADS)}.",
)
@click.option(
    "--fail-on-target",
    is_flag=True,
    help="Exit with code 1 if a target is not met (default: report it, exit 0).",
)
def bench(
    conn: ConnectionSettings,
    quick: bool,
    out_dir: Path,
    postgres_dsn: str | None,
    no_charts: bool,
    only: tuple[str, ...],
    fail_on_target: bool,
) -> None:
    """Benchmark aether against raw nats-py and the eventsourcing library, side by side.

    Appends (1 writer; concurrent writers on distinct actors; a hot actor),
    get_latest_version latency and replay throughput by history length, and snapshot +
    tail against full replay. Baselines run in the same rounds (interleaved), and every
    figure is reported as a ratio to them. The full run takes a few minutes; --quick
    well under one.
    """
    names = tuple(part.strip() for item in only for part in item.split(",") if part.strip())
    options = SuiteOptions(
        quick=quick,
        out_dir=out_dir,
        postgres_dsn=postgres_dsn or None,
        charts=not no_charts,
        only=names,
        command=click.get_current_context().command_path + (" --quick" if quick else ""),
    )
    try:
        options.selected()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--only") from None
    with embedded_or_url(conn) as target:
        options = _with_server(options, target)
        try:
            with translate_errors(), _RichProgress() as progress:
                result = asyncio.run(run_suite(_connector(target), options, progress))
        except BenchDependencyError as exc:
            raise CliError(str(exc)) from None
    print_result(result)
    if fail_on_target and any(t.passed is False for t in result.targets):
        raise click.exceptions.Exit(1)


def _with_server(options: SuiteOptions, target: ServerTarget) -> SuiteOptions:
    server = (
        "embedded, started by the suite, temp dir"
        if target.embedded
        else "the --url server, shared with whatever else runs there"
    )
    return replace(options, server=server)


def _connector(target: ServerTarget) -> Connector:
    async def open_connection() -> Client:
        return await connect(target.settings, name="aether bench")

    return open_connection


def print_result(result: SuiteResult) -> None:
    """The tables on stdout: every figure with aether's ratio to it, then the targets."""
    console = stdout_console()
    table = make_table(
        "workload",
        "history",
        "contender",
        "median",
        "aether vs this",
        right=("history", "median", "aether vs this"),
    )
    for workload in result.workloads:
        for point in sorted(workload.points, key=lambda p: p.x or 0):
            main = next((k for k in point.series if k.startswith("aether.")), "")
            ratios = {r.baseline: r for r in point.ratios if r.contender == main}
            for key, series in point.series.items():
                ratio = ratios.get(key)
                table.add_row(
                    workload.id,
                    "" if point.x is None else f"{point.x:,}",
                    series.label,
                    format_series(series),
                    f"{ratio.value:.2f}x" if ratio else "",
                )
            table.add_section()
    console.print(table)
    console.print(RATIO_NOTE, style="dim")
    console.print()
    targets = make_table("target", "ratio", "goal", "result", right=("ratio", "goal"))
    for target in result.targets:
        targets.add_row(
            target.title + ("" if target.primary else " (standing)"),
            "—" if target.value is None else f"{target.value:.2f}x",
            target.threshold_text(),
            {True: "[green]met[/]", False: "[red]not met[/]", None: "not run"}[target.passed],
        )
    console.print(targets)
    for target in result.targets:
        if target.comment and target.passed is False:
            console.print(f"[bold]{target.title}[/]: {target.comment}")
    for skipped in result.skipped:
        console.print(f"[yellow]skipped[/] {skipped.what}: {skipped.reason}")
    files = ", ".join(str(path) for path in result.files.values())
    console.print(
        f"took {format_duration(result.elapsed_s)}" + (f"; wrote {files}" if files else "")
    )


class _RichProgress:
    """Progress bars on stderr, one per workload (a ProgressSink)."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._tasks: dict[str, tuple[TaskID, int]] = {}

    def __enter__(self) -> _RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def start(self, workload: str, description: str, total: int) -> None:
        self._tasks[workload] = (self._progress.add_task(description, total=total), total)

    def advance(self, workload: str, steps: int = 1) -> None:
        if workload in self._tasks:
            self._progress.advance(self._tasks[workload][0], steps)

    def finish(self, workload: str) -> None:
        if workload in self._tasks:
            task, total = self._tasks[workload]
            self._progress.update(task, completed=total)

    def message(self, text: str) -> None:
        self._progress.console.log(text)
