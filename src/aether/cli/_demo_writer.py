"""The writers of ``aether demo``: the append-with-retry loop and the worker process.

Every writer does what an application built on aether would do: take the actor's version
from the store's cache (or ask the server), append ``version + 1``, and on a
:class:`~aether.VersionConflictError` re-read the latest version and try again. Each
worker process has its own connection and store, so their caches go stale whenever
another writer appends to the same account; the server's
``Nats-Expected-Last-Subject-Sequence`` check must catch every such case.

Worker processes talk to the parent over one duplex pipe: ``Ready``, then ``Progress``
every few hundred milliseconds, then a final ``WorkerReport``. The parent answers
``GO`` (start racing) or ``STOP``. A closed pipe means the parent is gone: the worker
stops at once, so it can never outlive the parent by more than a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from dataclasses import dataclass, field, replace
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Final, NamedTuple

from nats.aio.client import Client

from aether.errors import StoreUnavailableError, VersionConflictError
from aether.event import Event
from aether.store import JetStreamConfig, JetStreamEventStore, StoreStats

from ._connect import ConnectionSettings, ServerUnreachableError, connect

GO: Final = "go"
STOP: Final = "stop"
_PROGRESS_INTERVAL = 0.25
#: Every demo store gives up on an unanswered request after 10s (default 30s), so a
#: vanished server ends the demo quickly instead of stalling it.
DEMO_STORE_CONFIG: Final = JetStreamConfig(retry_deadline=timedelta(seconds=10))
_WORKER_CONNECT_TIMEOUT = 10.0


class Ack(NamedTuple):
    """One save attempt's event: its id, account and version."""

    event_id: str
    account: str
    version: int


@dataclass
class Tally:
    """What one writer did.

    ``acked``: saves the store acknowledged. ``unknown``: saves whose outcome is unknown
    (StoreUnavailableError, or cut off mid-flight), which may or may not be stored.
    ``in_flight``: the save under way, so a cancelled writer can count it as unknown.
    """

    acked: list[Ack] = field(default_factory=list)
    unknown: list[Ack] = field(default_factory=list)
    conflicts: int = 0
    in_flight: Ack | None = None

    def settle(self) -> None:
        """Count a save that was cut off as unknown."""
        if self.in_flight is not None:
            self.unknown.append(self.in_flight)
            self.in_flight = None


async def deposit(
    store: JetStreamEventStore, account: str, writer: str, amount: int, tally: Tally
) -> None:
    """Append one ``Deposited`` event to *account*, retrying on version conflicts.

    The retried event keeps its id (it is the same deposit), so the audit can check that
    each deposit is stored exactly once. StoreUnavailableError propagates (the server is
    gone for ``retry_deadline``: the writer should stop); a save it interrupted is
    recorded in ``tally.unknown`` first.
    """
    cached = store.cached_version(account)
    latest = cached if cached is not None else await store.get_latest_version(account)
    event = Event(
        event_type="Deposited",
        actor_id=account,
        version=latest + 1,
        data={"amount": amount, "by": writer},
    )
    while True:
        tally.in_flight = Ack(event.id, account, event.version)
        try:
            await store.save_event(event)
        except VersionConflictError:
            tally.in_flight = None  # rejected: nothing was written
            tally.conflicts += 1
            event = replace(event, version=await store.get_latest_version(account) + 1)
            continue
        except StoreUnavailableError:
            tally.settle()
            raise
        tally.acked.append(tally.in_flight)
        tally.in_flight = None
        return


# -- the worker process ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process does; ``time_limit`` counts from the GO signal."""

    index: int
    conn: ConnectionSettings
    stream: str
    accounts: tuple[str, ...]
    appends: int
    time_limit: float
    start_timeout: float = 60.0


@dataclass(frozen=True)
class Ready:
    """The worker is connected and its store is open."""


@dataclass(frozen=True)
class Progress:
    stored: int
    conflicts: int


