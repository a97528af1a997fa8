"""A real multi-node JetStream cluster of ``nats-server`` processes on loopback."""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Sequence
from typing import Any

from ._aio import StartCloseContext
from ._binary import find_nats_server
from ._http import get_json, get_status
from ._ports import LOOPBACK, free_ports
from ._server import _ADDR_IN_USE, _AUTO_PORT_ATTEMPTS, NatsServer, NatsServerStartupError

__all__ = ["NatsCluster"]

_POLL_INTERVAL = 0.05
_STREAMS_PATH = "/jsz?accounts=true&streams=true"


class NatsCluster(StartCloseContext):
    """``size`` ``nats-server`` nodes forming one JetStream cluster on 127.0.0.1.

    Node ``i`` is a :class:`NatsServer` (``servers[i]``) with ``server_name`` ``n<i>``,
    its own client, cluster (route) and monitoring ports and its own store dir; the
    nodes share the cluster name and each has routes to all the others (generated
    config file per node). Ports and data survive :meth:`kill` / :meth:`start`.

    Use it as a context manager (``with`` or ``async with``): entering starts every
    node and waits until the cluster is ready (see :meth:`wait_ready`); leaving stops
    all nodes and removes their temp dirs, even when the body raised.

    Leadership queries (:meth:`leader_of`, :meth:`meta_leader`) only trust a *running*
    node that reports itself as leader: for a few seconds after a leader is killed,
    the surviving followers still report the dead node as leader.

    Everything is synchronous; inside an event loop use ``asyncio.to_thread`` for the
    blocking calls (``kill``, ``start``, ``wait_for_leader``) so clients keep running.

    Args:
        size: number of nodes (3 gives R3 streams a quorum that survives one failure).
            ``size=1`` runs a standalone server, since nats-server refuses a JetStream
            cluster without routes.
        name: cluster name shared by the nodes.
        startup_timeout: seconds to wait for node startup and for cluster readiness.
        extra_args: extra command-line arguments for every node.
        extra_config: config text appended to every node's generated config file.
        binary: ``nats-server`` path; :func:`find_nats_server` is used if ``None``.

    Raises:
        NatsServerNotFoundError: (from the constructor) if no binary can be found.
        ValueError: if ``size < 1``.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "aether",
        startup_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
        extra_config: str = "",
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"cluster size must be >= 1, got {size}")
        self.name = name
        self.startup_timeout = startup_timeout
        exe = os.fspath(binary) if binary is not None else find_nats_server()

        self._size = size
        self._exe = exe
        self._extra_args = extra_args
        self._extra_config = extra_config
        self._ever_started = False
        self.servers: list[NatsServer] = []
        self._make_nodes()

    def _make_nodes(self) -> None:
        """Create the nodes' configs on fresh free ports (not started yet)."""
        size = self._size
        ports = free_ports(3 * size)
        client_ports = ports[:size]
        route_ports = ports[size : 2 * size]
        monitor_ports = ports[2 * size :]
        #: Route (cluster) port of each node; unused when ``size == 1``.
        self.cluster_ports: list[int] = route_ports
        self.servers = []
        try:
            for i in range(size):
                routes = ", ".join(
                    f"nats-route://{LOOPBACK}:{p}" for j, p in enumerate(route_ports) if j != i
                )
                config = f"{self._extra_config}\n"
                if size > 1:
                    # nats-server refuses a JetStream cluster block without routes, so a
                    # 1-node "cluster" is a standalone server.
                    config = (
                        f"cluster {{\n"
                        f"  name: {_quote(self.name)}\n"
                        f"  listen: {_quote(f'{LOOPBACK}:{route_ports[i]}')}\n"
                        f"  routes: [{routes}]\n"
                        f"}}\n" + config
                    )
                self.servers.append(
                    NatsServer(
                        port=client_ports[i],
                        monitor_port=monitor_ports[i],
                        config=config,
                        server_name=f"n{i}",
                        extra_args=self._extra_args,
                        startup_timeout=self.startup_timeout,
                        binary=self._exe,
                    )
                )
        except BaseException:
            for server in self.servers:
                server.close()
            raise

    # ------------------------------------------------------------------ properties

    @property
    def size(self) -> int:
        """Number of nodes (running or not)."""
        return len(self.servers)

    @property
    def urls(self) -> list[str]:
        """Client URLs of all nodes; pass these to ``nats.connect(servers=...)``."""
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """Comma-joined client URLs (for the ``nats`` CLI / Go clients).

        nats-py does not split this string: use :attr:`urls` with ``nats.connect``.
        """
        return ",".join(self.urls)

    @property
    def names(self) -> list[str]:
        """``server_name`` of each node (``n0``, ``n1``, ...)."""
        return [s.server_name or f"n{i}" for i, s in enumerate(self.servers)]

    def running(self) -> list[int]:
        """Indexes of the nodes whose process is running."""
        return [i for i, s in enumerate(self.servers) if s.is_running]

    # ------------------------------------------------------------------ lifecycle

    def start(self, i: int | None = None, *, wait: bool = True) -> None:
        """Start node ``i`` (same ports and data as before), or every stopped node.

        Blocks until the started nodes are healthy and, if ``wait``, until the whole
        cluster is ready (:meth:`wait_ready`). Pass ``wait=False`` when a quorum of
        nodes is intentionally down.

        Raises:
            RuntimeError: if node ``i`` is already running.
            NatsServerStartupError: if a node exits or the cluster is not ready in time.
        """
        for attempt in range(_AUTO_PORT_ATTEMPTS):
            if i is not None:
                nodes = [self.servers[i]]
            else:
                nodes = [s for s in self.servers if not s.is_running]
            try:
                self._start_nodes(nodes)
                break
            except NatsServerStartupError as exc:
                # The ports were free when chosen but something took one before the node
                # bound it; before the first start the whole cluster may move elsewhere.
                if self._ever_started or _ADDR_IN_USE not in str(exc):
                    raise
                if attempt == _AUTO_PORT_ATTEMPTS - 1:
                    raise
                for server in self.servers:
                    server.close()
                self._make_nodes()
        self._ever_started = True
        if wait:
            self.wait_ready()

    def _start_nodes(self, nodes: list[NatsServer]) -> None:
        for node in nodes:
            node._spawn()
        deadline = time.monotonic() + self.startup_timeout
        try:
            for node in nodes:
                node._wait_ready(deadline)
        except BaseException:
            for node in nodes:
                node.kill()
            raise

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash); its store dir and ports are kept."""
        self.servers[i].kill()

    def stop(self, i: int | None = None) -> None:
        """Stop node ``i`` gracefully, or all nodes (SIGTERM in parallel, SIGKILL after
        each node's ``stop_timeout``). Data is kept."""
        if i is not None:
            self.servers[i].stop()
            return
        for server in self.servers:
            server._signal_stop()
        for server in self.servers:
            server._await_exit(server.stop_timeout)

    def restart(self, i: int) -> None:
        """Stop node ``i`` gracefully if running, start it again and wait for readiness."""
        self.servers[i].stop()
        self.start(i)

    def close(self) -> None:
        """Stop every node and remove all temp dirs. Idempotent."""
        try:
            self.stop()
        finally:
            for server in self.servers:
                server.close()

    # ------------------------------------------------------------------ readiness

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the running nodes form a ready JetStream cluster.

        Ready means: every running node's ``/healthz`` answers 200 (recent servers only
        do once JetStream is current); all running nodes name the same meta leader;
        that leader is running and reports itself as leader; and it sees every other
        running node as a current peer.

        Raises:
            NatsServerStartupError: if not ready within ``timeout`` (default
                ``startup_timeout``); the message says what was last missing.
        """
        limit = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            missing = self._not_ready_reason()
            if missing is None:
                return
            if time.monotonic() >= deadline:
                raise NatsServerStartupError(f"cluster not ready within {limit}s: {missing}")
            time.sleep(_POLL_INTERVAL)

    def _not_ready_reason(self) -> str | None:
        running = self.running()
        if not running:
            return "no node is running"
        for i in running:
            status = get_status(self.servers[i].monitor_url + "/healthz")
            if status != 200:
                return f"{self.names[i]} /healthz answered {status}"
        if self.size == 1:
            return None
        jsz: dict[int, dict[str, Any]] = {}
        for i in running:
            data = get_json(self.servers[i].monitor_url + "/jsz")
            if data is None:
                return f"{self.names[i]} /jsz did not answer"
            jsz[i] = data
        views = {i: _meta(jsz[i]).get("leader") for i in running}
        leaders = set(views.values())
        if len(leaders) != 1:
            return f"nodes disagree on the meta leader: {views}"
        leader = leaders.pop()
        if not isinstance(leader, str) or leader not in self.names:
            return f"no meta leader known (reported {leader!r})"
        index = self.names.index(leader)
        if index not in running:
            return f"meta leader {leader} is not running (stale view)"
        peers = {
            r.get("name"): r.get("current") is True
            for r in _meta(jsz[index]).get("replicas") or []
            if isinstance(r, dict)
        }
        lagging = [self.names[j] for j in running if j != index and not peers.get(self.names[j])]
        if lagging:
            return f"meta leader {leader} does not see {lagging} as current"
        return None

    # ------------------------------------------------------------------ leadership

    def meta_leader(self) -> int:
        """Index of the running node that reports itself as JetStream meta leader.

        Raises:
            LookupError: if no running node currently claims meta leadership.
        """
        for i in self.running():
            data = get_json(self.servers[i].monitor_url + "/jsz")
            if data is not None and _meta(data).get("leader") == self.names[i]:
                return i
        raise LookupError("no running node reports itself as meta leader")

    def leader_of(self, stream: str, account: str = "$G") -> int:
        """Index of the running node that reports itself as leader of ``stream``.

        Read from each node's ``/jsz?accounts=true&streams=true``:
        ``account_details[].stream_detail[].cluster.leader`` on the node itself.
        ``account`` matches an account's ``name`` or ``id`` (``$G`` without auth).

        Raises:
            LookupError: if no running node currently claims leadership (no such
                stream, or an election is in progress).
        """
        for i in self.running():
            data = get_json(self.servers[i].monitor_url + _STREAMS_PATH)
            if data is None:
                continue
            for detail in _stream_details(data, account):
                if detail.get("name") != stream:
                    continue
                cluster = detail.get("cluster")
                if isinstance(cluster, dict) and cluster.get("leader") == self.names[i]:
                    return i
        raise LookupError(
            f"no running node reports itself leader of stream {stream!r} in account {account!r}"
        )

    def wait_for_leader(
        self,
        stream: str,
        timeout: float = 30.0,
        *,
        account: str = "$G",
        exclude: Collection[int] = (),
    ) -> int:
        """Poll :meth:`leader_of` until a leader not in ``exclude`` is known; return it.

        Typical fault test: ``old = c.leader_of(s); c.kill(old);
        new = c.wait_for_leader(s, exclude={old})``.

        Raises:
            TimeoutError: if no such leader within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                index = self.leader_of(stream, account)
            except LookupError:
                pass
            else:
                if index not in exclude:
                    return index
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no leader for stream {stream!r} (excluding {sorted(exclude)}) "
                    f"within {timeout}s"
                )
            time.sleep(_POLL_INTERVAL)

    def __repr__(self) -> str:
        nodes = ", ".join(
            f"{n}={'up' if s.is_running else 'down'}"
            for n, s in zip(self.names, self.servers, strict=True)
        )
        return f"<NatsCluster {self.name!r} {nodes}>"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _meta(jsz: dict[str, Any]) -> dict[str, Any]:
    meta = jsz.get("meta_cluster")
    return meta if isinstance(meta, dict) else {}


def _stream_details(jsz: dict[str, Any], account: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for acc in jsz.get("account_details") or []:
        if not isinstance(acc, dict) or account not in (acc.get("name"), acc.get("id")):
            continue
        out.extend(d for d in acc.get("stream_detail") or [] if isinstance(d, dict))
    return out
