"""One process of the cross-process bus workload (``bus_nats``, :mod:`benchmarks.bus`).

Run as ``python -m benchmarks._bus_node publisher|subscriber PREFIX RAW_SUBJECT BUFFER``
from the repository root, with the server's URL (credentials included, if any) in the
environment variable ``AETHER_BENCH_NATS_URL`` rather than on the command line. It reads
one JSON command a line on stdin and answers in JSON lines on stdout:

* both print ``{"ready": true}`` once connected (the subscriber: once its subscriptions
  are live on the server), and leave on ``{"cmd": "exit"}``;
* publisher, ``{"cmd": "publish", "mode": "aether"|"raw"|"decode", "count": N}``:
  builds N events (the raw ones encoded too) before the clock starts, publishes them with
  ``NatsEventBus.publish`` to namespace :data:`NAMESPACE`, or with nats-py's core
  ``publish`` to RAW_SUBJECT with the bus's headers, flushes, and answers ``{"first": t0,
  "flushed": t1}``;
* subscriber, ``{"cmd": "arm", "mode": ..., "count": N, "timeout": s}``: answers
  ``{"armed": true}`` at once, then, after N messages of that mode (or the timeout),
  ``{"received": n, "dropped": d, "disordered": o, "first": t0, "last": t1}``. Its bus
  subscription (buffer BUFFER) is iterated by a task that counts the events; the raw
  subscription's callback only counts messages (the client's ceiling), or in mode
  ``decode`` decodes each one first (``Event.from_json``).

Times are ``time.monotonic()``: CLOCK_MONOTONIC on Linux, one clock for every process of
the machine, so the parent may subtract one process's time from another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from aether import Event
from aether.bus import (
    KIND_HEADER,
    NODE_HEADER,
    BusSubscription,
    NatsEventBus,
    SubscriptionOverflowError,
)
from benchmarks.baselines import make_event

__all__ = ["NAMESPACE", "URL_ENV", "main"]

URL_ENV = "AETHER_BENCH_NATS_URL"
NAMESPACE = "bench.ticks"
_PUBLISHER_ACTOR = "bus-p0001"


def _say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


class _Round:
    """What the subscriber counts for one armed round."""

    def __init__(self, mode: str, count: int) -> None:
        self.mode = mode
        self.count = count
        self.received = 0
        self.dropped = 0
        self.disordered = 0
        self.first = 0.0
        self.last = 0.0
        self.version = 0
        self.done = asyncio.Event()

    def take(self, now: float) -> None:
        if not self.received:
            self.first = now
        self.received += 1
        self.last = now
        if self.received + self.dropped >= self.count:
            self.done.set()

    def answer(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "dropped": self.dropped,
            "disordered": self.disordered,
            "first": self.first,
            "last": self.last,
        }


class _Subscriber:
    def __init__(self) -> None:
        self.round: _Round | None = None
        self.strays = 0  # messages of no armed round (none expected)

    async def consume(self, sub: BusSubscription[Event]) -> None:
        clock = time.monotonic
        while True:
            try:
                async for event in sub:
                    current = self.round
                    if current is None or current.mode != "aether":
                        self.strays += 1
                        continue
                    if event.version != current.version + 1 and current.version:
                        current.disordered += 1
                    current.version = event.version
                    current.take(clock())
                return  # closed
            except SubscriptionOverflowError as gap:
                current = self.round
                if current is not None:
                    current.dropped += gap.dropped
                    if current.received + current.dropped >= current.count:
                        current.done.set()

    async def on_raw(self, msg: Msg) -> None:
        current = self.round
        if current is None or current.mode == "aether":
            self.strays += 1
            return
        if current.mode == "decode":
            event = Event.from_json(msg.data)
            if event.version != current.version + 1 and current.version:
                current.disordered += 1
            current.version = event.version
        current.take(time.monotonic())


async def _lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _commands(reader: asyncio.StreamReader) -> Any:
    line = await reader.readline()
    if not line:
        return {"cmd": "exit"}
    return json.loads(line)


async def run_subscriber(nc: Client, prefix: str, raw_subject: str, buffer: int) -> None:
    node = _Subscriber()
    async with NatsEventBus(nc, node_id="bench-subscriber", prefix=prefix) as bus:
        sub = bus.subscribe(NAMESPACE, buffer=buffer)
        await sub.ready()
        consumer = asyncio.create_task(node.consume(sub))
        raw = await nc.subscribe(raw_subject, cb=node.on_raw)
        await nc.flush()
        reader = await _lines()
        _say({"ready": True})
        while (command := await _commands(reader))["cmd"] != "exit":
            if command["cmd"] != "arm":
                raise ValueError(f"unknown command {command!r}")
            current = node.round = _Round(command["mode"], int(command["count"]))
            _say({"armed": True})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(current.done.wait(), float(command["timeout"]))
            node.round = None
            _say({**current.answer(), "strays": node.strays})
        await raw.unsubscribe()
        await sub.close()
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)


async def run_publisher(nc: Client, prefix: str, raw_subject: str) -> None:
    version = 0
    async with NatsEventBus(nc, node_id="bench-publisher", prefix=prefix) as bus:
        headers = {NODE_HEADER: bus.node_id, KIND_HEADER: "event"}
        reader = await _lines()
        _say({"ready": True})
        while (command := await _commands(reader))["cmd"] != "exit":
            if command["cmd"] != "publish":
                raise ValueError(f"unknown command {command!r}")
            count = int(command["count"])
            first = version + 1
            events = [make_event(_PUBLISHER_ACTOR, v) for v in range(first, first + count)]
            version += count
            if command["mode"] == "aether":
                t0 = time.monotonic()
                for event in events:
                    await bus.publish(NAMESPACE, event)
            else:
                payloads = [event.to_json() for event in events]
                t0 = time.monotonic()
                for payload in payloads:
                    await nc.publish(raw_subject, payload, headers=headers)
            await nc.flush()
            _say({"first": t0, "flushed": time.monotonic()})


async def main(role: str, prefix: str, raw_subject: str, buffer: int) -> None:
    nc = await nats.connect(os.environ[URL_ENV], name=f"aether benchmarks bus {role}")
    try:
        if role == "subscriber":
            await run_subscriber(nc, prefix, raw_subject, buffer)
        elif role == "publisher":
            await run_publisher(nc, prefix, raw_subject)
        else:
            raise ValueError(f"unknown role {role!r}")
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
