"""One ClusterManager node in its own OS process, for tests/test_cluster_manager.py.

    python -m tests._cluster_node --url URL[,URL...] --group G --node n1 --log n1.jsonl [...]

Appends one JSON line per event to ``--log``, each written with a single ``write`` on a
file opened with ``O_APPEND`` (so a SIGKILL leaves whole lines only):

- ``{"ev": "ready"}`` once entered;
- ``{"ev": "acquire", "t", "shards", "version"}`` from ``on_shards_changed``, which the
  manager awaits *before* it starts holding the shards: ``t`` (``time.monotonic()``, the
  same clock in every process of a machine) is at or before the hold begins;
- ``{"ev": "release", "t", "at", "shards", "version", "expired"}`` after it stopped
  holding them: ``t`` is at or after the hold ended. For a release by lease expiry the
  node stopped holding at ``at`` (``owns()`` is false from then on, whatever the event
  loop was doing), and ``t`` may be much later (a paused process);
- ``{"ev": "state", "version", "owned", "leader", "term"}`` whenever one of them changes;
- ``{"ev": "handled", "t", "actor", "shard"}`` for each request its handler runs (while
  running it, so inside the hold).

``--release-delay S`` makes each revocation's ``lost`` callback take S seconds (the
manager awaits it before confirming the release), to hold a rebalance half-done.

SIGTERM leaves the cluster cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from typing import Any

import nats

from aether.cluster._manager import ClusterManager, ShardsChanged


class Log:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, **fields: Any) -> None:
        os.write(self._fd, (json.dumps(fields) + "\n").encode())


async def run(args: argparse.Namespace) -> None:
    log = Log(args.log)
    nc = await nats.connect(servers=args.url.split(","), max_reconnect_attempts=-1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    manager: ClusterManager | None = None

    async def on_change(change: ShardsChanged) -> None:
        if change.gained:
            log.write(
                ev="acquire",
                t=time.monotonic(),
                shards=sorted(change.gained),
                version=change.version,
            )
        if change.lost:
            log.write(
                ev="release",
                t=time.monotonic(),
                at=change.at,
                shards=sorted(change.lost),
                version=change.version,
                expired=change.expired,
            )
            if args.release_delay and not change.expired:
                # A slow release (flushing state, say): the leader's rebalance waits for it.
                await asyncio.sleep(args.release_delay)

    async def handler(actor_id: str, payload: bytes) -> bytes:
        assert manager is not None
        log.write(
            ev="handled", t=time.monotonic(), actor=actor_id, shard=manager.shard_of(actor_id)
        )
        return json.dumps(
            {"node": args.node, "actor": actor_id, "payload": payload.decode()}
        ).encode()

    manager = ClusterManager(
        nc,
        args.node,
        num_shards=args.shards,
        group=args.group,
        lease=args.lease,
        heartbeat_interval=args.heartbeat,
        failure_timeout=args.failure_timeout,
        replicas=args.replicas,
        handler=handler,
        on_shards_changed=on_change,
    )
    async with manager:
        log.write(ev="ready", node=args.node)
        last: tuple[Any, ...] = ()
        while not stop.is_set():
            state = (
                manager.assignment_version,
                sorted(manager.owned_shards),
                manager.is_leader,
                manager.term,
            )
            if state != last:
                last = state
                version, owned, leader, term = state
                log.write(ev="state", version=version, owned=owned, leader=leader, term=term)
            # Reporting cadence only: the tests wait on what these lines say.
            with_timeout = asyncio.timeout(0.02)
            try:
                async with with_timeout:
                    await stop.wait()
            except TimeoutError:
                pass
    log.write(ev="exited")
    await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--heartbeat", type=float, default=0.25)
    parser.add_argument("--failure-timeout", type=float, default=1.0)
    parser.add_argument("--release-delay", type=float, default=0.0)
    parser.add_argument("--replicas", type=int, default=1)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
