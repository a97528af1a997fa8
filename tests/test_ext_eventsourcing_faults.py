"""aether.ext.eventsourcing beyond the library's own test cases: concurrency and faults.

The application is the library's own example (``eventsourcing.tests.application``'s
``BankAccounts`` with ``BankAccount`` aggregates), on ``PERSISTENCE_MODULE=
aether.ext.eventsourcing``. Every change is a ``TransactionAppended`` with an amount no
other change has, so an audit can tell, for each change a writer was told was saved,
whether it is stored, where, and how many times.

- 3 OS processes change the same accounts at once: conflicts surface as ``IntegrityError``
  from ``app.save`` (the writer reloads and retries); nothing acknowledged is lost.
- The leader of an R3 stream is SIGKILLed during saves: saves go on at the new leader.
- An application restarted (and its server crash-restarted) continues its notification
  log, and its aggregates and snapshots load as they were.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any
from uuid import UUID

import pytest

pytest.importorskip("eventsourcing")  # the "eventsourcing" extra (part of "dev")

from eventsourcing.persistence import IntegrityError, Notification, PersistenceError
from eventsourcing.tests import application as es_application
from eventsourcing.tests import domain as es_domain

from aether.testing import NatsCluster, NatsServer

BankAccounts = es_application.BankAccounts
BankAccount = es_domain.BankAccount

MODULE = "aether.ext.eventsourcing"
PROCESSES = 3


def app_env(url: str, stream: str, **extra: str) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": MODULE, "NATS_URL": url, "NATS_STREAM": stream, **extra}


def unique_stream(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Change:
    """One change acknowledged by ``app.save``."""

    account: str
    amount: str  # unique across the test
    version: int  # the account's version it was saved as
    notification_id: int


@dataclass
class WriterReport:
    writer: int
    acked: list[Change] = field(default_factory=list)
    conflicts: int = 0  # IntegrityError from app.save (reloaded and retried)
    unknown: list[str] = field(default_factory=list)  # amounts whose save raised otherwise
    errors: list[str] = field(default_factory=list)  # of those, the errors (repr)
    failure: str | None = None  # anything that is not one of the library's errors


def amount_of(writer: int, n: int) -> Decimal:
    """An amount no other change of the test has."""
    return Decimal(1 + writer * 1_000_000 + n)


def save_change(
    app: Any, account_id: UUID, amount: Decimal, report: WriterReport, account: Any = None
) -> None:
    """Append one transaction to the account, reloading and retrying on IntegrityError.

    *account*: an already loaded (and changed) aggregate for the first attempt.
    """
    while True:
        if account is None:
            account = app.get_account(account_id)
            account.append_transaction(amount)
        try:
            recordings = app.save(account)
        except IntegrityError:
            report.conflicts += 1  # nothing was written: reload and decide again
            account = None
            continue
        [recording] = recordings
        report.acked.append(
            Change(
                str(account_id),
                str(amount),
                recording.domain_event.originator_version,
                recording.notification.id,
            )
        )
        return


# -- the audit ---------------------------------------------------------------------------


@dataclass
class Audit:
    events: int
    notifications: int
    max_id: int


def all_notifications(app: Any) -> list[Notification]:
    found: list[Notification] = []
    while True:
        page = app.recorder.select_notifications(len(found) + 1, 500)
        if not page:
            return found
        found += page


def audit(app: Any, accounts: list[UUID], reports: list[WriterReport], *, opened: int) -> Audit:
    """Everything acknowledged is stored exactly once where it was acknowledged; only a
    change whose save raised may be stored unacknowledged (at most once); every account's
    versions are 1..N; the notification log is every event once, ids 1..max."""
    acked = {c.amount: c for r in reports for c in r.acked}
    assert len(acked) == sum(len(r.acked) for r in reports)  # amounts are unique
    unknown = {amount for r in reports for amount in r.unknown}
    stored: dict[str, tuple[str, int]] = {}
    events = 0
    for account_id in accounts:
        history = list(app.events.get(account_id))
        events += len(history)
        assert [e.originator_version for e in history] == list(range(1, len(history) + 1))
        assert isinstance(history[0], BankAccount.Opened)
        for e in history[1:]:
            amount = str(e.amount)
            assert amount not in stored, f"change {amount} stored twice"
            stored[amount] = (str(account_id), e.originator_version)
        balance = app.get_balance(account_id)
        assert balance == sum((e.amount for e in history[1:]), Decimal(0))
    for amount, change in acked.items():
        assert stored.get(amount) == (change.account, change.version), f"lost: {change}"
    assert set(stored) - set(acked) <= unknown

    log = all_notifications(app)
    ids = [n.id for n in log]
    assert ids == list(range(1, len(log) + 1))
    assert app.recorder.max_notification_id() == len(log)
    keys = [(str(n.originator_id), n.originator_version) for n in log]
    assert len(set(keys)) == len(keys) == events == opened + len(stored)
    by_id = {n.id: (str(n.originator_id), n.originator_version) for n in log}
    for change in acked.values():
        assert by_id[change.notification_id] == (change.account, change.version)
    return Audit(events, len(log), len(log))


# -- 3 OS processes on the same aggregates -----------------------------------------------


def writer_process(
    url: str,
    stream: str,
    writer: int,
    accounts: list[str],
    changes: int,
    start: Barrier,
    reports: Queue[WriterReport],
) -> None:
    """One OS process: its own application (its own factory, NATS connection, loop thread)."""
    report = WriterReport(writer)
    try:
        app = BankAccounts(env=app_env(url, stream))
        try:
            ids = [UUID(a) for a in accounts]
            # Round 0, a conflict for sure: every process loads the first account at the
            # same version, decides, and only then do they all save.
            account = app.get_account(ids[0])
            amount = amount_of(writer, 0)
            account.append_transaction(amount)
            start.wait(120)
            save_change(app, ids[0], amount, report, account)
            for n in range(1, changes):
                account_id = ids[(n * (writer + 1)) % len(ids)]
                save_change(app, account_id, amount_of(writer, n), report)
        finally:
            app.close()
    except BaseException as exc:
        start.abort()  # do not leave the others waiting
        report.failure = repr(exc)
    reports.put(report)


@pytest.mark.slow
def test_three_processes_save_the_same_aggregates(nats_url: str) -> None:
    stream = unique_stream("es-procs")
    app = BankAccounts(env=app_env(nats_url, stream))
    try:
        accounts = [app.open_account(f"holder {i}", f"h{i}@example.com") for i in range(3)]
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as on other hosts
        start = ctx.Barrier(PROCESSES)
        queue: Queue[WriterReport] = ctx.Queue()
        changes = 30
        workers = [
            ctx.Process(
                target=writer_process,
                args=(nats_url, stream, w, [str(a) for a in accounts], changes, start, queue),
            )
            for w in range(PROCESSES)
        ]
        for worker in workers:
            worker.start()
        reports = [queue.get(timeout=240) for _ in workers]
        for worker in workers:
            worker.join(60)
        assert [r.failure for r in reports] == [None] * PROCESSES
        assert [r.unknown for r in reports] == [[]] * PROCESSES  # no fault: every save known
        assert all(len(r.acked) == changes for r in reports)
        conflicts = sum(r.conflicts for r in reports)
        # Round 0 alone makes PROCESSES - 1 of them meet a conflict.
        assert conflicts >= PROCESSES - 1
        result = audit(app, accounts, reports, opened=len(accounts))
        assert result.events == len(accounts) + PROCESSES * changes
        print(
            f"\n[3 processes] changes={PROCESSES * changes} conflicts={conflicts} "
            f"notifications={result.notifications}"
        )
    finally:
        app.close()


# -- a leader kill on an R3 stream during saves ------------------------------------------


@pytest.fixture
def cluster(nats_cluster: NatsCluster) -> Iterator[NatsCluster]:
    """The session cluster, with every node running again after the test."""
    yield nats_cluster
    for i in range(nats_cluster.size):
        if i not in nats_cluster.running():
            nats_cluster.start(i)


def until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Wait for *condition* (checked every 20 ms); fail after *timeout* s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Saver(threading.Thread):
    """Changes random accounts with its own application until stopped, recording what
    each save did: acknowledged, IntegrityError (retried), or another library error."""

    def __init__(self, env: dict[str, str], writer: int, accounts: list[UUID]) -> None:
        super().__init__(name=f"saver-{writer}", daemon=True)
        self.app = BankAccounts(env=env)
        self.report = WriterReport(writer)
        self.accounts = accounts
        self.stop = threading.Event()

    def progress(self) -> int:
        return len(self.report.acked)

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                amount = amount_of(self.report.writer, n)
                account_id = self.accounts[(n + self.report.writer) % len(self.accounts)]
                n += 1
                try:
                    save_change(self.app, account_id, amount, self.report)
                except PersistenceError as exc:
                    # The library's errors other than IntegrityError (OperationalError once
                    # the module's retry deadline passes): the change may or may not be
                    # stored. Go on with the next one.
                    self.report.unknown.append(str(amount))
                    self.report.errors.append(repr(exc))
        except BaseException as exc:
            self.report.failure = repr(exc)


@pytest.mark.cluster
@pytest.mark.fault
def test_leader_kill_on_an_r3_stream_during_saves(cluster: NatsCluster) -> None:
    """3 threads, each with its own application (connection), change 4 accounts while
    the events stream's leader is SIGKILLed. With a quorum up, saves wait out the
    election inside the module (its retry deadline, 30 s, is longer): no save raises
    anything but ``IntegrityError`` for a real conflict between the savers (reloaded and
    retried). An ``OperationalError`` would be recorded as an unknown outcome and
    audited as such; none happens. Nothing acknowledged is lost, nothing is stored
    twice, the notification log stays contiguous."""
    stream = unique_stream("es-r3")
    env = app_env(",".join(cluster.urls), stream, NATS_REPLICAS="3")
    app = BankAccounts(env=env)
    savers: list[Saver] = []
    try:
        accounts = [app.open_account(f"holder {i}", f"h{i}@example.com") for i in range(4)]
        savers = [Saver(env, w, accounts) for w in range(3)]
        for saver in savers:
            saver.start()

        def progress(n: int) -> Callable[[], bool]:
            marks = [s.progress() + n for s in savers]

            def done() -> bool:
                assert all(s.report.failure is None for s in savers), [
                    s.report.failure for s in savers
                ]
                return all(s.progress() >= m for s, m in zip(savers, marks, strict=True))

            return done

        until(progress(5), "saves before the kill")
        leader = cluster.leader_of(stream)
        cluster.kill(leader)
        assert leader not in cluster.running()  # the fault happened
        cluster.wait_for_leader(stream, 60, exclude={leader})
        until(progress(5), "saves at the new leader, a node down")
        cluster.start(leader)
        until(progress(5), "saves with the node back")
        for saver in savers:
            saver.stop.set()
        for saver in savers:
            saver.join(120)
            assert not saver.is_alive()
        reports = [s.report for s in savers]
        assert [r.failure for r in reports] == [None] * len(reports)
        result = audit(app, accounts, reports, opened=len(accounts))
        unknown = sum(len(r.unknown) for r in reports)
        assert [r.errors for r in reports] == [[]] * len(reports)  # only IntegrityError
        print(
            f"\n[R3 leader kill] acked={sum(len(r.acked) for r in reports)} "
            f"conflicts={sum(r.conflicts for r in reports)} other_errors={unknown} "
            f"notifications={result.notifications} errors={[e for r in reports for e in r.errors]}"
        )
    finally:
        for saver in savers:
            saver.stop.set()
        for saver in savers:
            saver.join(120)
            saver.app.close()
        app.close()


# -- restarted against its existing stream ----------------------------------------------


@pytest.mark.fault
def test_restarted_application_continues_its_notification_log(
    fresh_nats_server: NatsServer,
) -> None:
    stream = unique_stream("es-restart")
    env = app_env(fresh_nats_server.url, stream)
    first = BankAccounts(env=env)
    try:
        accounts = [first.open_account(f"holder {i}", f"h{i}@example.com") for i in range(3)]
        for n in range(12):
            first.credit_account(accounts[n % 3], Decimal(n + 1))
        first.take_snapshot(accounts[0], version=3)
        first.take_snapshot(accounts[0])
        last = first.recorder.max_notification_id()
        assert last == 15
        before = {a: first.get_account(a) for a in accounts}
        histories = {a: list(first.events.get(a)) for a in accounts}
        log = all_notifications(first)
    finally:
        first.close()

    fresh_nats_server.kill()  # a crash of the server too: the streams are on disk
    assert not fresh_nats_server.is_running
    fresh_nats_server.start()

    second = BankAccounts(env=env)
    try:
        assert second.recorder.max_notification_id() == last
        assert all_notifications(second) == log
        for account_id, account in before.items():
            again = second.get_account(account_id)
            assert (again.version, again.balance) == (account.version, account.balance)
            assert list(second.events.get(account_id)) == histories[account_id]
        assert second.snapshots is not None
        assert [s.originator_version for s in second.snapshots.get(accounts[0])] == [3, 5]
        from_snapshot: Any = second.repository.get(accounts[0], version=4)
        assert from_snapshot.balance == Decimal(1 + 4 + 7)  # snapshot at 3, then 1 event

        second.credit_account(accounts[1], Decimal(100))
        account = second.get_account(accounts[2])
        account.append_transaction(Decimal(200))
        [recording] = second.save(account)
        assert recording.notification.id == last + 2  # the ids go on from the last
        ids = [n.id for n in all_notifications(second)]
        assert ids == list(range(1, last + 3))
        assert second.get_balance(accounts[1]) == before[accounts[1]].balance + 100
    finally:
        second.close()
