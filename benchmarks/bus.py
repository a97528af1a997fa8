"""The event bus: the in-process :class:`~aether.bus.EventBus`, and
:class:`~aether.bus.NatsEventBus` between two OS processes.

Buffers are sized so that the figures measure delivery, not loss: every subscription
holds a whole round (it can never overflow), and the drops the subscriptions report
anyway, and messages NATS did not deliver, are counted and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether import Event
from aether.bus import BusSubscription, EventBus, SubscriptionOverflowError
from benchmarks._bus_node import URL_ENV
from benchmarks.baselines import make_event
from benchmarks.model import WorkloadResult, median, run_rounds
from benchmarks.workloads import _doc, _series

if TYPE_CHECKING:
    from benchmarks.workloads import Bench

__all__ = ["BURST", "NodeProcess", "bus_local", "bus_nats"]

#: The local publisher yields to the event loop after this many publishes (as an
#: application does between the events it handles), so subscribers run meanwhile.
BURST = 100
_NAMESPACE = "bench.ticks"
_ROOT = Path(__file__).resolve().parent.parent
#: how long a node process may take to start, or to answer a command
_NODE_TIMEOUT = 60.0


# -- local ---------------------------------------------------------------------------------


async def bus_local(bench: Bench) -> WorkloadResult:
    """``EventBus.publish`` to delivery in one process, in events/s: ``bus_events``
    events to 1 subscriber, and ``bus_fanout_events`` events to each of
    ``bus_subscribers`` subscribers (an event counts once it reached every subscriber).

    aether: one ``EventBus``, each subscriber a task iterating its subscription (buffer:
    the whole round, so nothing can be dropped); the publisher yields to the event loop
    every 100 events. Baseline: the same fan-out hand-written with one ``asyncio.Queue``
    per subscriber (``put_nowait`` each event to every queue, each subscriber task
    awaiting ``get``), with the same yields: plain asyncio's cost for the same delivery.
    """
    wid, s = "bus_local", bench.sizes
    result = bench._workload(wid, _doc(bus_local, s))
    result.x_label = "subscribers"
    bench.progress.start(wid, result.title, 2 * (s.bus_rounds + 1))
    drops: list[int] = []
    for subscribers, count in ((1, s.bus_events), (s.bus_subscribers, s.bus_fanout_events)):
        events = [make_event("bus-l0001", v) for v in range(1, count + 1)]

        async def through_bus(
            events: list[Event] = events, subscribers: int = subscribers
        ) -> float:
            rate, dropped = await local_bus_round(events, subscribers)
            drops.append(dropped)
            return rate

        async def through_queues(
            events: list[Event] = events, subscribers: int = subscribers
        ) -> float:
            return await queue_round(events, subscribers)

        contenders: dict[str, Callable[[], Awaitable[float]]] = {
            "aether.event_bus": through_bus,
            "asyncio.queues": through_queues,
        }
        rounds = await run_rounds(contenders, s.bus_rounds, bench._tick(wid))
        point = result.point(subscribers)
        bus = point.add(
            _series(
                "aether.event_bus",
                "aether EventBus",
                "events/s",
                rounds["aether.event_bus"],
            )
        )
        bus.extra["deliveries_per_s"] = bus.value * subscribers
        bus.extra["dropped"] = float(sum(drops))
        queues = point.add(
            _series(
                "asyncio.queues",
                "asyncio.Queue per subscriber, put_nowait",
                "events/s",
                rounds["asyncio.queues"],
            )
        )
        queues.extra["deliveries_per_s"] = queues.value * subscribers
        point.ratio("aether.event_bus", "asyncio.queues", "vs asyncio.Queue fan-out")
        drops.clear()
    dropped = sum(int(p.series["aether.event_bus"].extra["dropped"]) for p in result.points)
    if dropped:
        result.notes.append(f"The subscriptions dropped {dropped:,} events in all.")
    bench.progress.finish(wid)
    return result


async def local_bus_round(events: list[Event], subscribers: int) -> tuple[float, int]:
    """Publish *events* on a fresh EventBus to *subscribers* subscriptions: events/s
    until every subscriber has the last one, and how many the subscriptions dropped."""
    count = len(events)
    bus = EventBus()
    subs = [bus.subscribe(_NAMESPACE, buffer=count) for _ in range(subscribers)]
    all_done = asyncio.Event()
    remaining = subscribers

    async def consume(sub: BusSubscription[Event]) -> None:
        nonlocal remaining
        taken = 0
        while taken < count:
            try:
                async for _ in sub:
                    taken += 1
                    if taken == count:
                        break
                else:
                    break  # closed early: counted as missing below
            except SubscriptionOverflowError as gap:
                taken += gap.dropped
        remaining -= 1
        if not remaining:
            all_done.set()

    tasks = [asyncio.create_task(consume(sub)) for sub in subs]
    try:
        await asyncio.sleep(0)  # every subscriber waiting
        t0 = time.perf_counter()
        for i, event in enumerate(events, 1):
            await bus.publish(_NAMESPACE, event)
            if not i % BURST:
                await asyncio.sleep(0)
        await all_done.wait()
        elapsed = time.perf_counter() - t0
    finally:
        await bus.close()
        await asyncio.gather(*tasks, return_exceptions=True)
    return count / elapsed, sum(sub.dropped for sub in subs)


async def queue_round(events: list[Event], subscribers: int) -> float:
    """The baseline of :func:`local_bus_round`: one asyncio.Queue per subscriber."""
    count = len(events)
    queues: list[asyncio.Queue[Event]] = [asyncio.Queue() for _ in range(subscribers)]
    all_done = asyncio.Event()
    remaining = subscribers

    async def consume(queue: asyncio.Queue[Event]) -> None:
        nonlocal remaining
        for _ in range(count):
            await queue.get()
        remaining -= 1
        if not remaining:
            all_done.set()

    tasks = [asyncio.create_task(consume(queue)) for queue in queues]
    try:
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        for i, event in enumerate(events, 1):
            for queue in queues:
                queue.put_nowait(event)
            if not i % BURST:
                await asyncio.sleep(0)
        await all_done.wait()
        elapsed = time.perf_counter() - t0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return count / elapsed


# -- across processes ----------------------------------------------------------------------


class NodeProcess:
    """A ``benchmarks._bus_node`` process: JSON commands in, JSON answers out."""

    def __init__(self, role: str, process: asyncio.subprocess.Process) -> None:
        self.role = role
        self.process = process

    @classmethod
    async def start(
        cls, role: str, url: str, prefix: str, raw_subject: str, buffer: int
    ) -> NodeProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks._bus_node",
            role,
            prefix,
            raw_subject,
            str(buffer),
            cwd=_ROOT,
            env={**os.environ, URL_ENV: url},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        node = cls(role, process)
        try:
            await node.expect("ready")
        except BaseException:
            await node.stop()
            raise
        return node

    async def send(self, command: dict[str, Any]) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write((json.dumps(command) + "\n").encode())
        await stdin.drain()

    async def answer(self, within: float = _NODE_TIMEOUT) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            line = await asyncio.wait_for(stdout.readline(), within)
        except TimeoutError:
            raise RuntimeError(f"the bus {self.role} process did not answer") from None
        if not line:
            raise RuntimeError(
                f"the bus {self.role} process exited ({await self.process.wait()}): "
                f"{await self._stderr_tail()}"
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def expect(self, key: str) -> dict[str, Any]:
        answer = await self.answer()
        if key not in answer:
            raise RuntimeError(f"the bus {self.role} process answered {answer!r}")
        return answer

    async def _stderr_tail(self) -> str:
        stderr = self.process.stderr
        if stderr is None:
            return ""
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(stderr.read(), 5)
            lines = data.decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else "(no output)"
        return "(no output)"

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                await self.send({"cmd": "exit"})
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@contextlib.asynccontextmanager
async def _server_url(bench: Bench) -> AsyncIterator[tuple[str, str]]:
    """The URL the node processes connect to: the suite's server, or (when the suite was
    given only a connection) a server of aether.testing started for this workload."""
    if bench.url:
        yield bench.url, "the suite's server"
        return
    from aether.testing import NatsServer

    async with NatsServer() as server:
        yield server.url, "a nats-server started for this workload (aether.testing)"


async def bus_nats(bench: Bench) -> WorkloadResult:
    """``NatsEventBus`` between two OS processes, in events/s: a publisher process
    publishes ``bus_events`` events, a subscriber process (its own connection to the same
    server) receives them; from the first publish to the last delivery.

    aether: ``NatsEventBus.publish`` of ready-made events (encoding counts against it) to
    a subscriber task iterating ``NatsEventBus.subscribe`` (buffer: the whole round).
    Baseline: nats-py core ``publish`` of the same payloads, pre-encoded, with the same
    headers, to a subscription callback that only counts messages (the client's
    ceiling), in the same two processes, rounds interleaved; and, to show what decoding
    costs, the same with a callback that decodes each message (``Event.from_json``).
    """
    wid, s = "bus_nats", bench.sizes
    result = bench._workload(wid, _doc(bus_nats, s))
    bench.progress.start(wid, result.title, s.bus_rounds + 1)
    count = s.bus_events
    base = bench.store.stream_name
    prefix, raw_subject = f"{base}.bus", f"{base}.raw.{_NAMESPACE}"
    extras: dict[str, dict[str, list[float]]] = {
        mode: {"publish_per_s": [], "dropped": [], "lost": [], "disordered": []}
        for mode in ("aether", "raw", "decode")
    }
    async with _server_url(bench) as (url, where):
        subscriber = await NodeProcess.start("subscriber", url, prefix, raw_subject, count)
        try:
            publisher = await NodeProcess.start("publisher", url, prefix, raw_subject, count)
            try:

                async def one_round(mode: str) -> float:
                    timeout = max(10.0, count / 2_000)
                    await subscriber.send(
                        {"cmd": "arm", "mode": mode, "count": count, "timeout": timeout}
                    )
                    await subscriber.expect("armed")
                    await publisher.send({"cmd": "publish", "mode": mode, "count": count})
                    published = await publisher.expect("first")
                    got = await subscriber.answer(timeout + _NODE_TIMEOUT)
                    if not got.get("received"):
                        raise RuntimeError(f"the bus subscriber received nothing ({mode})")
                    seen = extras[mode]
                    start = float(published["first"])
                    seen["publish_per_s"].append(count / (float(published["flushed"]) - start))
                    seen["dropped"].append(float(got["dropped"]))
                    seen["lost"].append(float(count - got["received"] - got["dropped"]))
                    seen["disordered"].append(float(got["disordered"]))
                    return float(got["received"]) / (float(got["last"]) - start)

                async def via_bus() -> float:
                    return await one_round("aether")

                async def via_raw() -> float:
                    return await one_round("raw")

                async def via_raw_decode() -> float:
                    return await one_round("decode")

                rounds = await run_rounds(
                    {
                        "aether.nats_bus": via_bus,
                        "raw.core": via_raw,
                        "raw.core.decode": via_raw_decode,
                    },
                    s.bus_rounds,
                    bench._tick(wid),
                )
            finally:
                await publisher.stop()
        finally:
            await subscriber.stop()

    point = result.point()
    for key, mode, label in (
        ("aether.nats_bus", "aether", "aether NatsEventBus publish to subscriber's iterator"),
        ("raw.core", "raw", "nats-py core publish, same headers, to a counting callback"),
        ("raw.core.decode", "decode", "the same, the callback decoding (Event.from_json)"),
    ):
        series = point.add(_series(key, f"{label} (2 processes)", "events/s", rounds[key]))
        seen = extras[mode]
        timed = slice(1, None)  # [0]: the warm-up round
        series.extra["publish_per_s"] = median(seen["publish_per_s"][timed])
        for name in ("dropped", "lost", "disordered"):
            series.extra[name] = sum(seen[name][timed])
    point.ratio("aether.nats_bus", "raw.core", "vs raw nats-py core (ceiling)")
    point.ratio("aether.nats_bus", "raw.core.decode", "vs raw nats-py core + Event.from_json")
    bus = point.series["aether.nats_bus"].extra
    raw = point.series["raw.core"].extra
    result.notes.append(
        f"Server: {where}. Publisher alone (publish calls and flush): aether "
        f"{bus['publish_per_s']:,.0f} events/s, raw {raw['publish_per_s']:,.0f} events/s. "
        f"Dropped by the bus subscription: {bus['dropped']:,.0f}; not delivered by NATS: "
        f"aether {bus['lost']:,.0f}, raw {raw['lost']:,.0f}; out of order: "
        f"{bus['disordered']:,.0f}."
    )
    bench.progress.finish(wid)
    return result
