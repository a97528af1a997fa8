"""A read model in SQLite that applies each event exactly once, across crashes.

``subscribe`` is at-least-once: after a crash, a subscriber resumes from the position it
last recorded, and an event handled just before the crash but not yet recorded comes
again. The read model below makes that harmless by recording its position **in the same
SQLite transaction** as the rows the event changes: either both are written or neither,
so on restart it resumes exactly after the last event it applied, and no event has two
effects. (A read model in PostgreSQL works the same way, with its own transaction.)

Run it against your server (``--url``, default ``$NATS_URL``)::

    .venv/bin/python examples/read_model.py --stream bank --db balances.sqlite3

It follows the stream's ``Deposited`` and ``Withdrawn`` events and keeps a ``balances``
table: kill it at any moment and start it again; the table stays exact.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
from pathlib import Path

import nats

from aether import Event
from aether.bus import SubscriptionFilter
from aether.store import JetStreamEventStore


# --8<-- [start:projection]
class Balances:
    """Account balances, and the position of the last event applied, in one database."""

    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(path)
        with self.db:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance INT)"
            )
            self.db.execute("CREATE TABLE IF NOT EXISTS position (id INT PRIMARY KEY, pos INT)")
            self.db.execute("INSERT OR IGNORE INTO position VALUES (0, 0)")

    def position(self) -> int:
        """The position of the last event applied (0: none yet)."""
        return int(self.db.execute("SELECT pos FROM position").fetchone()[0])

    def apply(self, event: Event) -> None:
        """Apply *event* and record its position, atomically (one transaction)."""
        amount = int(event.data["amount"])
        change = amount if event.event_type == "Deposited" else -amount
        with self.db:  # commits both statements, or neither
            self.db.execute(
                "INSERT INTO balances VALUES (?, ?) "
                "ON CONFLICT (account) DO UPDATE SET balance = balance + excluded.balance",
                (event.actor_id, change),
            )
            self.db.execute("UPDATE position SET pos = ?", (event.position,))

    def balances(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT account, balance FROM balances").fetchall())


MONEY = SubscriptionFilter(event_types=["Deposited", "Withdrawn"])


async def follow(store: JetStreamEventStore, model: Balances) -> None:
    """Apply every money event after the model's position, then each new one, forever."""
    async with store.subscribe(after=model.position(), filter=MONEY) as events:
        async for event in events:
            model.apply(event)


# --8<-- [end:projection]


async def main(url: str, stream: str, db: str) -> None:
    nc = await nats.connect(url)
    try:
        store = await JetStreamEventStore.attach(nc, stream)
        await follow(store, Balances(db))
    finally:
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--stream", default="events")
    parser.add_argument("--db", default="balances.sqlite3")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.stream, args.db))
