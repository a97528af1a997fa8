"""``aether demo``: several processes race on the same accounts, then an audit proves it worked.

The scenario is the one Go Aether gets wrong: every writer process trusts its own version
cache, and the caches go stale because other processes (and an outside writer in the
parent) append to the same accounts. aether's server-side check
(``Nats-Expected-Last-Subject-Sequence``) catches every stale append, the store repairs
its cache, and the writer retries. The audit then reads everything back through a fresh
store: each acknowledged event is stored exactly once and every account's versions are
exactly 1..N. Exit code: 0 if the audit passes, 1 if not, 2 if no server is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import secrets
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import click

from aether.errors import AetherError
from aether.store import JetStreamEventStore, StoreStats

from ._audit import AuditResult, check, read_back
from ._connect import (
    ConnectionSettings,
    ServerTarget,
    ServerUnreachableError,
    connect,
    connection_options,
    embedded_or_url,
)
from ._demo_writer import (
    DEMO_STORE_CONFIG,
    GO,
    STOP,
    Ack,
    Progress,
    Ready,
    Tally,
    WorkerReport,
    WorkerSpec,
    deposit,
    worker_main,
)
from ._stream import StreamRef, admin

_POLL_INTERVAL = 0.02
_TTY_REFRESH = 0.5
_LOG_REFRESH = 2.0
_READY_TIMEOUT = 60.0
_JOIN_TIMEOUT = 5.0
_SHOWN_ACCOUNTS = 8


@dataclass(frozen=True)
class DemoOptions:
    processes: int
    accounts: int
    events: int
    outside_writer: bool
    timeout: float
    keep_stream: bool


@click.command()
@connection_options(
    url_help="NATS server to use [env NATS_URL; default: start an embedded nats-server]."
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="Writer processes, each with its own connection and store.",
)
@click.option(
    "-a",
    "--accounts",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Accounts (actors) they all append to.",
)
@click.option(
    "-n",
    "--events",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="Appends per process.",
)
@click.option(
    "--outside-writer/--no-outside-writer",
    default=True,
    show_default=True,
    help="Also append from the parent process meanwhile.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="Seconds the processes get to finish.",
)
@click.option(
    "--keep-stream",
    is_flag=True,
    help="Keep the demo's stream on the --url server (deleted after the audit by default).",
)
@click.pass_context
def demo(
    ctx: click.Context,
    conn: ConnectionSettings,
    processes: int,
    accounts: int,
    events: int,
    outside_writer: bool,
    timeout: float,
    keep_stream: bool,
) -> None:
    """Race writer processes on shared accounts, then audit every event.

    Each process appends deposits with its own (soon stale) version cache; the server
    rejects every stale append and the store repairs its cache. Exits 0 if the audit
    passes, 1 if it fails, 2 if no NATS server is reachable.
    """
    options = DemoOptions(processes, accounts, events, outside_writer, timeout, keep_stream)
    with _exit_on_termination(), embedded_or_url(conn) as target:
        passed = asyncio.run(_cancelled_on_termination(run_demo(options, target)))
    ctx.exit(0 if passed else 1)


async def _cancelled_on_termination(main: Coroutine[Any, Any, bool]) -> bool:
    """Run *main*; SIGTERM/SIGHUP cancel it, then exit as :func:`_exit_on_termination` does.

    While the event loop runs, a signal must not raise from whatever bytecode happens to
    be running (a task's step, a future's callback, nats-py's reader): that can leave a
    task that is never woken, and the shutdown waiting for it forever. The loop's own
    signal handling runs between callbacks; cancelling the main task then lets every
    ``finally`` (workers stopped, the outside writer's outcome kept) run at an await.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        task.cancel()

    signals = _termination_signals()
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await main
    except asyncio.CancelledError:
        if received:
            raise SystemExit(128 + received[0]) from None
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                loop.remove_signal_handler(sig)
                # Back to _exit_on_termination's handler (remove_signal_handler resets to
                # the default, which would kill the process during the cleanup that follows).
                signal.signal(sig, _raise_system_exit)


def _termination_signals() -> list[signal.Signals]:
    return [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _exit_on_termination() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit, so that cleanup runs as for Ctrl-C.

    Without it the default action kills the process on the spot, leaving the embedded
    nats-server running (the workers notice on their own and stop).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    previous = {sig: signal.signal(sig, _raise_system_exit) for sig in _termination_signals()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def run_demo(options: DemoOptions, target: ServerTarget) -> bool:
    """Run the race and the audit, printing as it goes. True if the audit passed.

    Raises ServerUnreachableError if the server cannot be used at all (exit code 7).
    """
    stream = f"demo_{secrets.token_hex(4)}"
    accounts = tuple(f"acct-{i}" for i in range(1, options.accounts + 1))
    nc = await connect(target.settings, name="aether-demo-outside")
    try:
        try:
            store = await JetStreamEventStore.open(nc, stream, DEMO_STORE_CONFIG)
        except AetherError as exc:
            raise ServerUnreachableError(f"cannot use JetStream at {target.url}: {exc}") from None
        version = nc.connected_server_version
        _echo(
            f"aether demo: {options.processes} processes x {options.events} appends"
            f"{' + an outside writer' if options.outside_writer else ''} on "
            f"{options.accounts} accounts, stream {stream}"
        )
        _echo(
            f"nats-server {version.major}.{version.minor}.{version.patch} at {target.url}"
            f" ({'embedded' if target.embedded else '--url'})"
        )
        _echo("each process trusts its own version cache; the server catches every stale one")
        race = await _race(options, target.settings, store, accounts)
        audit = await _audit(target.settings, stream, accounts, race)
        if nc.is_connected and not target.embedded and not options.keep_stream:
            with contextlib.suppress(Exception):  # best effort: the verdict stands anyway
                await admin(nc).delete_stream(StreamRef(stream))  # and its snapshots
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    _print_summary(options, race, audit)
    return audit.passed and not race.failures


# -- the race ---------------------------------------------------------------------------------


@dataclass
class RaceResult:
    """Everything the writers reported, and what went wrong with the run itself."""

    elapsed: float = 0.0
    reports: list[WorkerReport] = field(default_factory=list)
    outside: Tally = field(default_factory=Tally)
    failures: list[str] = field(default_factory=list)

    @property
    def worker_events(self) -> int:
        return sum(len(report.acked) for report in self.reports)

    @property
    def worker_conflicts(self) -> int:
        return sum(report.conflicts for report in self.reports)

    def acked(self) -> Iterable[Ack]:
        for report in self.reports:
            yield from report.acked
        yield from self.outside.acked

    def unknown(self) -> Iterable[Ack]:
        for report in self.reports:
            yield from report.unknown
        yield from self.outside.unknown


async def _race(
    options: DemoOptions,
    conn: ConnectionSettings,
    outside_store: JetStreamEventStore,
    accounts: tuple[str, ...],
) -> RaceResult:
    specs = [
        WorkerSpec(i, conn, outside_store.stream_name, accounts, options.events, options.timeout)
        for i in range(options.processes)
    ]
    result = RaceResult()
    pool = _WorkerPool(specs)
    try:
        await pool.wait_ready(_READY_TIMEOUT)
        if pool.failures:
            result.failures = pool.failures
            return result
        stop_outside = asyncio.Event()
        outside = asyncio.create_task(
            _outside_writer(outside_store, accounts, result.outside, stop_outside)
            if options.outside_writer
            else stop_outside.wait()
        )
        pool.send_all(GO)
        started = time.monotonic()
        progress = _ProgressLine(options.processes * options.events)
        grace = options.timeout
        try:
            while not pool.all_reported():
                await asyncio.sleep(_POLL_INTERVAL)
                pool.poll()
                elapsed = time.monotonic() - started
                progress.update(
                    elapsed,
                    pool.stored(),
                    len(result.outside.acked),
                    pool.conflicts() + result.outside.conflicts,
                )
                if elapsed > options.timeout + _JOIN_TIMEOUT:
                    pool.give_up(f"no report within {options.timeout:g}s")
        except BaseException:
            outside.cancel()  # interrupted (Ctrl-C, SIGTERM): no audit follows
            grace = _JOIN_TIMEOUT
            raise
        finally:
            result.elapsed = time.monotonic() - started
            progress.clear()
            stop_outside.set()  # ends it after the current append: its outcome stays known
            error = await _finish(outside, grace)
            if error is not None:
                result.failures.append(f"outside writer: {error}")
        result.reports = pool.reports()
        result.failures += pool.failures
    finally:
        pool.shutdown()
    return result


async def _finish(task: asyncio.Task[object], within: float) -> str | None:
    """Wait for *task* (cancelling it after *within* seconds); describe its error, if any."""
    done, _ = await asyncio.wait([task], timeout=within)
    if not done:
        task.cancel()
        await asyncio.wait([task], timeout=_JOIN_TIMEOUT)
        return f"did not stop within {within:g}s"
    if task.cancelled():
        return None
    error = task.exception()
    return None if error is None else f"{type(error).__name__}: {error}"


async def _outside_writer(
    store: JetStreamEventStore, accounts: Sequence[str], tally: Tally, stop: asyncio.Event
) -> None:
    """Append from outside the worker processes until told to stop, so their caches go stale.

    Stops between appends, never in the middle of one, so every save has a known outcome.
    """
    rng = random.Random()
    while not stop.is_set():
        await deposit(store, rng.choice(accounts), "outside", rng.randint(1, 100), tally)


class _WorkerPool:
    """The worker processes (spawn context) and the parent's ends of their pipes."""

    def __init__(self, specs: Sequence[WorkerSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess] = []
        self._conns: dict[int, Connection] = {}
        self._ready: set[int] = set()
        self._progress: dict[int, Progress] = {}
        self._reports: dict[int, WorkerReport] = {}
        self.failures: list[str] = []
        try:
            for spec in specs:
                parent_end, child_end = context.Pipe()
                self._conns[spec.index] = parent_end
                proc = context.Process(
                    target=worker_main,
                    args=(spec, child_end),
                    name=f"aether-demo-{spec.index}",
                    daemon=True,  # multiprocessing terminates it if we exit without shutdown()
                )
                proc.start()
                child_end.close()  # so that a dead worker shows up as EOF on parent_end
                self._procs.append(proc)
        except BaseException:
            self.shutdown()
            raise

    async def wait_ready(self, within: float) -> None:
        deadline = time.monotonic() + within
        while len(self._ready) < len(self._procs) and not self.failures:
            if time.monotonic() > deadline:
                self.give_up(f"not ready within {within:g}s")
                return
            await asyncio.sleep(_POLL_INTERVAL)
            self.poll()

    def poll(self) -> None:
        """Read every message that has arrived; a closed pipe without a report is a failure."""
        for index, conn in list(self._conns.items()):
            try:
                while conn.poll():
                    self._handle(index, conn.recv())
            except (EOFError, OSError):
                self._lost(index, "exited without a report")

    def _handle(self, index: int, message: object) -> None:
        if isinstance(message, Ready):
            self._ready.add(index)
        elif isinstance(message, Progress):
            self._progress[index] = message
        elif isinstance(message, WorkerReport):
            self._reports[index] = message
            if message.error is not None:
                self.failures.append(f"process {index}: {message.error}")
            self._conns.pop(index).close()

    def _lost(self, index: int, why: str) -> None:
        conn = self._conns.pop(index, None)
        if conn is not None:
            conn.close()
            self.failures.append(f"process {index} {why}")

    def give_up(self, why: str) -> None:
        for index in list(self._conns):
            self._lost(index, why)

    def send_all(self, message: str) -> None:
        for index, conn in list(self._conns.items()):
            try:
                conn.send(message)
            except OSError:
                self._lost(index, "exited before the start")

    def all_reported(self) -> bool:
        return not self._conns

    def stored(self) -> int:
        return sum(p.stored for p in self._progress.values())

    def conflicts(self) -> int:
        return sum(p.conflicts for p in self._progress.values())

    def reports(self) -> list[WorkerReport]:
        return [self._reports[index] for index in sorted(self._reports)]

    def shutdown(self) -> None:
        """Stop and reap every worker: STOP, then terminate, then kill."""
        for conn in self._conns.values():
            with contextlib.suppress(OSError):
                conn.send(STOP)
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


class _ProgressLine:
    """One line redrawn in place on a terminal; an occasional plain line otherwise."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._tty = sys.stdout.isatty()
        self._interval = _TTY_REFRESH if self._tty else _LOG_REFRESH
        self._next = self._interval
        self._drawn = False

    def update(self, elapsed: float, stored: int, outside: int, conflicts: int) -> None:
        if elapsed < self._next:
            return
        self._next = elapsed + self._interval
        line = (
            f"  {elapsed:5.1f}s  {stored:,}/{self._target:,} process appends"
            f"  {outside:,} outside  {conflicts:,} conflicts retried"
        )
        if self._tty:
            sys.stdout.write(f"\r{line}\x1b[K")
            sys.stdout.flush()
            self._drawn = True
        else:
            _echo(line)

    def clear(self) -> None:
        if self._drawn:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()


# -- audit and summary ------------------------------------------------------------------------


async def _audit(
    conn: ConnectionSettings, stream: str, accounts: Sequence[str], race: RaceResult
) -> AuditResult:
    """Read every account back through a fresh connection and store, and check it."""
    try:
        nc = await connect(conn, name="aether-demo-audit")
    except ServerUnreachableError as exc:
        return AuditResult(problems=[f"could not read the events back: {exc.message}"])
    try:
        store = await JetStreamEventStore.open(nc, stream, DEMO_STORE_CONFIG)
        histories = await read_back(store, accounts)
    except AetherError as exc:
        return AuditResult(problems=[f"could not read the events back: {exc}"])
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return check(histories, race.acked(), race.unknown())


def _print_summary(options: DemoOptions, race: RaceResult, audit: AuditResult) -> None:
    stats = _sum_stats(report.stats for report in race.reports)
    outside = len(race.outside.acked)
    total = race.worker_events + outside
    rate = total / race.elapsed if race.elapsed > 0 else 0.0
    by_outside = f", {outside:,} by the outside writer" if options.outside_writer else ""
    _echo(
        f"wrote {total:,} events in {race.elapsed:.2f}s ({rate:,.0f} events/s): "
        f"{race.worker_events:,} by {len(race.reports)} processes{by_outside}"
    )
    _echo(
        f"conflicts detected and retried: {race.worker_conflicts + race.outside.conflicts:,}"
        f" (processes {race.worker_conflicts:,}, outside writer {race.outside.conflicts:,})"
    )
    _echo(
        f"process stores: {stats.stale_cache_repairs:,} stale-cache repairs,"
        f" {stats.cache_hits:,} cache hits, {stats.cache_misses:,} misses,"
        f" {stats.retries:,} request retries"
    )
    unknown = sum(1 for _ in race.unknown())
    if audit.read:
        _echo(f"final versions: {_versions(audit.final_versions)}")
        landed = f" ({audit.unknown_stored} of them stored)" if unknown else ""
        _echo(f"unknown outcomes (StoreUnavailableError): {unknown}{landed}")
        _echo(
            f"read back through a fresh store: {audit.stored:,} events,"
            f" {audit.acknowledged:,} acknowledged"
        )
    else:
        _echo(f"unknown outcomes (StoreUnavailableError): {unknown}")
    problems = race.failures + audit.problems
    if not problems:
        _echo(
            "  each acknowledged event stored exactly once, versions 1..N on every account,"
            " nothing unacknowledged"
        )
        _echo("audit: PASS")
        return
    _echo(f"audit: FAIL: {problems[0]}")
    for problem in problems[1:]:
        _echo(f"  also: {problem}")


def _sum_stats(all_stats: Iterable[StoreStats]) -> StoreStats:
    total = StoreStats()
    for stats in all_stats:
        for f in fields(StoreStats):
            setattr(total, f.name, getattr(total, f.name) + getattr(stats, f.name))
    return total


def _versions(final: dict[str, int]) -> str:
    shown = " ".join(
        f"{account}={version}" for account, version in list(final.items())[:_SHOWN_ACCOUNTS]
    )
    hidden = len(final) - _SHOWN_ACCOUNTS
    return shown + (f" ... (+{hidden} more accounts)" if hidden > 0 else "")


def _echo(line: str) -> None:
    click.echo(line)
