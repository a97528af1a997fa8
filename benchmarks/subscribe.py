"""The read side: ``store.subscribe()`` catching up on a stream, and delivering live.

Both workloads write to a stream of their own (:meth:`Bench.read_stream`), so that
``subscribe(after=0)`` reads exactly the history they wrote.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aether.store import JetStreamEventStore, Subscription
from benchmarks.baselines import make_event
from benchmarks.model import (
    Point,
    WorkloadResult,
    latency_series,
    percentile,
    round_orders,
    run_rounds,
)
from benchmarks.workloads import _doc, _series, populate

if TYPE_CHECKING:
    from benchmarks.workloads import Bench

__all__ = ["latency_series", "subscribe_catchup", "subscribe_live"]

_LIVE_WARMUP = 50
#: a live event not delivered within this long fails the workload
DELIVERY_TIMEOUT = 10.0


async def subscribe_catchup(bench: Bench) -> WorkloadResult:
    """Reading every event of a stream of ``catchup_events`` events written to
    ``catchup_actors`` actors (the same number each), in events/s.

    aether: ``store.subscribe(after=0)`` iterated until its last event (it is then caught
    up), and closed: one ephemeral pull consumer over every actor, one pull in flight.
    Baselines, aether's own ``get_events``: of one actor holding as many events (the same
    event count and sizes through one consumer: the store's replay throughput, which the
    target compares with), and of each actor of the same history in turn (what an
    application without ``subscribe`` would do: one consumer per actor).
    """
    wid, s = "subscribe_catchup", bench.sizes
    result = bench._workload(wid, _doc(subscribe_catchup, s))
    bench.progress.start(wid, result.title, s.catchup_rounds + 2)
    stream = await bench.read_stream()
    total, per_actor = s.catchup_events, s.catchup_events // s.catchup_actors
    after = bench.read_position  # 0 unless another workload wrote there first
    actors = [f"cu-m{i:05d}" for i in range(s.catchup_actors)]
    for actor in actors:
        await populate(stream, actor, per_actor)
    bench.read_position += total
    end = bench.read_position
    single = "cu-s00000"  # as long as the others: the same message sizes
    await populate(bench.store, single, total)
    bench.progress.advance(wid)
    restarts = 0

    async def via_subscribe() -> float:
        nonlocal restarts
        count, last, caught_up = 0, 0, False
        t0 = time.perf_counter()
        async with stream.subscribe(after=after) as sub:
            async for event in sub:
                count += 1
                if count == total:
                    last, caught_up = event.position or 0, sub.caught_up
                    break
            stats = sub.stats
        elapsed = time.perf_counter() - t0
        restarts += stats.restarts
        if count != total or last != end or not caught_up or stats.malformed:
            raise RuntimeError(
                f"subscribe read {count} events up to position {last} (caught up: "
                f"{caught_up}, malformed: {stats.malformed}); expected {total} up to {end}"
            )
        return total / elapsed

    async def one_actor() -> float:
        t0 = time.perf_counter()
        events = await bench.store.get_events(single)
        elapsed = time.perf_counter() - t0
        if len(events) != total:
            raise RuntimeError(f"get_events returned {len(events)} events, expected {total}")
        return total / elapsed

    async def per_actor_reads() -> float:
        count = 0
        t0 = time.perf_counter()
        for actor in actors:
            count += len(await stream.get_events(actor))
        elapsed = time.perf_counter() - t0
        if count != total:
            raise RuntimeError(f"get_events per actor returned {count} events, expected {total}")
        return total / elapsed

    contenders: dict[str, Callable[[], Awaitable[float]]] = {
        "aether.subscribe": via_subscribe,
        "aether.get_events.one_actor": one_actor,
        "aether.get_events.per_actor": per_actor_reads,
    }
    rounds = await run_rounds(contenders, s.catchup_rounds, bench._tick(wid))
    point = result.point()
    labels = {
        "aether.subscribe": f"aether subscribe(after=0), {total:,} events of {len(actors)} actors",
        "aether.get_events.one_actor": f"aether get_events of one {total:,}-event actor",
        "aether.get_events.per_actor": (
            f"aether get_events of each of the {len(actors)} actors in turn (same history)"
        ),
    }
    for key, label in labels.items():
        point.add(_series(key, label, "events/s", rounds[key]))
    point.ratio(
        "aether.subscribe",
        "aether.get_events.one_actor",
        f"vs get_events of one {total:,}-event actor (same event count)",
    )
    point.ratio(
        "aether.subscribe",
        "aether.get_events.per_actor",
        "vs get_events per actor (same history)",
    )
    if restarts:
        result.notes.append(
            f"The subscriptions recreated their consumer {restarts} times (a fault during "
            "the run: a reconnect or a lost consumer); their figures include that."
        )
    bench.progress.finish(wid)
    return result


async def subscribe_live(bench: Bench) -> WorkloadResult:
    """How soon an appended event reaches a live subscriber on another connection.

    A writer appends one event at a time (``save_event``) to the stream a
    ``subscribe()`` subscriber is caught up on, on a second connection of this process,
    and waits until the subscriber has it before the next. Figure: the time from the
    append's start until the subscriber's iterator yields the event, p50 (p90, p99 in the
    JSON), over ``live_calls`` appends after a warm-up. Baseline: one
    ``get_latest_version`` round trip on the writer's connection, interleaved call by call
    with the appends. Also reported: the append alone (until its ack), and how long after
    the writer's ack the subscriber had the event (negative: before it).
    """
    wid, s = "subscribe_live", bench.sizes
    result = bench._workload(wid, _doc(subscribe_live, s))
    calls = s.live_calls
    bench.progress.start(wid, result.title, _LIVE_WARMUP + calls)
    if bench.connect is None:
        raise RuntimeError("the live workload needs a second connection (Bench.connect)")
    writer = await bench.read_stream()
    actor = "live-0001"
    arrivals: dict[int, float] = {}
    delivered = asyncio.Event()
    clock = time.perf_counter

    async def consume(sub: Subscription) -> None:
        async for event in sub:
            arrivals[event.version] = clock()
            delivered.set()

    reader_nc = await bench.connect()
    samples: dict[str, list[float]] = {"live": [], "append": [], "after_ack": [], "glv": []}
    try:
        reader = await JetStreamEventStore.attach(reader_nc, writer.stream_name, writer.config)
        sub = reader.subscribe(after=bench.read_position)
        consumer = asyncio.create_task(consume(sub), name="bench live subscriber")
        try:
            version = 0
            orders = round_orders(["live", "glv"], _LIVE_WARMUP + calls)
            for call, order in enumerate(orders):
                timed = call >= _LIVE_WARMUP
                for name in order:
                    if name == "glv":
                        t0 = clock()
                        got = await writer.get_latest_version(actor)
                        elapsed = clock() - t0
                        if got != version:
                            raise RuntimeError(f"get_latest_version {got}, expected {version}")
                        if timed:
                            samples["glv"].append(elapsed * 1e6)
                        continue
                    version += 1
                    event = make_event(actor, version)
                    delivered.clear()
                    t0 = clock()
                    await writer.save_event(event)
                    t1 = clock()
                    if version not in arrivals:
                        await _delivery(delivered, consumer)
                    t2 = arrivals.pop(version)
                    if arrivals:
                        raise RuntimeError(f"unexpected live events {sorted(arrivals)}")
                    if timed:
                        samples["live"].append((t2 - t0) * 1e6)
                        samples["append"].append((t1 - t0) * 1e6)
                        samples["after_ack"].append((t2 - t1) * 1e6)
                bench.progress.advance(wid)
            bench.read_position += version
            restarts = sub.stats.restarts
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            await sub.close()
            await reader.close()
    finally:
        await reader_nc.close()

    point = result.point()
    live = point.add(
        latency_series(
            "aether.subscribe.live",
            "aether subscribe(): append start to delivery, other connection",
            samples["live"],
        )
    )
    after_ack = samples["after_ack"]
    live.extra["after_ack_p50"] = percentile(after_ack, 0.5)
    live.extra["after_ack_p99"] = percentile(after_ack, 0.99)
    live.extra["before_ack_share"] = sum(1 for x in after_ack if x < 0) / len(after_ack)
    point.add(
        latency_series(
            "aether.get_latest_version",
            "aether get_latest_version: one round trip (writer's connection)",
            samples["glv"],
        )
    )
    point.add(
        latency_series(
            "aether.save_event",
            "aether save_event alone: append start to its ack",
            samples["append"],
        )
    )
    point.ratio(
        "aether.subscribe.live",
        "aether.get_latest_version",
        "vs one get_latest_version round trip",
        speed_of_latency=True,
    )
    result.notes.append(live_note(point))
    if restarts:
        result.notes.append(
            f"The subscription recreated its consumer {restarts} times during the run."
        )
    bench.progress.finish(wid)
    return result


async def _delivery(delivered: asyncio.Event, consumer: asyncio.Task[None]) -> None:
    """Wait for the subscriber's next event; raise if it failed or took too long."""
    waiting = asyncio.ensure_future(delivered.wait())
    done, _ = await asyncio.wait(
        {waiting, consumer}, timeout=DELIVERY_TIMEOUT, return_when="FIRST_COMPLETED"
    )
    if waiting in done:
        return
    waiting.cancel()
    if consumer in done:
        error = consumer.exception()
        raise RuntimeError(f"the live subscriber stopped: {error!r}") from error
    raise RuntimeError(f"a live event was not delivered within {DELIVERY_TIMEOUT:g}s")


def live_note(point: Point) -> str:
    """The live workload's note: when the subscriber had the event, from the writer's ack."""
    live = point.series["aether.subscribe.live"].extra
    return (
        f"From the writer's ack to the subscriber: p50 {live['after_ack_p50']:,.0f} µs, "
        f"p99 {live['after_ack_p99']:,.0f} µs; in {live['before_ack_share']:.0%} of the "
        "appends the subscriber had the event before the writer had its ack (the server "
        "sends both when it has stored the event). Hence the figure runs from the "
        "append's start: the ack-to-delivery time is often negative and has no ratio."
    )
