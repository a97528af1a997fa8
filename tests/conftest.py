"""Shared fixtures. The ``nats_server``/``nats_url`` fixtures come from aether's pytest plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from aether.store import InMemoryEventStore, JetStreamEventStore

from ._stores import StoreFactory, store_factory


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


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
