"""A member of the discovery tests (``tests/test_cluster_discovery.py``) in its own process.

Run as ``python -m tests._cluster_discovery_process URL GROUP NODE INTERVAL TIMEOUT``
(seconds). It enters a :class:`~aether.cluster.NodeDiscovery`, prints ``ready`` and the
members it sees at every change (``members a,b,c``), one line each, until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import nats

from aether.cluster import NodeDiscovery


async def main(url: str, group: str, node: str, interval: float, silence: float) -> None:
    nc = await nats.connect(url)
    discovery = NodeDiscovery(
        nc,
        node,
        group=group,
        heartbeat_interval=timedelta(seconds=interval),
        failure_timeout=timedelta(seconds=silence),
        on_change=lambda members: print("members", ",".join(sorted(members)), flush=True),
    )
    async with discovery:
        print("ready", flush=True)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    url, group, node, interval, silence = sys.argv[1:]
    asyncio.run(main(url, group, node, float(interval), float(silence)))
