"""A reactor: a side effect per event, on a durable subscription, with retries and parking.

A welcome message goes out for every opened account. The durable subscription
``welcome-mails`` keeps its position on the server, so the reactor picks up where it
left off after a restart, and several processes running it share the work. A message
that fails for a passing reason (the mail server is busy) is retried later
(``nack(delay=...)``); one that can never succeed (no address) is given up on at once
(``term()``); either way, an event the reactor gives up on is **parked**: recorded and
listed by ``store.parked("welcome-mails")``, never skipped silently.

Side effects are at least once (a crash after sending but before ``ack`` sends again),
so the mailer is idempotent: it remembers the event ids it has sent.

Run it against your server (``--url``, default ``$NATS_URL``)::

    .venv/bin/python examples/reactor.py --stream bank --outbox sent.txt
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import timedelta
from pathlib import Path

import nats

from aether import Event
from aether.bus import SubscriptionFilter
from aether.store import JetStreamEventStore


class MailServerBusy(Exception):
    """A passing failure: worth trying again later."""


class NoAddress(Exception):
    """A failure no retry can fix."""


# --8<-- [start:reactor]
class Mailer:
    """Sends welcome mails (here: appends lines to a file), once per event id."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.sent = set(outbox.read_text().split()) if outbox.exists() else set()

    def send_welcome(self, event: Event) -> None:
        if event.id in self.sent:
            return  # sent before a crash, delivered again: nothing to do
        email = event.data.get("email")
        if not email:
            raise NoAddress(event.actor_id)
        if event.data.get("busy"):  # stands for a mail server that is busy right now
            raise MailServerBusy(email)
        with self.outbox.open("a") as out:
            out.write(f"{event.id}\n")
        self.sent.add(event.id)


async def react(store: JetStreamEventStore, mailer: Mailer) -> None:
    """Send a welcome mail for every ``Opened`` event, forever."""
    opened = SubscriptionFilter(event_types=["Opened"])
    subscription = store.durable_subscription(
        "welcome-mails", filter=opened, max_deliver=3, ack_wait=timedelta(seconds=30)
    )
    async with subscription as deliveries:
        async for delivery in deliveries:
            try:
                mailer.send_welcome(delivery.event)
            except MailServerBusy:
                await delivery.nack(delay=timedelta(seconds=1))  # parked after 3 attempts
            except NoAddress:
                await delivery.term()  # parked at once
            else:
                await delivery.ack()


# --8<-- [end:reactor]


async def main(url: str, stream: str, outbox: str) -> None:
    nc = await nats.connect(url)
    try:
        store = await JetStreamEventStore.attach(nc, stream)
        await react(store, Mailer(Path(outbox)))
    finally:
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--stream", default="events")
    parser.add_argument("--outbox", default="sent.txt")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.stream, args.outbox))
