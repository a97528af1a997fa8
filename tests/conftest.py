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


@pytest.fixture
async def open_store(nats_url: str) -> AsyncIterator[StoreFactory]:
    """Open JetStream stores, each on its own connection (like separate processes).

    Every store opened by one test shares one fresh stream unless told otherwise; the
    streams are deleted afterwards.
    """
    default_stream = "t" + uuid.uuid4().hex[:12]
    clients: list[Client] = []
    streams: set[str] = set()

    async def factory(
        stream_name: str = default_stream, config: JetStreamConfig | None = None
    ) -> JetStreamEventStore:
        client = await nats.connect(nats_url)
        clients.append(client)
        store = await JetStreamEventStore.open(client, stream_name, config)
        streams.add(store.stream_name)
        return store

    yield factory
    for client in clients:
        await client.close()
    async with await nats.connect(nats_url) as admin:
        js = admin.jetstream()
        for name in streams:
            for stream in (name, f"{name}_snapshots"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream)


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
