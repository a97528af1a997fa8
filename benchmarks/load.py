"""The load workload: reading a short history, the most frequent read of a service.

Before it handles a command, an event-sourced service loads the aggregate's history,
most often a handful to a hundred events. This workload times ``get_events`` of actors
of ``Sizes.load_lengths`` events call by call, interleaved with one
``get_latest_version`` round trip on the same actor (the cost of any single request:
the floor of a load over the network) and with the eventsourcing library's
``repository.get`` of an aggregate of as many events on each of its persistence peers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.model import WORKLOADS, Target, WorkloadResult, latency_series
from benchmarks.workloads import Probe, _bind, _doc, _sync, interleaved_latencies, populate

if TYPE_CHECKING:
    from benchmarks.model import SuiteResult
    from benchmarks.workloads import Bench

__all__ = ["load", "load_targets"]

WID = "load"
GET_EVENTS = "aether.get_events"
ROUND_TRIP = "aether.get_latest_version"
#: (history length, the most a load may cost in get_latest_version round trips)
ROUND_TRIP_GOALS = ((1, 1.3), (10, 1.6))
#: a load of this many events at least this much faster than eventsourcing on PostgreSQL
PEER_GOAL = (10, 1.5)


async def load(bench: Bench) -> WorkloadResult:
    """Latency of loading an actor's whole history, by history length (p50, µs).

    aether: ``get_events`` (batched direct gets: one request for a history of up to
    ``direct_batch_size`` events, no consumer). One round trip: ``get_latest_version``
    of the same actor. eventsourcing: ``repository.get`` of an aggregate of as many
    events (every event read and applied; in-process for SQLite). One length after the
    other, calls are interleaved one by one across contenders, in a new random order
    every time.
    """
    s = bench.sizes
    result = WorkloadResult(WID, WORKLOADS[WID], _doc(load, s))
    result.x_label = "events in the actor's history"
    bench.progress.start(WID, result.title, (s.load_calls + 50) * len(s.load_lengths))
    store = bench.store
    samples: dict[tuple[int, str], list[float]] = {}
    for length in s.load_lengths:
        # One length at a time: the contenders of a length interleaved call by call, and
        # no 1,000-event load (its consumer, its garbage) between two 1-event ones.
        actor = f"load-{length}"
        await populate(store, actor, length)

        async def count(actor: str = actor) -> int:
            return len(await store.get_events(actor))

        probes: list[Probe] = [
            (length, GET_EVENTS, count),
            (length, ROUND_TRIP, _bind(store.get_latest_version, actor)),
        ]
        for peer in bench.peers:
            aggregate = peer.create(length)
            probes.append((length, f"{peer.key}.repository_get", _sync(peer.load, aggregate)))
        samples |= await interleaved_latencies(
            probes, s.load_calls, lambda: bench.progress.advance(WID), "events"
        )
    labels = {
        GET_EVENTS: "aether get_events",
        ROUND_TRIP: "aether get_latest_version (one round trip)",
    }
    for peer in bench.peers:
        labels[f"{peer.key}.repository_get"] = f"{peer.label}: repository.get"
    for length in s.load_lengths:
        point = result.point(length)
        for key, label in labels.items():
            point.add(latency_series(key, label, samples[(length, key)]))
        point.ratio(GET_EVENTS, ROUND_TRIP, "vs one round trip", speed_of_latency=True)
        for peer in bench.peers:
            point.ratio(
                GET_EVENTS,
                f"{peer.key}.repository_get",
                f"vs {peer.label}",
                speed_of_latency=True,
            )
    bench.progress.finish(WID)
    return result


def load_targets(result: SuiteResult) -> list[Target]:
    """Loads of 1 and 10 events within 1.3x and 1.6x of one round trip (p50 over p50),
    and a 10-event load 1.5x as fast as eventsourcing's ``repository.get`` on PostgreSQL
    (SQLite in the comment)."""
    found = result.workload(WID)
    points = {p.x: p for p in found.points} if found is not None else {}
    targets: list[Target] = []
    for length, goal in ROUND_TRIP_GOALS:
        target = Target(
            f"load_{length}_vs_round_trip",
            f"load of a {length}-event actor: get_events p50 vs one get_latest_version p50 "
            "(latency)",
            WID,
            "max",
            goal,
            primary=True,
        )
        point = points.get(length)
        if point is not None:
            mine, trip = point.series[GET_EVENTS], point.series[ROUND_TRIP]
            target.value = mine.value / trip.value
            target.comment = (
                f"p50 {mine.value:,.0f} µs against {trip.value:,.0f} µs (p90 "
                f"{mine.extra['p90']:,.0f} against {trip.extra['p90']:,.0f})."
            )
        targets.append(target)
    length, goal = PEER_GOAL
    target = Target(
        f"load_{length}_vs_postgres",
        f"load of a {length}-event aggregate: get_events vs eventsourcing PostgreSQL "
        "repository.get",
        WID,
        "min",
        goal,
        primary=True,
    )
    point = points.get(length)
    if point is not None:
        ratios = {r.baseline: r.value for r in point.ratios if r.contender == GET_EVENTS}
        target.value = ratios.get("es_postgres.repository_get")
        sqlite = ratios.get("es_sqlite.repository_get")
        if sqlite is not None:
            target.comment = f"Against eventsourcing on SQLite (in-process): {sqlite:.2f}x."
    targets.append(target)
    return targets
