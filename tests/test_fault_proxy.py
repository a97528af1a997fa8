"""Lost acknowledgements on a real network path: a TCP proxy cuts the connection after a
publish reached (and was processed by) the server but before its acknowledgement got back.

Unlike ``AckDropper`` (which drops the reply inside the client), here the client really
loses its connection and reconnects, and every other answer in flight on that connection
is lost too. ``save_event``/``save_events`` must retry, return normally, store each event
exactly once, and leave the actor writable, on single-replica and R3 streams.

Each test prints a ``figures`` line (visible with ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client

from aether import Event, VersionConflictError
from aether.store import JetStreamConfig, JetStreamEventStore
from aether.testing import NatsCluster, NatsServer

from ._proxy import Frame, FrameParser, NatsProxy
from ._stores import unique

pytestmark = pytest.mark.fault

# A cut request is only noticed when its answer times out: keep that short so each test
# takes seconds. A timeout that is merely slow is harmless (it is one more retry).
_REQUEST_TIMEOUT = timedelta(milliseconds=500)
_RETRY_DEADLINE = timedelta(seconds=20)


def ev(actor: str, version: int) -> Event:
    return Event(event_type="Deposited", actor_id=actor, version=version, data={"v": version})


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback; the cuts are deliberate, so do not log them."""


@dataclass
class Setup:
    """Stores writing through the proxy, each on its own connection (like processes), and
    an auditor store connected to the servers directly (a fresh, cold cache)."""

    proxy: NatsProxy
    stores: list[JetStreamEventStore]
    clients: list[Client]
    auditor: JetStreamEventStore
    #: the event subjects of the stream (what the proxy is armed on)
    prefix: str
    acknowledged: dict[str, list[Event]] = field(default_factory=dict)

    def ack(self, events: Sequence[Event]) -> None:
        """Record events whose save returned normally."""
        for event in events:
            self.acknowledged.setdefault(event.actor_id, []).append(event)


@contextlib.asynccontextmanager
async def proxied(upstreams: list[str], replicas: int, n_stores: int = 1) -> AsyncIterator[Setup]:
    """A fresh stream, *n_stores* stores behind a :class:`NatsProxy`, deleted afterwards.

    For a cluster the proxy has one port per node and strips ``connect_urls`` from the
    servers' INFO, so nats-py only ever knows (and reconnects to) the proxy's URLs; without
    that it would learn the nodes' real addresses and could reconnect around the proxy.
    """
    config = JetStreamConfig(
        replica_count=replicas, request_timeout=_REQUEST_TIMEOUT, retry_deadline=_RETRY_DEADLINE
    )
    name = unique("fp")
    clients: list[Client] = []
    async with NatsProxy(upstreams) as proxy:
        direct = await nats.connect(servers=upstreams)
        try:
            stores = []
            for _ in range(n_stores):
                client = await nats.connect(
                    servers=proxy.urls,
                    reconnect_time_wait=0.05,  # only waited after a *failed* attempt
                    max_reconnect_attempts=-1,
                    connect_timeout=2,
                    error_cb=_quiet,
                )
                clients.append(client)
                stores.append(await JetStreamEventStore.open(client, name, config))
            auditor = await JetStreamEventStore.open(direct, name, config)
            prefix = auditor.subject_for("x")[:-1]
            yield Setup(proxy, stores, clients, auditor, prefix)
        finally:
            for client in clients:
                await client.close()
            js = direct.jetstream()
            for stream in (name, f"{name}_snapshots"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream)
            await direct.close()


