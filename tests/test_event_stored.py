"""EventStored: a store created with ``bus=`` announces each append it makes, once, and
nothing for a failed append or a re-save (DESIGN.md, "Event bus")."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aether import Event, VersionConflictError
from aether.bus import INTERNAL_NAMESPACE, EventBus, EventStored
from aether.store import InMemoryEventStore, JetStreamConfig, JetStreamEventStore

from ._faults import AckDropper
from ._stores import StoreFactory


async def drain(sub: object, end: str) -> list[EventStored]:
    """The notices received until the one for event id *end* (a marker appended last)."""
    got: list[EventStored] = []
    async for notice in sub:  # type: ignore[attr-defined]
        got.append(notice)
        if notice.event_id == end:
            return got
    raise AssertionError("the subscription ended")


async def test_each_append_is_announced_once_with_its_position(
    open_store: StoreFactory,
) -> None:
    bus = EventBus()
    sub = bus.subscribe(INTERNAL_NAMESPACE)
    plain = await open_store()
    store = await JetStreamEventStore.open(plain._nc, plain.stream_name, bus=bus)
    single = Event("Opened", "acc", 1)
    batch = [Event("Deposited", "acc", v) for v in (2, 3, 4)]
    await store.save_event(single)
    await store.save_events(batch)
    other = Event("Opened", "other", 1)
    await store.save_event(other)
    # Failures and re-saves announce nothing.
    with pytest.raises(VersionConflictError):
        await store.save_event(Event("Deposited", "acc", 4))
    await store.save_events(batch)  # the same batch again: already stored
    # Another store's appends (no bus) are not announced by this one.
    await plain.save_event(Event("Deposited", "acc", 5))
    marker = Event("Marker", "zz", 1)
    await store.save_event(marker)

    notices = await asyncio.wait_for(drain(sub, marker.id), 30)
    stored = {e.id: e for a in ("acc", "other", "zz") for e in await store.get_events(a)}
    expected = [single.id, *(e.id for e in batch), other.id, marker.id]
    assert [n.event_id for n in notices] == expected
    for notice in notices:
        event = stored[notice.event_id]
        assert (notice.actor_id, notice.version, notice.position) == (
            event.actor_id,
            event.version,
            event.position,
        )
    assert bus.metrics.namespace(INTERNAL_NAMESPACE).published == 6
    await sub.close()
    await store.close()


async def test_a_failing_bus_never_fails_the_append(open_store: StoreFactory) -> None:
    class Broken:
        published = 0

        async def publish(self, namespace: str, message: object) -> None:
            self.published += 1
            raise RuntimeError("bus down")

    plain = await open_store()
    broken = Broken()
    store = await JetStreamEventStore.open(
        plain._nc, plain.stream_name, JetStreamConfig(), bus=broken
    )
    await store.save_event(Event("Opened", "acc", 1))
    assert broken.published == 1
    assert [e.version for e in await store.get_events("acc")] == [1]
    await store.close()


@pytest.mark.fault
@pytest.mark.parametrize("case", ["single", "batch", "another-writer-after"])
async def test_an_append_whose_ack_was_lost_is_announced_once(
    open_store: StoreFactory, case: str
) -> None:
    """The server stored the append but its acknowledgement was dropped: the store finds
    out on retry that it landed, and announces it once, with its real position."""
    bus = EventBus()
    sub = bus.subscribe(INTERNAL_NAMESPACE)
    plain = await open_store()
    store = await JetStreamEventStore.open(plain._nc, plain.stream_name, bus=bus)
    await plain.save_event(Event("Opened", "acc", 1))

    async def other_writes() -> None:
        await plain.save_event(Event("Deposited", "acc", 9))

    dropper = AckDropper(
        store, after_landing=other_writes if case == "another-writer-after" else None
    )
    dropper.drop_next(1)
    events = [Event("Deposited", "acc", v) for v in ((2, 3, 4) if case == "batch" else (2,))]
    if case == "batch":
        await store.save_events(events)
    else:
        await store.save_event(events[0])
    assert dropper.dropped == 1
    marker = Event("Marker", "zz", 1)
    await store.save_event(marker)
    notices = await asyncio.wait_for(drain(sub, marker.id), 30)
    positions = {e.id: e.position for e in await store.get_events("acc")}
    assert [(n.event_id, n.position) for n in notices[:-1]] == [
        (e.id, positions[e.id]) for e in events
    ]
    await sub.close()
    await store.close()


async def test_the_memory_store_announces_each_append_once_too() -> None:
    bus = EventBus()
    sub = bus.subscribe(INTERNAL_NAMESPACE)
    store = InMemoryEventStore(bus=bus)
    single = Event("Opened", "acc", 1)
    batch = [Event("Deposited", "acc", v) for v in (2, 3)]
    await store.save_event(single)
    await store.save_events(batch)
    await store.save_events(batch)  # re-save of the latest: nothing
    with pytest.raises(VersionConflictError):
        await store.save_event(Event("Deposited", "acc", 3))
    marker = Event("Marker", "zz", 1)
    await store.save_event(marker)
    notices = await asyncio.wait_for(drain(sub, marker.id), 30)
    stored = {e.id: e for a in ("acc", "zz") for e in await store.get_events(a)}
    assert [n.event_id for n in notices] == [single.id, *(e.id for e in batch), marker.id]
    assert [n.position for n in notices] == [stored[n.event_id].position for n in notices]
    await sub.close()


class _ThreadRecordingBus(EventBus):
    """An EventBus that records the thread of each ``publish``."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    async def publish(self, namespace: str, message: Event | EventStored) -> None:
        self.threads.add(threading.get_ident())
        await super().publish(namespace, message)


async def test_memory_store_appends_from_other_threads_announce_in_the_bus_loop() -> None:
    """Regression: an append made in another thread (its own event loop) called the
    single-loop EventBus from that thread, so its subscriber (in the bus's loop) was never
    woken. The notices are now handed to the bus's loop: published there, each once, in
    each writer's order."""
    bus = _ThreadRecordingBus()
    store = InMemoryEventStore(bus=bus)
    sub = bus.subscribe(INTERNAL_NAMESPACE)
    assert bus.loop is asyncio.get_running_loop()
    writers, per_writer = 4, 25

    def write(n: int) -> None:
        async def appends() -> None:
            for version in range(1, per_writer + 1):
                await store.save_event(Event("Deposited", f"w{n}", version))

        asyncio.run(appends())

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    got: list[EventStored] = []
    async with asyncio.timeout(60):  # a guard against a hang, not a timing requirement
        async for notice in sub:
            got.append(notice)
            if len(got) == writers * per_writer:
                break
    for thread in threads:
        await asyncio.to_thread(thread.join)
    assert bus.threads == {threading.get_ident()}
    assert sorted(n.position for n in got) == list(range(1, writers * per_writer + 1))
    for n in range(writers):
        assert [x.version for x in got if x.actor_id == f"w{n}"] == list(range(1, 26))
    await bus.close()