@dataclass(frozen=True)
class WorkerReport:
    """A worker's final word: everything it wrote, its store's counters, and any error."""

    index: int
    acked: list[Ack]
    unknown: list[Ack]
    conflicts: int
    stats: StoreStats
    error: str | None = None


class _Stopped(Exception):
    """The parent asked us to stop, or went away."""


class _TimeLimit(Exception):
    """The worker's time limit passed before it finished its appends."""


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Process entry point: run one worker and send its WorkerReport. Never raises."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        report = asyncio.run(_run_worker(spec, conn))
    except BaseException as exc:  # report anything: never leave the parent waiting
        report = WorkerReport(spec.index, [], [], 0, StoreStats(), f"crashed: {exc!r}")
    with contextlib.suppress(OSError, ValueError):
        conn.send(report)
    conn.close()


async def _run_worker(spec: WorkerSpec, conn: Connection) -> WorkerReport:
    tally = Tally()
    store: JetStreamEventStore | None = None
    error: str | None = None
    nc: Client | None = None
    try:
        nc = await connect(
            spec.conn, name=f"aether-demo-{spec.index}", connect_timeout=_WORKER_CONNECT_TIMEOUT
        )
        store = await JetStreamEventStore.open(nc, spec.stream, DEMO_STORE_CONFIG)
        conn.send(Ready())
        await _await_go(conn, spec.start_timeout)
        await _run_appends(store, spec, conn, tally)
    except ServerUnreachableError as exc:
        error = exc.message
    except _Stopped as exc:
        error = str(exc)
    except _TimeLimit:
        error = f"did not finish within {spec.time_limit:g}s"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        tally.settle()
        if nc is not None:
            with contextlib.suppress(Exception):  # e.g. the server is gone
                await nc.close()
    stats = store.stats if store is not None else StoreStats()
    return WorkerReport(spec.index, tally.acked, tally.unknown, tally.conflicts, stats, error)


async def _await_go(conn: Connection, within: float) -> None:
    if not await asyncio.to_thread(conn.poll, within):
        raise _Stopped(f"no start signal within {within:g}s")
    try:
        message = conn.recv()
    except EOFError:
        raise _Stopped("the parent process went away") from None
    if message != GO:
        raise _Stopped("stopped by the parent before the start")


async def _run_appends(
    store: JetStreamEventStore, spec: WorkerSpec, conn: Connection, tally: Tally
) -> None:
    """Append until done, the parent says stop or goes away, or the time limit passes."""
    stop = asyncio.Event()
    appender = asyncio.create_task(_append_all(store, spec, tally, stop))
    watcher = asyncio.create_task(_watch_parent(conn, tally))
    try:
        done, _ = await asyncio.wait(
            [appender, watcher], timeout=spec.time_limit, return_when="FIRST_COMPLETED"
        )
        if not done:
            raise _TimeLimit
        for task in done:
            task.result()
    finally:
        # Cancelling alone is not enough: on Python 3.11 asyncio.wait_for (used by nats-py's
        # request) swallows a cancellation that arrives as its answer does.
        stop.set()
        appender.cancel()
        watcher.cancel()
        await asyncio.gather(appender, watcher, return_exceptions=True)


async def _append_all(
    store: JetStreamEventStore, spec: WorkerSpec, tally: Tally, stop: asyncio.Event
) -> None:
    rng = random.Random()
    writer = f"process-{spec.index}"
    for _ in range(spec.appends):
        if stop.is_set():
            return
        await deposit(store, rng.choice(spec.accounts), writer, rng.randint(1, 100), tally)


async def _watch_parent(conn: Connection, tally: Tally) -> None:
    """Send progress; raise _Stopped when the parent says STOP or its end of the pipe closes."""
    while True:
        try:
            conn.send(Progress(len(tally.acked), tally.conflicts))
            if conn.poll():
                conn.recv()  # STOP is the only message after GO
                raise _Stopped("stopped by the parent")
        except (EOFError, OSError):
            raise _Stopped("the parent process went away") from None
        await asyncio.sleep(_PROGRESS_INTERVAL)
