"""Run the benchmark suite: every workload next to its baselines, in one run, with ratios.

From the repository root (``benchmarks`` is a plain package of the checkout, not installed),
with the ``bench`` extra (``pip install -e ".[bench]"``)::

    .venv/bin/python -m benchmarks.run            # full run, a few minutes
    .venv/bin/python -m benchmarks.run --quick    # smoke run, well under a minute
    .venv/bin/python -m benchmarks.run --help     # every option

Runs the suite (:func:`benchmarks.run_suite`) against an embedded nats-server, or the
``--url`` server, and writes ``results.json``, ``results.md`` and PNG charts to ``--out``
(default: this checkout's ``benchmarks/results/``); see ``benchmarks/README.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import click
import nats.errors
from nats.aio.client import Client
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from aether import AetherError
from aether.testing import NatsServer, NatsServerNotFoundError, NatsServerStartupError
from benchmarks import (
    DEFAULT_OUT_DIR,
    POSTGRES_DSN_ENV,
    WORKLOADS,
    BenchDependencyError,
    Connector,
    SuiteOptions,
    SuiteResult,
    run_suite,
)
from benchmarks.report import RATIO_NOTE, format_duration, format_series

__all__ = ["bench", "main", "print_result"]

PROG_NAME = "python -m benchmarks.run"
CONNECT_TIMEOUT = 5.0
_PIPE_WIDTH = 200


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="NATS_URL",
    metavar="URL",
    default=None,
    help="NATS server to benchmark, credentials in the URL if any "
    "(nats://user:password@host:4222, nats://token@host:4222, tls://host:4222) "
    "[env NATS_URL; default: start an embedded nats-server].",
)
@click.option("--quick", is_flag=True, help="Small sizes: a smoke run, well under a minute.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT_DIR,
    help="Directory for results.json, results.md and the PNG charts "
    "[default: this checkout's benchmarks/results].",
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
    url: str | None,
    quick: bool,
    out_dir: Path,
    postgres_dsn: str | None,
    no_charts: bool,
    only: tuple[str, ...],
    fail_on_target: bool,
) -> None:
    """Benchmark aether against raw nats-py and the eventsourcing library, side by side.

    Appends (1 writer; concurrent writers on distinct actors; a hot actor),
    get_latest_version latency and replay throughput by history length, snapshot +
    tail against full replay, subscribe() catch-up and live latency, the event bus
    (in-process, and across two processes), and the eventsourcing library's app.save,
    repository.get and notification log on aether.ext.eventsourcing against its SQLite
    and PostgreSQL modules. Baselines run in the same rounds
    (interleaved), and every figure is reported as a ratio to them. The full run takes a
    few minutes; --quick well under one.
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
    with nats_server(url) as (server_url, server):
        options = replace(options, server=server, url=server_url)
        try:
            with _RichProgress() as progress:
                result = asyncio.run(run_suite(_connector(server_url), options, progress))
        except (BenchDependencyError, AetherError) as exc:
            raise click.ClickException(str(exc)) from None
        except nats.errors.Error as exc:
            raise click.ClickException(f"NATS error: {str(exc).removeprefix('nats: ')}") from None
    print_result(result)
    if fail_on_target and any(t.passed is False for t in result.targets):
        raise click.exceptions.Exit(1)


def main() -> None:
    """``python -m benchmarks.run``."""
    bench.main(prog_name=PROG_NAME)


@contextlib.contextmanager
def nats_server(url: str | None) -> Iterator[tuple[str, str]]:
    """The server to benchmark, as (URL, description for the report): *url*, or an
    embedded nats-server (file storage in a temp dir) started here and stopped on exit."""
    if url:
        yield url, "the --url server, shared with whatever else runs there"
        return
    try:
        server = NatsServer()
    except NatsServerNotFoundError as exc:
        raise click.ClickException(f"{exc} (or pass --url to use a running server)") from None
    try:
        server.start()
    except NatsServerStartupError as exc:
        server.close()
        first_line = str(exc).splitlines()[0]
        raise click.ClickException(f"could not start nats-server: {first_line}") from None
    except BaseException:
        server.close()
        raise
    try:
        yield server.url, "embedded, started by the suite, temp dir"
    finally:
        server.close()


async def connect(url: str) -> Client:
    """A client connected to *url*, or click.ClickException at the first failure.

    nats-py retries a first connect for minutes; a benchmark against a wrong URL should
    say so at once. Errors after the connection is up are left to the store's retries.
    """
    nc = Client()
    errors: list[BaseException] = []
    failed = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if not nc.is_connected:
            errors.append(exc)
            failed.set()

    connecting = asyncio.create_task(
        nc.connect(url, name="aether benchmarks", error_cb=on_error, reconnect_time_wait=1)
    )
    failing = asyncio.create_task(failed.wait())
    try:
        await asyncio.wait(
            {connecting, failing}, timeout=CONNECT_TIMEOUT, return_when="FIRST_COMPLETED"
        )
    finally:
        failing.cancel()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        return nc
    connecting.cancel()
    await asyncio.wait([connecting])
    if not connecting.cancelled() and (raised := connecting.exception()) is not None:
        errors.append(raised)  # e.g. a malformed URL, raised before any attempt
    with contextlib.suppress(Exception):
        await nc.close()
    if errors:
        reason = str(errors[-1]).strip().removeprefix("nats: ") or type(errors[-1]).__name__
    else:
        reason = f"no answer within {CONNECT_TIMEOUT:g}s"
    raise click.ClickException(f"cannot connect to NATS at {url}: {reason}")


def _connector(url: str) -> Connector:
    async def open_connection() -> Client:
        return await connect(url)

    return open_connection


def _stdout_console() -> Console:
    """A console on the current stdout (click's test runner swaps it, so not cached)."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    return console


def _table(*columns: str, right: tuple[str, ...] = ()) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return table


def print_result(result: SuiteResult) -> None:
    """The tables on stdout: every figure with aether's ratio to it, then the targets."""
    console = _stdout_console()
    table = _table(
        "workload",
        "at",
        "contender",
        "median",
        "aether vs this",
        right=("at", "median", "aether vs this"),
    )
    for workload in result.workloads:
        for point in sorted(workload.points, key=lambda p: p.x or 0):
            main = next((k for k in point.series if k.startswith("aether.")), "")
            ratios = {r.baseline: r for r in point.ratios if r.contender == main}
            for key, series in point.series.items():
                ratio = ratios.get(key)
                table.add_row(
                    workload.id,
                    "" if point.x is None else _x_text(point.x, workload.x_label),
                    series.label,
                    format_series(series),
                    f"{ratio.value:.2f}x" if ratio else "",
                )
            table.add_section()
    console.print(table)
    console.print(RATIO_NOTE, style="dim")
    console.print()
    targets = _table("target", "ratio", "goal", "result", right=("ratio", "goal"))
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


def _x_text(x: int, x_label: str | None) -> str:
    """A point's x with what it counts, in a word: "1,000 events", "1 subscriber"."""
    unit = (x_label or "").split(" ", 1)[0]
    if x == 1 and unit.endswith("s"):
        unit = unit[:-1]
    return f"{x:,} {unit}".rstrip()


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


if __name__ == "__main__":
    main()
