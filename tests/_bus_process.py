"""A node of the cross-process bus test (``tests/test_bus_nats.py``): its own connection
and its own :class:`~aether.bus.NatsEventBus`, subscribing and publishing.

Run as ``python -m tests._bus_process URL PREFIX NODE COUNT``. It talks on its standard
streams, one line each:

1. subscribes to ``prod.*`` and ``prod.>``, waits until both are live, prints ``ready``;
2. reads ``go`` on stdin, publishes COUNT events (actor NODE, versions 1..COUNT,
   alternately to ``prod.orders`` and ``prod.eu.orders``; ``data.ns`` names it), flushes,
   prints ``published``;
3. reads both subscriptions until each has received an ``End`` event, then prints
   ``{"star": [...], "deep": [...]}``: what each received, ``[actor, version, ns]``.
"""

from __future__ import annotations

import asyncio
import json
import sys

import nats

from aether import Event
from aether.bus import BusSubscription, NatsEventBus


def namespace_of(version: int) -> str:
    return "prod.orders" if version % 2 else "prod.eu.orders"


async def collect(sub: BusSubscription[Event]) -> list[list[object]]:
    """Everything *sub* receives up to the first End event (a gap is recorded too)."""
    received: list[list[object]] = []
    while True:
        try:
            event = await anext(sub)
        except Exception as exc:  # a SubscriptionOverflowError would be a failure: report it
            received.append(["error", repr(exc), ""])
            continue
        if event.event_type == "End":
            return received
        received.append([event.actor_id, event.version, event.data["ns"]])


async def main(url: str, prefix: str, node: str, count: int) -> None:
    nc = await nats.connect(url)
    loop = asyncio.get_running_loop()
    async with NatsEventBus(nc, node_id=node, prefix=prefix) as bus:
        star = bus.subscribe("prod.*", buffer=10 * count + 10)
        deep = bus.subscribe("prod.>", buffer=10 * count + 10)
        await star.ready()
        await deep.ready()
        collecting = asyncio.gather(collect(star), collect(deep))
        print("ready", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        assert line.strip() == "go", line
        for version in range(1, count + 1):
            ns = namespace_of(version)
            await bus.publish(ns, Event("Tick", node, version, {"ns": ns}))
        await nc.flush()  # the server has them all: their echoes precede any later End
        print("published", flush=True)
        star_got, deep_got = await collecting
        print(json.dumps({"star": star_got, "deep": deep_got}), flush=True)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
