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

__all__ = ["Account", "EsPeer"]

_CHUNK = 10_000  # events per app.save while building a history


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
        self.app: Application[UUID] = Application(env={**env, "IS_SNAPSHOTTING_ENABLED": "y"})
        self._writer: Account | None = None

    def close(self) -> None:
        self.app.close()

    def create(self, length: int) -> UUID:
        """An aggregate with *length* events (version 1 is the Created event)."""
        account = Account()
        for version in range(2, length + 1):
            account.deposit(version, "EUR", "benchmark deposit")
            if version % _CHUNK == 0:
                self.app.save(account)
        self.app.save(account)
        return account.id

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
