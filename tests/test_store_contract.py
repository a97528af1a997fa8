"""The store contract of DESIGN.md, run against every backend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

import pytest

from aether import ActorSnapshot, Event, InvalidEventError, VersionConflictError
from aether.store import EventStore, JetStreamEventStore, SnapshotStore
from aether.store._rules import MAX_BATCH_SIZE, MAX_TOKEN_LENGTH, MAX_VERSION


class Point(NamedTuple):
    x: int
    y: int


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"n": value}
    return value


def _cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


def ev(actor: str, version: int, **data: object) -> Event:
    return Event(event_type="Deposited", actor_id=actor, version=version, data=dict(data))


async def test_implements_protocols(store: SnapshotStore) -> None:
    assert isinstance(store, EventStore)
    assert isinstance(store, SnapshotStore)


async def test_unknown_actor_is_empty(store: SnapshotStore) -> None:
    assert await store.get_events("nobody") == []
    assert await store.get_latest_version("nobody") == 0
    assert await store.get_latest_snapshot("nobody") is None
    result = await store.get_events_with_errors("nobody")
    assert result.events == [] and not result.has_errors


async def test_roundtrip_preserves_every_field(store: SnapshotStore) -> None:
    original = Event(
        event_type="Opened",
        actor_id="acc-1",
        version=1,
        data={"owner": "Ada", "limits": [1, 2.5, None, True], "nested": {"k": "ü"}},
        command_id="cmd-7",
        metadata={"correlationId": "c-1", "userId": "u-9"},
        timestamp=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    )
    await store.save_event(original)
    [stored] = await store.get_events("acc-1")
    assert stored == original
    assert stored is not original


async def test_versions_must_increase(store: SnapshotStore) -> None:
    await store.save_event(ev("a", 1))
    await store.save_event(ev("a", 2))
    for version in (2, 1):
        with pytest.raises(VersionConflictError) as info:
            await store.save_event(ev("a", version))
        assert info.value.actor_id == "a"
        assert info.value.attempted_version == version
        assert info.value.current_version == 2
        assert str(info.value) == (
            f"version conflict: actor 'a' has version 2, cannot save version {version}"
        )
    for version in (0, -5):  # not a conflict: no actor can ever hold such a version
        with pytest.raises(InvalidEventError, match="version"):
            await store.save_event(ev("a", version))
    assert [e.version for e in await store.get_events("a")] == [1, 2]


async def test_first_version_must_be_positive(store: SnapshotStore) -> None:
    for version in (0, -1):
        with pytest.raises(InvalidEventError, match="version"):
            await store.save_event(ev("a", version))
    assert await store.get_events("a") == []


@pytest.mark.parametrize("version", [0, -1, MAX_VERSION + 1])
async def test_versions_outside_the_range_are_bad_input(store: SnapshotStore, version: int) -> None:
    """Versions 0 and -1 used to raise VersionConflictError: they are bad input, on a new
    actor and on an existing one, alone or in a batch, and nothing is written."""
    with pytest.raises(InvalidEventError, match="version"):
        await store.save_event(ev("a", version))
    with pytest.raises(InvalidEventError, match="version"):
        await store.save_events([ev("a", version), ev("a", 7)])
    with pytest.raises(InvalidEventError, match="version"):
        await store.save_events([ev("a", 1), ev("a", version)])
    assert await store.get_events("a") == []
    assert await store.get_latest_version("a") == 0
    await store.save_event(ev("a", 3))
    with pytest.raises(InvalidEventError, match="version"):
        await store.save_event(ev("a", version))
    assert [e.version for e in await store.get_events("a")] == [3]


async def test_the_last_version_is_storable(store: SnapshotStore) -> None:
    await store.save_events([ev("a", MAX_VERSION - 1), ev("a", MAX_VERSION)])
    assert await store.get_latest_version("a") == MAX_VERSION
    assert [e.version for e in await store.get_events("a", MAX_VERSION)] == [MAX_VERSION]
    with pytest.raises(VersionConflictError) as info:
        await store.save_event(ev("a", MAX_VERSION))
    assert info.value.current_version == MAX_VERSION


async def test_gaps_are_allowed(store: SnapshotStore) -> None:
    await store.save_event(ev("a", 3))
    await store.save_event(ev("a", 10))
    assert await store.get_latest_version("a") == 10
    assert [e.version for e in await store.get_events("a")] == [3, 10]


async def test_from_version_filters(store: SnapshotStore) -> None:
    for v in range(1, 6):
        await store.save_event(ev("a", v))
    assert [e.version for e in await store.get_events("a", from_version=3)] == [3, 4, 5]
    assert [e.version async for e in store.iter_events("a", from_version=5)] == [5]
    assert await store.get_events("a", from_version=6) == []


async def test_actors_are_independent(store: SnapshotStore) -> None:
    await store.save_event(ev("a", 1))
    await store.save_event(ev("b", 1))
    await store.save_event(ev("b", 2))
    assert await store.get_latest_version("a") == 1
    assert [e.actor_id for e in await store.get_events("b")] == ["b", "b"]


async def test_resaving_the_latest_event_is_idempotent(store: SnapshotStore) -> None:
    event = ev("a", 1)
    await store.save_event(event)
    await store.save_event(event)  # a caller retrying after an unknown outcome
    assert await store.get_events("a") == [event]


async def test_a_reused_event_id_is_refused(store: SnapshotStore) -> None:
    await store.save_event(Event("Opened", "alice", 1, id="cmd-42"))
    with pytest.raises(InvalidEventError, match="already used"):
        await store.save_event(Event("Opened", "bob", 1, id="cmd-42"))
    with pytest.raises(InvalidEventError, match="already used"):
        await store.save_event(Event("Renamed", "alice", 2, id="cmd-42"))
    assert await store.get_events("bob") == []
    assert [e.version for e in await store.get_events("alice")] == [1]


async def test_mutating_a_saved_event_does_not_change_history(store: SnapshotStore) -> None:
    event = ev("a", 1, items=[1])
    await store.save_event(event)
    event.data["items"].append(2)
    event.metadata["userId"] = "mallory"
    [stored] = await store.get_events("a")
    assert stored.data == {"items": [1]} and stored.metadata == {}
    stored.data["items"].append(3)
    assert (await store.get_events("a"))[0].data == {"items": [1]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"actor_id": ""}, "actor_id"),
        ({"actor_id": None}, "actor_id"),
        ({"version": "1"}, "version"),
        ({"version": 1.0}, "version"),
        ({"version": True}, "version"),
        ({"data": {"when": datetime.now(UTC)}}, "not JSON"),
        ({"data": {"x": {1, 2}}}, "not JSON"),
        ({"data": {"x": float("nan")}}, "JSON cannot represent"),
        ({"data": {1: "x"}}, "non-string key"),
        ({"data": ["not", "a", "dict"]}, "dict"),
        ({"event_type": ""}, "event_type"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"timestamp": datetime(2026, 1, 1)}, "timezone"),  # naive on purpose
        ({"timestamp": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))}, "range"),
        ({"version": 2**64}, "64-bit"),
        ({"version": 2**63}, "64-bit"),
        ({"version": 0}, "version"),
        ({"version": -1}, "version"),
        ({"actor_id": "a" * 3000}, "too long"),
        ({"actor_id": "é" * 342}, "too long"),
        ({"data": {"x": "lone \udc80 surrogate"}}, "JSON"),
        ({"actor_id": "a\udc80"}, "JSON"),
        ({"data": {"p": Point(1, 2)}}, "not JSON"),
        ({"data": {"deep": _nested(300)}}, "JSON"),
        ({"data": _cyclic()}, "cyclic"),
        ({"id": ""}, "id"),
        ({"id": "has space"}, "id"),
        ({"id": "tab\there"}, "id"),
        ({"id": "x" * 257}, "id"),
        ({"command_id": 7}, "command_id"),
    ],
)
async def test_bad_input_raises_and_writes_nothing(
    store: SnapshotStore, change: dict[str, object], message: str
) -> None:
    event = ev("a", 1)
    for key, value in change.items():
        setattr(event, key, value)
    with pytest.raises(InvalidEventError, match=message):
        await store.save_event(event)
    assert await store.get_events("a") == []
    assert await store.get_latest_version("a") == 0


async def test_bad_read_arguments(store: SnapshotStore) -> None:
    with pytest.raises(InvalidEventError):
        await store.get_events("")
    with pytest.raises(InvalidEventError):
        await store.get_latest_version("")
    with pytest.raises(InvalidEventError):
        await store.get_events("a", from_version="1")  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError):
        await store.get_events("a", from_version=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError):
        await store.get_latest_snapshot("")


LONG_ACTOR_IDS = [
    "a" * 3000,
    "a" * (MAX_TOKEN_LENGTH + 1),
    "é" * 342,  # 2 bytes each, "_C3_A9": 2052 characters once encoded
    "." * 683,  # "_2E" each: 2049
]


@pytest.mark.parametrize("actor", LONG_ACTOR_IDS, ids=["3000", "2049", "e-acute", "dots"])
async def test_too_long_actor_ids_are_refused_by_every_call(
    store: SnapshotStore, actor: str
) -> None:
    """Fault 11: the in-memory store accepted a 3,000-character actor id that JetStream
    refuses (its subject token would exceed MAX_TOKEN_LENGTH). Both refuse it now, the
    same way, for saves and reads alike."""
    too_long = "too long"
    with pytest.raises(InvalidEventError, match=too_long):
        await store.save_event(ev(actor, 1))
    with pytest.raises(InvalidEventError, match=too_long):
        await store.save_events([ev(actor, 1), ev(actor, 2)])
    with pytest.raises(InvalidEventError, match=too_long):
        await store.save_snapshot(ActorSnapshot(actor, 1, {}))
    with pytest.raises(InvalidEventError, match=too_long):
        await store.get_events(actor)
    with pytest.raises(InvalidEventError, match=too_long):
        await store.get_events_with_errors(actor)
    with pytest.raises(InvalidEventError, match=too_long):
        await anext(aiter(store.iter_events(actor)))
    with pytest.raises(InvalidEventError, match=too_long):
        await store.get_latest_version(actor)
    with pytest.raises(InvalidEventError, match=too_long):
        await store.get_latest_snapshot(actor)


@pytest.mark.parametrize(
    "actor", ["a" * MAX_TOKEN_LENGTH, "é" * 341, "." * 682], ids=["2048", "e-acute", "dots"]
)
async def test_actor_ids_at_the_limit_are_accepted(store: SnapshotStore, actor: str) -> None:
    event = ev(actor, 1)
    await store.save_event(event)
    assert await store.get_events(actor) == [event]
    assert await store.get_latest_version(actor) == 1
    await store.save_snapshot(ActorSnapshot(actor, 1, {"n": 1}))
    snapshot = await store.get_latest_snapshot(actor)
    assert snapshot is not None and snapshot.actor_id == actor


async def test_save_events_is_all_or_nothing(store: SnapshotStore) -> None:
    await store.save_events([ev("a", 1), ev("a", 2), ev("a", 3)])
    assert [e.version for e in await store.get_events("a")] == [1, 2, 3]
    # The first event conflicts: none of the batch is written.
    with pytest.raises(VersionConflictError) as info:
        await store.save_events([ev("a", 3), ev("a", 4)])
    assert info.value.current_version == 3
    assert await store.get_latest_version("a") == 3


async def test_save_events_expected_version(store: SnapshotStore) -> None:
    await store.save_events([ev("a", 1)], expected_version=0)
    with pytest.raises(VersionConflictError) as info:
        await store.save_events([ev("a", 5), ev("a", 6)], expected_version=0)
    assert info.value.current_version == 1
    await store.save_events([ev("a", 2), ev("a", 3)], expected_version=1)
    assert [e.version for e in await store.get_events("a")] == [1, 2, 3]


@pytest.mark.parametrize(
    "batch",
    [
        [],
        [ev("a", 1), ev("b", 2)],
        [ev("a", 2), ev("a", 1)],
        [ev("a", 1), ev("a", 1)],
        [ev("a", 1), ev("a", 2, bad={1, 2})],
    ],
    ids=["empty", "two-actors", "decreasing", "repeated", "bad-data"],
)
async def test_save_events_rejects_bad_batches(store: SnapshotStore, batch: list[Event]) -> None:
    with pytest.raises(InvalidEventError):
        await store.save_events(batch)
    assert await store.get_events("a") == []


async def test_malformed_batch_keeps_earlier_history(store: SnapshotStore) -> None:
    await store.save_event(ev("a", 1))
    with pytest.raises(InvalidEventError):
        await store.save_events([ev("a", 2), ev("a", 3, bad=float("inf"))])
    assert [e.version for e in await store.get_events("a")] == [1]


async def test_batch_size_limit_is_the_same_everywhere(store: SnapshotStore) -> None:
    """Fault 11: a batch of 1,001 events is refused by both stores (JetStream's atomic
    batch limit is 1,000), before anything is written; 1,000 are stored."""
    assert MAX_BATCH_SIZE == 1000
    with pytest.raises(InvalidEventError, match="at most 1000"):
        await store.save_events([ev("a", v) for v in range(1, MAX_BATCH_SIZE + 2)])
    assert await store.get_latest_version("a") == 0
    await store.save_events([ev("a", v) for v in range(1, MAX_BATCH_SIZE + 1)])
    assert await store.get_latest_version("a") == MAX_BATCH_SIZE
    assert len(await store.get_events("a")) == MAX_BATCH_SIZE


@pytest.mark.parametrize("expected", [-1, MAX_VERSION + 1, True, 1.0, "0"])
async def test_bad_expected_version_is_bad_input(store: SnapshotStore, expected: object) -> None:
    with pytest.raises(InvalidEventError, match="expected_version"):
        await store.save_events([ev("a", 1)], expected_version=expected)  # type: ignore[arg-type]
    assert await store.get_events("a") == []


async def test_snapshots_never_go_backwards(store: SnapshotStore) -> None:
    await store.save_snapshot(ActorSnapshot("a", 5, {"balance": 50}))
    await store.save_snapshot(ActorSnapshot("a", 3, {"balance": 30}))
    latest = await store.get_latest_snapshot("a")
    assert latest is not None and (latest.version, latest.state) == (5, {"balance": 50})
    await store.save_snapshot(ActorSnapshot("a", 8, {"balance": 80}))
    latest = await store.get_latest_snapshot("a")
    assert latest is not None and latest.version == 8
    assert await store.get_latest_snapshot("b") is None


async def test_concurrent_snapshot_writers_keep_the_newest(store: SnapshotStore) -> None:
    versions = list(range(1, 41))
    await asyncio.gather(
        *(store.save_snapshot(ActorSnapshot("a", v, {"v": v})) for v in reversed(versions))
    )
    latest = await store.get_latest_snapshot("a")
    assert latest is not None and latest.version == 40 and latest.state == {"v": 40}


async def test_bad_snapshot_is_rejected(store: SnapshotStore) -> None:
    with pytest.raises(InvalidEventError):
        await store.save_snapshot(ActorSnapshot("", 1, {}))
    with pytest.raises(InvalidEventError):
        await store.save_snapshot(ActorSnapshot("a", 1, {"x": object()}))
    assert await store.get_latest_snapshot("a") is None


@pytest.mark.parametrize("version", [-5, 0, MAX_VERSION + 1, True, "3"])
async def test_snapshot_versions_outside_the_range_are_refused(
    store: SnapshotStore, version: object
) -> None:
    """A snapshot with version -5 was dropped silently in memory and stored by JetStream.
    Snapshot versions are 1..=2**63-1 like event versions (a snapshot summarises at least
    one event): anything else is bad input on both stores, and nothing is stored."""
    with pytest.raises(InvalidEventError, match="version"):
        await store.save_snapshot(ActorSnapshot("a", version, {"v": 1}))  # type: ignore[arg-type]
    assert await store.get_latest_snapshot("a") is None
    await store.save_snapshot(ActorSnapshot("a", 2, {"v": 2}))
    with pytest.raises(InvalidEventError, match="version"):
        await store.save_snapshot(ActorSnapshot("a", version, {"v": 1}))  # type: ignore[arg-type]
    latest = await store.get_latest_snapshot("a")
    assert latest is not None and latest.version == 2
    await store.save_snapshot(ActorSnapshot("a", MAX_VERSION, {"v": 3}))
    latest = await store.get_latest_snapshot("a")
    assert latest is not None and latest.version == MAX_VERSION


class LaterVersion(Event):
    """An Event whose version reads as given once (the encode), then as *later*: as if the
    caller changed it while the save was in flight."""

    def __init__(self, *args: Any, later: int, **kwargs: Any) -> None:
        self.__dict__["_later"] = later
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def version(self) -> int:
        self.__dict__["_reads"] += 1
        return int(self.__dict__["_version" if self.__dict__["_reads"] == 1 else "_later"])

    @version.setter
    def version(self, value: int) -> None:
        self.__dict__["_version"] = value
        self.__dict__["_reads"] = 0


@pytest.mark.parametrize("later", [0, 1, 5])
async def test_store_decides_from_the_encoded_values(store: SnapshotStore, later: int) -> None:
    """The store checks and records the version it encoded, whatever the caller's object
    says afterwards (DESIGN: a caller may mutate an Event while its save is in flight)."""
    await store.save_event(ev("a", 1))
    await store.save_event(LaterVersion("Deposited", "a", 2, {"n": 2}, later=later))
    if isinstance(store, JetStreamEventStore):
        assert store.cached_version("a") in (None, 2)
    assert [e.version for e in await store.get_events("a")] == [1, 2]
    assert await store.get_latest_version("a") == 2
    await store.save_events([LaterVersion("Deposited", "a", v, later=later) for v in (3, 4)])
    assert [e.version for e in await store.get_events("a")] == [1, 2, 3, 4]
    assert await store.get_latest_version("a") == 4


async def test_concurrent_tasks_store_each_version_once(store: SnapshotStore) -> None:
    """Many tasks race on a few actors with latest+1: no version is stored twice."""
    acknowledged: list[Event] = []

    async def writer(actor: str, n: int) -> None:
        for _ in range(n):
            while True:
                event = ev(actor, await store.get_latest_version(actor) + 1)
                try:
                    await store.save_event(event)
                except VersionConflictError:
                    continue
                acknowledged.append(event)
                break

    await asyncio.gather(*(writer(f"hot-{i % 3}", 10) for i in range(12)))
    for i in range(3):
        stored = await store.get_events(f"hot-{i}")
        assert [e.version for e in stored] == list(range(1, 41))
        assert {e.id for e in stored} == {e.id for e in acknowledged if e.actor_id == f"hot-{i}"}


async def test_a_batch_is_already_stored_only_if_every_event_of_it_is(
    store: SnapshotStore,
) -> None:
    """Re-saving a batch returns normally only when the actor's history ends with the whole
    batch; a batch whose last event happens to be the tail but whose others are not
    stored conflicts (all or none: it must never be reported stored)."""
    first, second = ev("x", 1), ev("x", 2)
    await store.save_event(first)
    await store.save_event(second)
    impostor = ev("x", 1)  # a new id for version 1, then the stored tail event
    with pytest.raises(VersionConflictError) as info:
        await store.save_events([impostor, second])
    assert info.value.current_version == 2
    batch = [ev("x", 3), ev("x", 4), ev("x", 5)]
    await store.save_events(batch)
    await store.save_events(batch)  # the same batch again: already stored
    assert [e.id for e in await store.get_events("x")] == [
        first.id,
        second.id,
        *(e.id for e in batch),
    ]
