"""Opening JetStream stores in tests: each on its own connection, on a fresh stream."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
from nats.aio.client import Client

from aether import Event
from aether.store import EventStore, JetStreamConfig, JetStreamEventStore

StoreFactory = Callable[..., Awaitable[JetStreamEventStore]]


def unique(prefix: str) -> str:
    """A stream name no other test uses (the session server is shared)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def store_factory(
    servers: list[str], default_config: JetStreamConfig | None = None
) -> AsyncIterator[StoreFactory]:
    """Open JetStream stores on *servers*, each on its own connection (like processes).

    Every store shares one fresh stream unless told otherwise; streams are deleted after.
    """
    default_stream = unique("t")
    clients: list[Client] = []
    streams: set[str] = set()

    async def factory(
        stream_name: str = default_stream, config: JetStreamConfig | None = None
    ) -> JetStreamEventStore:
        client = await nats.connect(servers=servers)
        clients.append(client)
        store = await JetStreamEventStore.open(client, stream_name, config or default_config)
        streams.add(store.stream_name)
        return store

    try:
        yield factory
    finally:
        for client in clients:
            await client.close()
        async with await nats.connect(servers=servers) as admin:
            js = admin.jetstream()
            for name in streams:
                for stream in (name, f"{name}_snapshots"):
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await js.delete_stream(stream)


def ev(actor: str, version: int, event_id: str | None = None) -> Event:
    """A small event of *actor* at *version* (with *event_id* if given)."""
    event = Event("Deposited", actor, version, {"v": version})
    if event_id is not None:
        event.id = event_id
    return event


async def versions(store: EventStore, actor: str) -> list[int]:
    """The versions of *actor*'s stored history, in order."""
    return [event.version for event in await store.get_events(actor)]