@dataclass
class Figures:
    events: int = 0
    cuts: int = 0
    withheld_dropped: int = 0
    store_retries: int = 0
    reconnects: int = 0
    no_responders: int = 0
    #: the lost answers by kind: the publish stored / a duplicate / refused (a retry of
    #: an event that had landed, e.g. "wrong last sequence": the store must see it is its own)
    answers_stored: int = 0
    answers_duplicate: int = 0
    answers_refused: int = 0
    lost: int = 0
    duplicates: int = 0
    unacknowledged: int = 0
    spurious_conflicts: int = 0

    def line(self, name: str) -> str:
        return (
            f"figures {name}: events={self.events} cuts={self.cuts} "
            f"other_answers_lost={self.withheld_dropped} store_retries={self.store_retries} "
            f"reconnects={self.reconnects} no_responders_passed={self.no_responders} "
            f"lost_answers(stored/duplicate/refused)="
            f"{self.answers_stored}/{self.answers_duplicate}/{self.answers_refused} "
            f"lost={self.lost} duplicates={self.duplicates} "
            f"unacknowledged_stored={self.unacknowledged} "
            f"spurious_conflicts={self.spurious_conflicts}"
        )


async def audit(setup: Setup, name: str, spurious_conflicts: int = 0) -> Figures:
    """Read every actor back through the direct, cold store; print and check the figures.

    Exactly once: the stored events are precisely the acknowledged ones, in order, with
    contiguous versions 1..N, and ``get_latest_version`` (authoritative) agrees.
    """
    figures = Figures(
        cuts=setup.proxy.stats.cuts,
        withheld_dropped=setup.proxy.stats.withheld_dropped,
        store_retries=sum(store.stats.retries for store in setup.stores),
        reconnects=sum(client.stats["reconnects"] for client in setup.clients),
        no_responders=setup.proxy.stats.no_responders,
        spurious_conflicts=spurious_conflicts,
    )
    for answer in setup.proxy.stats.dropped_acks:
        kind = answer_kind(answer)
        if kind == "stored":
            figures.answers_stored += 1
        elif kind == "duplicate":
            figures.answers_duplicate += 1
        else:
            figures.answers_refused += 1  # an error, or a status without a body
    stored: dict[str, list[Event]] = {}
    for actor, acked in setup.acknowledged.items():
        stored[actor] = await setup.auditor.get_events(actor)
        ids = [e.id for e in stored[actor]]
        acked_ids = {e.id for e in acked}
        figures.events += len(acked)
        figures.lost += len(acked_ids - set(ids))
        figures.duplicates += len(ids) - len(set(ids))
        figures.unacknowledged += len(set(ids) - acked_ids)
    print(figures.line(name))
    for actor, acked in setup.acknowledged.items():
        got = [(e.id, e.version) for e in stored[actor]]
        assert got == [(e.id, e.version) for e in acked], actor
        assert [v for _, v in got] == list(range(1, len(got) + 1)), actor
        assert await setup.auditor.get_latest_version(actor) == len(acked)
    assert (figures.lost, figures.duplicates, figures.unacknowledged) == (0, 0, 0)
    assert figures.spurious_conflicts == 0
    assert sum(store.stats.conflicts for store in setup.stores) == 0
    assert setup.proxy.stats.gave_up == 0
    # Every connection and reconnect went through the proxy.
    for client in setup.clients:
        assert client.discovered_servers == []
        assert {url.netloc for url in client.servers} <= {
            url.removeprefix("nats://") for url in setup.proxy.urls
        }
    return figures


def answer_kind(frame: Frame) -> str:
    """What a lost JetStream answer said: "stored", "duplicate", "refused", or
    "status <code>" for a status message without a body."""
    if not frame.body:
        return f"status {frame.status}"
    answer = json.loads(frame.body)
    if "error" in answer:
        return "refused"
    return "duplicate" if answer.get("duplicate") else "stored"


