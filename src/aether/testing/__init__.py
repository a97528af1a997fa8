"""Real ``nats-server`` processes for tests, demos and your own test suites.

* :class:`NatsServer` -- one JetStream server on a free loopback port, in a temp dir.
* :class:`NatsCluster` -- a multi-node JetStream cluster on loopback, for fault tests.
* :func:`find_nats_server` -- where the binary comes from (``$NATS_SERVER_BIN``, the
  ``aether-eventsourcing[server]`` extra, or ``$PATH``); :class:`NatsServerNotFoundError`
  if nowhere.

The pytest fixtures ``nats_server``, ``nats_url``, ``nats_cluster`` and
``fresh_nats_server`` are provided by :mod:`aether.testing.pytest_plugin`, which pytest
loads automatically through the ``pytest11`` entry point once aether is installed.

:mod:`aether.testing.contract` is the store contract as a pytest suite
(``EventStoreContract``, ``SnapshotStoreContract``): subclass it with a ``store`` fixture
to prove your own store keeps the same rules as aether's. It needs pytest and
pytest-asyncio, so this package does not import it: ``import aether.testing.contract``.
"""

from ._binary import NatsServerNotFoundError, find_nats_server
from ._cluster import NatsCluster
from ._ports import free_port, free_ports
from ._server import NatsServer, NatsServerStartupError

__all__ = [
    "NatsCluster",
    "NatsServer",
    "NatsServerNotFoundError",
    "NatsServerStartupError",
    "find_nats_server",
    "free_port",
    "free_ports",
]
