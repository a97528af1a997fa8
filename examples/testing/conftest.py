"""Fixtures for testing your own code on real nats-servers.

aether's pytest plugin (loaded automatically once aether is installed) provides
``nats_server``, ``nats_url``, ``nats_cluster`` and ``fresh_nats_server``. Async tests and
fixtures need pytest-asyncio; the explicit ``pytest_asyncio.fixture`` and
``pytest.mark.asyncio`` work whatever its ``asyncio_mode``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import nats
import pytest
import pytest_asyncio

from aether.store import JetStreamConfig, JetStreamEventStore


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs a 3-node JetStream cluster")


@pytest_asyncio.fixture
async def store(nats_url: str) -> AsyncIterator[JetStreamEventStore]:
    """A store on the session's nats-server, in a namespace no other test uses.

    The session server is shared by all tests, so each test gets its own namespace (and
    so its own streams); in-memory storage keeps the test server fast.
    """
    nc = await nats.connect(nats_url)
    config = JetStreamConfig(namespace=f"test-{uuid.uuid4().hex[:12]}", storage="memory")
    yield await JetStreamEventStore.open(nc, "bank", config)
    await nc.close()