async def save_cut(setup: Setup, events: list[Event], cuts: int = 1) -> None:
    """Save *events* (one event, or an atomic batch) with the next *cuts* answers lost."""
    proxy, store = setup.proxy, setup.stores[0]
    before = proxy.stats.cuts
    proxy.cut_after_publish(setup.prefix, cuts)
    if len(events) == 1:
        await store.save_event(events[0])  # returns normally
    else:
        await store.save_events(events)
    setup.ack(events)
    assert proxy.stats.cuts == before + cuts  # the fault really happened
    assert proxy.armed == 0
    # The first lost answer acknowledged the publish: it was stored before the cut.
    first = proxy.stats.dropped_acks[before]
    assert answer_kind(first) == "stored", first


async def single_event_cuts(setup: Setup) -> None:
    store = setup.stores[0]
    # A new actor (cold cache: the append expects "no message yet").
    await save_cut(setup, [ev("cold", 1)])
    # A warm actor: one round trip per save, each one cut.
    first = ev("acc", 1)
    await store.save_event(first)
    setup.ack([first])
    for version in range(2, 6):
        # On version 4 the retry's answer is lost as well (the server says "duplicate" or
        # "wrong last sequence": the event is already there; the store must see it is its own).
        await save_cut(setup, [ev("acc", version)], cuts=2 if version == 4 else 1)
    # Both actors stay writable, and the cache learned nothing wrong.
    for actor, version in (("acc", 6), ("cold", 2)):
        event = ev(actor, version)
        await store.save_event(event)
        setup.ack([event])
        assert await store.get_latest_version(actor) == version
    assert setup.proxy.stats.cuts == 6
    assert store.stats.retries >= setup.proxy.stats.cuts


async def batch_cuts(setup: Setup) -> None:
    store = setup.stores[0]
    await save_cut(setup, [ev("cold", v) for v in (1, 2, 3)])  # a batch on a new actor
    first = ev("acc", 1)
    await store.save_event(first)
    setup.ack([first])
    await save_cut(setup, [ev("acc", v) for v in range(2, 7)])
    await save_cut(setup, [ev("acc", v) for v in range(7, 10)], cuts=2)  # the retry too
    for actor, version in (("acc", 10), ("cold", 4)):
        event = ev(actor, version)
        await store.save_event(event)
        setup.ack([event])
        assert await store.get_latest_version(actor) == version
    assert setup.proxy.stats.cuts == 4
    assert store.stats.retries >= setup.proxy.stats.cuts


async def concurrent_cuts(setup: Setup, cuts: int, min_events: int) -> int:
    """Two writers (distinct actors) per store, while the proxy cuts *cuts* times, one
    after another, whichever connection publishes next. Returns the spurious conflicts."""
    done = asyncio.Event()
    progress = asyncio.Event()
    spurious = 0

    def acknowledged() -> int:
        return sum(len(events) for events in setup.acknowledged.values())

    async def writer(store: JetStreamEventStore, actor: str) -> None:
        nonlocal spurious
        version = 0
        step = 0
        while len(setup.acknowledged.get(actor, [])) < min_events or not done.is_set():
            step += 1
            size = 3 if step % 4 == 0 else 1  # every fourth write an atomic batch
            events = [ev(actor, version + i) for i in range(1, size + 1)]
            try:
                if size == 1:
                    await store.save_event(events[0])
                else:
                    await store.save_events(events)
            except VersionConflictError:
                # Nobody else writes this actor: a conflict can only be with itself.
                spurious += 1
                version = await store.get_latest_version(actor)
                continue
            setup.ack(events)
            progress.set()
            version += size

    async def chaos() -> None:
        try:
            for total in range(1, cuts + 1):
                setup.proxy.cut_after_publish(setup.prefix, 1)
                async with asyncio.timeout(15):
                    await setup.proxy.wait_cuts(total)
                    # Let the writers get on a bit, so the cuts spread over the run (some
                    # still land on a retry of an earlier cut one: that is wanted too).
                    target = acknowledged() + 15
                    while acknowledged() < target:
                        progress.clear()
                        await progress.wait()
        finally:
            done.set()

    owners = {f"w{i}-{j}": store for i, store in enumerate(setup.stores) for j in range(2)}
    await asyncio.gather(chaos(), *(writer(store, actor) for actor, store in owners.items()))
    assert setup.proxy.stats.cuts == cuts
    assert sum(store.stats.retries for store in setup.stores) >= cuts
    # Every actor stays writable afterwards, through its writer's (warm) cache.
    for actor, store in owners.items():
        event = ev(actor, setup.acknowledged[actor][-1].version + 1)
        await store.save_event(event)
        setup.ack([event])
        assert await store.get_latest_version(actor) == event.version
    return spurious


