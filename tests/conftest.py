"""Shared fixtures. The ``nats_server``/``nats_url`` fixtures come from aether's pytest plugin."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client

from aether.store import InMemoryEventStore, JetStreamConfig, JetStreamEventStore

StoreFactory = Callable[..., Awaitable[JetStreamEventStore]]


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@contextlib.asynccontextmanager
async def store_factory(
    servers: list[str], default_config: JetStreamConfig | None = None
) -> AsyncIterator[StoreFactory]:
    """Open JetStream stores on *servers*, each on its own connection (like processes).

    Every store shares one fresh stream unless told otherwise; streams are deleted after.
    """
    default_stream = "t" + uuid.uuid4().hex[:12]
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


@pytest.fixture
async def open_store(nats_url: str) -> AsyncIterator[StoreFactory]:
    """Stores on the session's single nats-server."""
    async with store_factory([nats_url]) as factory:
        yield factory


@pytest.fixture
async def js_store(open_store: StoreFactory) -> JetStreamEventStore:
    return await open_store()


@pytest.fixture(params=["memory", "jetstream"])
async def store(
    request: pytest.FixtureRequest, open_store: StoreFactory
) -> InMemoryEventStore | JetStreamEventStore:
    """Each backend in turn, for the contract suite."""
    if request.param == "memory":
        return InMemoryEventStore()
    return await open_store()
