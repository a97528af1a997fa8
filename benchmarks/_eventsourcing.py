"""The ``eventsourcing`` library (9.x) as a peer: SQLite and PostgreSQL recorders.

Imported only through :func:`benchmarks.baselines.load_eventsourcing`, which turns a
missing library into a clear error. The aggregate is module-level so that the library
can resolve its event classes by topic when it decodes them.
"""

from __future__ import annotations

import time
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

__all__ = ["Account", "EsPeer", "ModuleApp", "PersistenceBenchApp"]

_CHUNK = 10_000  # events per app.save while building a history


def create_account(app: Application[UUID], length: int, chunk: int) -> UUID:
    """Save an Account with *length* events in *app*, *chunk* events per ``app.save``."""
    account = Account()
    for version in range(2, length + 1):
        account.deposit(version, "EUR", "benchmark deposit")
        if version % chunk == 0:
            app.save(account)
    app.save(account)
    return account.id


class Account(Aggregate):
    """The same kind of small deposit event as aether's benchmark events."""

    def __init__(self) -> None:
        self.balance = 0

    @event("Deposited")
    def deposit(self, amount: int, currency: str, note: str) -> None:
        self.balance += amount


class EsPeer:
    """One ``Application`` (snapshotting enabled) on one persistence module."""

    def __init__(self, key: str, label: str, env: dict[str, str]) -> None:
        self.key = key
        self.label = label
        #: the persistence settings (without the snapshotting flag)
        self.env = dict(env)
        self.app: Application[UUID] = Application(env={**env, "IS_SNAPSHOTTING_ENABLED": "y"})
        self._writer: Account | None = None

    def close(self) -> None:
        self.app.close()

    def create(self, length: int) -> UUID:
        """An aggregate with *length* events (version 1 is the Created event)."""
        return create_account(self.app, length, _CHUNK)

    def append(self, count: int) -> float:
        """*count* single-event ``app.save`` calls on one aggregate, one after another."""
        if self._writer is None:
            self._writer = Account()
            self.app.save(self._writer)
        writer = self._writer
        t0 = time.perf_counter()
        for i in range(count):
            writer.deposit(i, "EUR", "benchmark deposit")
            self.app.save(writer)
        return count / (time.perf_counter() - t0)

    def latest_version(self, aggregate_id: UUID) -> int:
        """The aggregate's version: the newest stored event (``desc``, ``limit=1``)."""
        stored = self.app.recorder.select_events(aggregate_id, desc=True, limit=1)
        return stored[0].originator_version if stored else 0

    def select_decode(self, aggregate_id: UUID, length: int) -> float:
        """``recorder.select_events`` + ``mapper.to_domain_event`` of each: events/s."""
        t0 = time.perf_counter()
        stored = self.app.recorder.select_events(aggregate_id)
        decoded = [self.app.mapper.to_domain_event(item) for item in stored]
        elapsed = time.perf_counter() - t0
        if len(decoded) != length:
            raise RuntimeError(f"{self.key}: decoded {len(decoded)} events, expected {length}")
        return length / elapsed

    def load(self, aggregate_id: UUID) -> int:
        """``repository.get`` (every event applied: no snapshot is taken of these
        aggregates); returns the aggregate's version."""
        account: Account = self.app.repository.get(aggregate_id)
        return account.version

    def take_snapshot(self, aggregate_id: UUID, version: int) -> None:
        self.app.take_snapshot(aggregate_id, version=version)

    def snapshot_tail(self, aggregate_id: UUID, length: int) -> float:
        """``repository.get``: newest snapshot + the events after it, applied. Seconds."""
        t0 = time.perf_counter()
        account: Account = self.app.repository.get(aggregate_id)
        elapsed = time.perf_counter() - t0
        if account.version != length:
            raise RuntimeError(f"{self.key}: aggregate at version {account.version}")
        return elapsed


# -- the same application on each persistence module (benchmarks.es_module) ---------------

_MODULE_CHUNK = 500  # events per app.save while building: under JetStream's batch limit


class PersistenceBenchApp(Application[UUID]):
    """The application of the persistence-module workloads: the library's defaults (no
    snapshots, no aggregate cache), so ``repository.get`` reads every event."""


class ModuleApp:
    """One :class:`PersistenceBenchApp` on one persistence module, timed operation by
    operation (``time.perf_counter``, seconds)."""

    def __init__(self, key: str, label: str, env: dict[str, str]) -> None:
        self.key = key
        self.label = label
        self.app = PersistenceBenchApp(env=env)

    def close(self) -> None:
        self.app.close()

    def create(self, length: int) -> UUID:
        """An aggregate with *length* events (version 1 is the Created event)."""
        return create_account(self.app, length, _MODULE_CHUNK)

    def save(self, saves: int, events_per_save: int) -> list[float]:
        """*saves* ``app.save`` calls, one after another, each of *events_per_save* new
        events of one aggregate (created, untimed, first): each call's seconds."""
        account = Account()
        self.app.save(account)
        times: list[float] = []
        clock = time.perf_counter
        for i in range(saves):
            for j in range(events_per_save):
                account.deposit(i * events_per_save + j, "EUR", "benchmark deposit")
            t0 = clock()
            self.app.save(account)
            times.append(clock() - t0)
        return times

    def get(self, aggregate_id: UUID, length: int, calls: int) -> list[float]:
        """*calls* ``repository.get`` of an aggregate of *length* events: each call's
        seconds."""
        times: list[float] = []
        clock = time.perf_counter
        for _ in range(calls):
            t0 = clock()
            account: Account = self.app.repository.get(aggregate_id)
            times.append(clock() - t0)
            if account.version != length:
                raise RuntimeError(f"{self.key}: aggregate at version {account.version}")
        return times

    def log_position(self) -> int:
        """The application's newest notification id (0: none)."""
        return self.app.recorder.max_notification_id() or 0

    def read_log(self, start: int, count: int, page: int) -> float:
        """Read *count* notifications from id *start* on with
        ``notification_log.select(start, limit=page)``, page after page: seconds. (The
        log's section size, 10 by default, is raised to *page* if smaller: ``select``
        refuses a larger limit.)"""
        log = self.app.notification_log
        log.section_size = max(log.section_size, page)
        read = 0
        t0 = time.perf_counter()
        while read < count:
            notifications = log.select(start, limit=min(page, count - read))
            if not notifications:
                break
            read += len(notifications)
            start = notifications[-1].id + 1
        elapsed = time.perf_counter() - t0
        if read != count:
            raise RuntimeError(f"{self.key}: read {read} notifications, expected {count}")
        return elapsed