# -- the proxy's protocol parsing (no network) ----------------------------------------------


def test_frames_survive_any_read_boundaries() -> None:
    """Control lines split across reads, payloads containing CRLF, headers and replies."""
    stream = (
        b'INFO {"server_id":"x","connect_urls":["127.0.0.1:1"]}\r\n'
        b"PING\r\n"
        b"MSG _INBOX.a.b 7 5\r\nab\r\nc\r\n"
        b"HMSG s.events.x 9 _INBOX.r 12 15\r\nNATS/1.0\r\n\r\nabc\r\n"
        b"HPUB s.events.y _INBOX.q 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
        b"PUB s.events.z 0\r\n\r\n"
        b"HMSG _INBOX.r 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        b"+OK\r\n"
    )
    for size in (1, 2, 3, 7, len(stream)):
        parser = FrameParser()
        frames = []
        for start in range(0, len(stream), size):
            frames += parser.feed(stream[start : start + size])
        ops = ["INFO", "PING", "MSG", "HMSG", "HPUB", "PUB", "HMSG", "+OK"]
        assert [f.op for f in frames] == ops
        assert b"".join(f.raw for f in frames) == stream
        assert [f.reply for f in frames[2:6]] == [None, "_INBOX.r", "_INBOX.q", None]
        assert [f.body for f in frames[2:6]] == [b"ab\r\nc", b"abc", b"hi", b""]
        assert [f.status for f in frames[3:7]] == [None, None, None, "503"]


# -- single replica -------------------------------------------------------------------------


async def test_r1_cut_single_events(nats_server: NatsServer) -> None:
    async with proxied([nats_server.url], replicas=1) as setup:
        await single_event_cuts(setup)
        await audit(setup, "r1_single_events")


async def test_r1_cut_atomic_batches(nats_server: NatsServer) -> None:
    async with proxied([nats_server.url], replicas=1) as setup:
        await batch_cuts(setup)
        await audit(setup, "r1_atomic_batches")


async def test_r1_concurrent_writers_under_repeated_cuts(nats_server: NatsServer) -> None:
    async with proxied([nats_server.url], replicas=1, n_stores=3) as setup:
        spurious = await concurrent_cuts(setup, cuts=6, min_events=20)
        await audit(setup, "r1_concurrent", spurious)


# -- R3 on a 3-node cluster -----------------------------------------------------------------


@pytest.mark.cluster
async def test_r3_cut_single_events(nats_cluster: NatsCluster) -> None:
    async with proxied(nats_cluster.urls, replicas=3) as setup:
        await single_event_cuts(setup)
        assert setup.proxy.stats.info_rewrites > 0  # the nodes did advertise each other
        await audit(setup, "r3_single_events")


@pytest.mark.cluster
async def test_r3_cut_atomic_batches(nats_cluster: NatsCluster) -> None:
    async with proxied(nats_cluster.urls, replicas=3) as setup:
        await batch_cuts(setup)
        await audit(setup, "r3_atomic_batches")


@pytest.mark.cluster
async def test_r3_concurrent_writers_under_repeated_cuts(nats_cluster: NatsCluster) -> None:
    async with proxied(nats_cluster.urls, replicas=3, n_stores=3) as setup:
        spurious = await concurrent_cuts(setup, cuts=6, min_events=20)
        await audit(setup, "r3_concurrent", spurious)
