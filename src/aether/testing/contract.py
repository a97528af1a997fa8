"""The store contract as a pytest suite: prove that a store keeps the rules of :mod:`aether.store`.

aether runs this suite against its own :class:`~aether.store.InMemoryEventStore` and
:class:`~aether.store.JetStreamEventStore`; run it against yours by subclassing one of the
two classes in a test module and overriding its ``store`` fixture::

    import pytest
    from aether.testing.contract import EventStoreContract, SnapshotStoreContract

    class TestMyStore(SnapshotStoreContract):  # EventStoreContract: no snapshots
        @pytest.fixture
        def store(self) -> MyStore:
            return MyStore()  # a new, empty store for every test

* :class:`EventStoreContract` -- what every :class:`~aether.store.EventStore` must do:
  versions, atomic batches, reads, bad input, limits, concurrency; and what both of
  aether's stores do beyond the protocol, ``subscribe(after=0, filter=None)`` (every
  actor's events in position order, catch-up then live, no gap and no duplicate; see
  :class:`~aether.store.Subscription`), which a store under test must provide too.
* :class:`SnapshotStoreContract` -- all of that, plus what a
  :class:`~aether.store.SnapshotStore` must do with snapshots.

The ``store`` fixture must give each test a new store that holds no events and no
snapshots (tests use actor ids such as ``"a"``); it may be an async fixture
(``@pytest_asyncio.fixture``, or a plain ``@pytest.fixture`` under ``asyncio_mode=auto``)
that uses other fixtures, such as ``nats_url``, and cleans up after the test.

Requirements: pytest and pytest-asyncio (aether's ``dev`` extra has them; they are not
dependencies of aether). Every test is an ``async def`` marked ``pytest.mark.asyncio``,
so the suite runs in pytest-asyncio's default strict mode as well as in auto mode.
``import aether.testing`` does not import this module (nor pytest): only
``import aether.testing.contract`` does.

The contract is aether's, exactly: a store must raise aether's exceptions
(:class:`~aether.VersionConflictError`, :class:`~aether.InvalidEventError`, with messages
naming the problem) and apply aether's limits, so that code tested against one store
behaves the same on another. :meth:`~aether.Event.to_json` applies every check of an
event's fields with the expected messages; the limits are
:data:`~aether.store.MAX_VERSION`, :data:`~aether.store.MAX_BATCH_SIZE` events per
``save_events``, and :data:`~aether.store.MAX_TOKEN_LENGTH` characters for an actor id
once encoded as a subject token (each UTF-8 byte other than ``A-Z a-z 0-9 -`` becomes
``_XX``; a longer id is refused by every call with "too long").
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple, Protocol

import pytest

from aether import ActorSnapshot, Event, InvalidEventError, VersionConflictError
from aether.bus import SubscriptionFilter
from aether.store import (
    MAX_BATCH_SIZE,
    MAX_TOKEN_LENGTH,
    MAX_VERSION,
    EventStore,
    SnapshotStore,
    Subscription,
)

if importlib.util.find_spec("pytest_asyncio") is None:  # pragma: no cover
    raise ImportError(
        "aether.testing.contract needs pytest-asyncio to run its async tests: "
        "pip install pytest pytest-asyncio"
    )

__all__ = ["EventStoreContract", "SnapshotStoreContract"]


def _ev(actor: str, version: int, **data: object) -> Event:
    return Event(event_type="Deposited", actor_id=actor, version=version, data=dict(data))


async def _versions(store: EventStore, actor: str) -> list[int]:
    return [event.version for event in await store.get_events(actor)]


#: Seconds a subscription test waits for a condition before failing: a guard against a
#: hang, not a speed requirement.
_GUARD = 60.0


class _Subscribable(EventStore, Protocol):
    """An event store with ``subscribe`` (both of aether's stores)."""

    def subscribe(
        self, *, after: int = 0, filter: SubscriptionFilter | None = None
    ) -> Subscription: ...


async def _take(sub: AsyncIterator[Event], n: int) -> list[Event]:
    """The next *n* events of *sub*."""
    events: list[Event] = []
    async with asyncio.timeout(_GUARD):
        while len(events) < n:
            events.append(await anext(sub))
    return events


async def _positions(store: EventStore, actors: list[str]) -> list[int]:
    """The positions of every stored event of *actors*, as the store's reads give them."""
    return sorted([e.position or 0 for a in actors for e in await store.get_events(a)])


async def _until(condition: Callable[[], bool]) -> None:
    """Wait until *condition* holds (checked between turns of the event loop)."""
    async with asyncio.timeout(_GUARD):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


class _Point(NamedTuple):
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


class _VersionChangedInFlight(Event):
    """An Event whose version reads as given once (the encode), then as *later*: as if the
    caller changed it while the save was in flight."""

    def __init__(self, *args: Any, later: int, **kwargs: Any) -> None:
        self.__dict__["_later"] = later
        super().__init__(*args, **kwargs)

    @property
    def version(self) -> int:
        self.__dict__["_reads"] += 1
        return int(self.__dict__["_version" if self.__dict__["_reads"] == 1 else "_later"])

    @version.setter
    def version(self, value: int) -> None:
        self.__dict__["_version"] = value
        self.__dict__["_reads"] = 0


#: Events that no store may accept, with what the InvalidEventError message must contain.
_BAD_EVENTS: list[tuple[dict[str, object], str]] = [
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
    ({"data": {"p": _Point(1, 2)}}, "not JSON"),
    ({"data": {"deep": _nested(300)}}, "JSON"),
    ({"data": _cyclic()}, "cyclic"),
    ({"id": ""}, "id"),
    ({"id": "has space"}, "id"),
    ({"id": "tab\there"}, "id"),
    ({"id": "x" * 257}, "id"),
    ({"command_id": 7}, "command_id"),
]

#: Actor ids whose subject token is longer than MAX_TOKEN_LENGTH, by test id.
_TOO_LONG_ACTOR_IDS = {
    "3000": "a" * 3000,
    "2049": "a" * (MAX_TOKEN_LENGTH + 1),
    "e-acute": "é" * 342,  # 2 bytes each, "_C3_A9": 2052 characters once encoded
    "dots": "." * 683,  # "_2E" each: 2049
}

#: Actor ids whose subject token is exactly MAX_TOKEN_LENGTH characters (or just under).
_LONGEST_ACTOR_IDS = {
    "2048": "a" * MAX_TOKEN_LENGTH,
    "e-acute": "é" * 341,  # 2046 characters once encoded
    "dots": "." * 682,  # 2046
}


def _store_not_overridden(self: object) -> EventStore:
    raise NotImplementedError(
        f"{type(self).__name__} must override the `store` fixture to return a new, empty "
        "store (see aether.testing.contract)"
    )


class EventStoreContract:
    """The contract every :class:`~aether.store.EventStore` keeps.

    Subclass it in a test module (the subclass's name must start with ``Test``) and
    override the ``store`` fixture to give each test a new store holding no events.
    """

    pytestmark = [pytest.mark.asyncio]

    #: The store under test: override this fixture in your subclass to give each test a
    #: new store holding no events (it may be async and use other fixtures).
    store: Any = pytest.fixture(_store_not_overridden, name="store")

    # -- the protocol and reads -----------------------------------------------------------

    async def test_implements_event_store(self, store: EventStore) -> None:
        """The store is an :class:`~aether.store.EventStore` (has its methods)."""
        assert isinstance(store, EventStore)

    async def test_unknown_actor_is_empty(self, store: EventStore) -> None:
        """An actor with no events has no history (``[]``, no replay errors) and
        latest version 0."""
        assert await store.get_events("nobody") == []
        assert await store.get_latest_version("nobody") == 0
        result = await store.get_events_with_errors("nobody")
        assert result.events == [] and not result.has_errors

    async def test_roundtrip_preserves_every_field(self, store: EventStore) -> None:
        """A stored event reads back equal to the one saved, every field included (data,
        command id, metadata, timestamp to the microsecond), as a new object."""
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

    async def test_read_events_carry_their_position(self, store: EventStore) -> None:
        """Every event a store returns has its ``position``: a positive int, unique in the
        store, increasing in the order events were appended across all actors (a batch's
        events in order). The saved object keeps ``position`` None, and ``position`` is
        not part of ``==``."""
        a1, b1, b2, a2 = _ev("a", 1), _ev("b", 1), _ev("b", 2), _ev("a", 2)
        await store.save_event(a1)
        await store.save_events([b1, b2])
        await store.save_event(a2)
        assert a1.position is None
        history_a = await store.get_events("a")
        history_b = [e async for e in store.iter_events("b")]
        with_errors = await store.get_events_with_errors("a")
        assert history_a == [a1, a2] and history_b == [b1, b2]
        positions = [e.position or 0 for e in (history_a[0], *history_b, history_a[1])]
        assert all(type(p) is int and p > 0 for p in positions), positions
        assert positions == sorted(set(positions)), positions
        assert [e.position for e in with_errors.events] == [e.position for e in history_a]

    async def test_from_version_filters(self, store: EventStore) -> None:
        """``get_events`` and ``iter_events`` return the events with ``version >=
        from_version``, in version order; none past the latest."""
        for v in range(1, 6):
            await store.save_event(_ev("a", v))
        assert [e.version for e in await store.get_events("a", from_version=3)] == [3, 4, 5]
        assert [e.version async for e in store.iter_events("a", from_version=5)] == [5]
        assert await store.get_events("a", from_version=6) == []

    async def test_actors_are_independent(self, store: EventStore) -> None:
        """Each actor has its own history and latest version."""
        await store.save_event(_ev("a", 1))
        await store.save_event(_ev("b", 1))
        await store.save_event(_ev("b", 2))
        assert await store.get_latest_version("a") == 1
        assert [e.actor_id for e in await store.get_events("b")] == ["b", "b"]

    async def test_mutating_a_saved_event_does_not_change_history(self, store: EventStore) -> None:
        """History is a copy: changing the saved ``Event`` object, or an event read back,
        changes nothing stored."""
        event = _ev("a", 1, items=[1])
        await store.save_event(event)
        event.data["items"].append(2)
        event.metadata["userId"] = "mallory"
        [stored] = await store.get_events("a")
        assert stored.data == {"items": [1]} and stored.metadata == {}
        stored.data["items"].append(3)
        assert (await store.get_events("a"))[0].data == {"items": [1]}

    async def test_bad_read_arguments(self, store: EventStore) -> None:
        """Reads refuse an empty actor id and a ``from_version`` that is not an int
        (``bool`` included) with InvalidEventError."""
        with pytest.raises(InvalidEventError):
            await store.get_events("")
        with pytest.raises(InvalidEventError):
            await store.get_latest_version("")
        with pytest.raises(InvalidEventError):
            await store.get_events("a", from_version="1")  # type: ignore[arg-type]
        with pytest.raises(InvalidEventError):
            await store.get_events("a", from_version=True)

    # -- the version rule -----------------------------------------------------------------

    async def test_versions_must_increase(self, store: EventStore) -> None:
        """A version not greater than the actor's latest (equal included) raises
        VersionConflictError with the actor, the attempted and the current version, and the
        message ``version conflict: actor 'a' has version 2, cannot save version N``; a
        version below 1 is bad input (InvalidEventError), not a conflict. Nothing is
        written."""
        await store.save_event(_ev("a", 1))
        await store.save_event(_ev("a", 2))
        for version in (2, 1):
            with pytest.raises(VersionConflictError) as info:
                await store.save_event(_ev("a", version))
            assert info.value.actor_id == "a"
            assert info.value.attempted_version == version
            assert info.value.current_version == 2
            assert str(info.value) == (
                f"version conflict: actor 'a' has version 2, cannot save version {version}"
            )
        for version in (0, -5):  # not a conflict: no actor can ever hold such a version
            with pytest.raises(InvalidEventError, match="version"):
                await store.save_event(_ev("a", version))
        assert await _versions(store, "a") == [1, 2]

    async def test_first_version_must_be_positive(self, store: EventStore) -> None:
        """An actor's first event needs a version >= 1: 0 and below are InvalidEventError,
        and nothing is written."""
        for version in (0, -1):
            with pytest.raises(InvalidEventError, match="version"):
                await store.save_event(_ev("a", version))
        assert await store.get_events("a") == []

    @pytest.mark.parametrize("version", [0, -1, MAX_VERSION + 1])
    async def test_versions_outside_the_range_are_bad_input(
        self, store: EventStore, version: int
    ) -> None:
        """A version outside 1..=MAX_VERSION is bad input (InvalidEventError, not
        VersionConflictError), on a new actor and on an existing one, alone or anywhere in a
        batch, and nothing is written."""
        with pytest.raises(InvalidEventError, match="version"):
            await store.save_event(_ev("a", version))
        with pytest.raises(InvalidEventError, match="version"):
            await store.save_events([_ev("a", version), _ev("a", 7)])
        with pytest.raises(InvalidEventError, match="version"):
            await store.save_events([_ev("a", 1), _ev("a", version)])
        assert await store.get_events("a") == []
        assert await store.get_latest_version("a") == 0
        await store.save_event(_ev("a", 3))
        with pytest.raises(InvalidEventError, match="version"):
            await store.save_event(_ev("a", version))
        assert await _versions(store, "a") == [3]

    async def test_the_last_version_is_storable(self, store: EventStore) -> None:
        """MAX_VERSION (2**63-1) is a valid version; after it, the actor takes no more
        events (VersionConflictError with current version MAX_VERSION)."""
        await store.save_events([_ev("a", MAX_VERSION - 1), _ev("a", MAX_VERSION)])
        assert await store.get_latest_version("a") == MAX_VERSION
        assert [e.version for e in await store.get_events("a", MAX_VERSION)] == [MAX_VERSION]
        with pytest.raises(VersionConflictError) as info:
            await store.save_event(_ev("a", MAX_VERSION))
        assert info.value.current_version == MAX_VERSION

    async def test_gaps_are_allowed(self, store: EventStore) -> None:
        """Versions need only increase: gaps are allowed, and the first may exceed 1."""
        await store.save_event(_ev("a", 3))
        await store.save_event(_ev("a", 10))
        assert await store.get_latest_version("a") == 10
        assert await _versions(store, "a") == [3, 10]

    async def test_resaving_the_latest_event_is_idempotent(self, store: EventStore) -> None:
        """Saving the actor's latest event again (same id and version: a caller retrying
        after an unknown outcome) succeeds and stores it once."""
        event = _ev("a", 1)
        await store.save_event(event)
        await store.save_event(event)  # a caller retrying after an unknown outcome
        assert await store.get_events("a") == [event]

    async def test_a_reused_event_id_is_refused(self, store: EventStore) -> None:
        """Event ids are unique in the store: a new event (another actor's, or a later
        version) with a stored event's id raises InvalidEventError "already used" and is
        not written."""
        await store.save_event(Event("Opened", "alice", 1, id="cmd-42"))
        with pytest.raises(InvalidEventError, match="already used"):
            await store.save_event(Event("Opened", "bob", 1, id="cmd-42"))
        with pytest.raises(InvalidEventError, match="already used"):
            await store.save_event(Event("Renamed", "alice", 2, id="cmd-42"))
        assert await store.get_events("bob") == []
        assert await _versions(store, "alice") == [1]

    @pytest.mark.parametrize("later", [0, 1, 5])
    async def test_store_decides_from_the_encoded_values(
        self, store: EventStore, later: int
    ) -> None:
        """The store checks and records the version it encoded, whatever the caller's
        ``Event`` object says afterwards (a caller may change it while its save is in
        flight), for ``save_event`` and ``save_events`` alike."""
        await store.save_event(_ev("a", 1))
        await store.save_event(_VersionChangedInFlight("Deposited", "a", 2, {"n": 2}, later=later))
        assert await _versions(store, "a") == [1, 2]
        assert await store.get_latest_version("a") == 2
        await store.save_events(
            [_VersionChangedInFlight("Deposited", "a", v, later=later) for v in (3, 4)]
        )
        assert await _versions(store, "a") == [1, 2, 3, 4]
        assert await store.get_latest_version("a") == 4

    async def test_concurrent_tasks_store_each_version_once(self, store: EventStore) -> None:
        """Tasks racing on a few actors, each saving latest+1 and retrying on conflict:
        every version is stored exactly once, and exactly the acknowledged events are
        stored."""
        acknowledged: list[Event] = []

        async def writer(actor: str, n: int) -> None:
            for _ in range(n):
                while True:
                    event = _ev(actor, await store.get_latest_version(actor) + 1)
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
            assert {e.id for e in stored} == {
                e.id for e in acknowledged if e.actor_id == f"hot-{i}"
            }

    # -- bad input ------------------------------------------------------------------------

    @pytest.mark.parametrize(("change", "message"), _BAD_EVENTS)
    async def test_bad_input_raises_and_writes_nothing(
        self, store: EventStore, change: dict[str, object], message: str
    ) -> None:
        """An event that is not valid (empty or non-str actor id or type, a version that
        is not an int in 1..=MAX_VERSION, data that JSON cannot hold, a naive or
        out-of-range timestamp, a bad id, command id or metadata, a too-long actor id)
        raises InvalidEventError whose message names the problem; nothing is written."""
        event = _ev("a", 1)
        for key, value in change.items():
            setattr(event, key, value)
        with pytest.raises(InvalidEventError, match=message):
            await store.save_event(event)
        assert await store.get_events("a") == []
        assert await store.get_latest_version("a") == 0

    @pytest.mark.parametrize(
        "actor", list(_TOO_LONG_ACTOR_IDS.values()), ids=list(_TOO_LONG_ACTOR_IDS)
    )
    async def test_too_long_actor_ids_are_refused_by_every_call(
        self, store: EventStore, actor: str
    ) -> None:
        """An actor id longer than MAX_TOKEN_LENGTH once encoded is refused with
        InvalidEventError "too long" by every save and every read (never answered with "no
        events")."""
        too_long = "too long"
        with pytest.raises(InvalidEventError, match=too_long):
            await store.save_event(_ev(actor, 1))
        with pytest.raises(InvalidEventError, match=too_long):
            await store.save_events([_ev(actor, 1), _ev(actor, 2)])
        with pytest.raises(InvalidEventError, match=too_long):
            await store.get_events(actor)
        with pytest.raises(InvalidEventError, match=too_long):
            await store.get_events_with_errors(actor)
        with pytest.raises(InvalidEventError, match=too_long):
            await anext(aiter(store.iter_events(actor)))
        with pytest.raises(InvalidEventError, match=too_long):
            await store.get_latest_version(actor)

    @pytest.mark.parametrize(
        "actor", list(_LONGEST_ACTOR_IDS.values()), ids=list(_LONGEST_ACTOR_IDS)
    )
    async def test_actor_ids_at_the_limit_are_accepted(self, store: EventStore, actor: str) -> None:
        """An actor id of MAX_TOKEN_LENGTH characters once encoded is stored and read."""
        event = _ev(actor, 1)
        await store.save_event(event)
        assert await store.get_events(actor) == [event]
        assert await store.get_latest_version(actor) == 1

    # -- batches --------------------------------------------------------------------------

    async def test_save_events_is_all_or_nothing(self, store: EventStore) -> None:
        """``save_events`` stores a batch whole; a batch whose first version conflicts
        raises VersionConflictError and writes none of it."""
        await store.save_events([_ev("a", 1), _ev("a", 2), _ev("a", 3)])
        assert await _versions(store, "a") == [1, 2, 3]
        # The first event conflicts: none of the batch is written.
        with pytest.raises(VersionConflictError) as info:
            await store.save_events([_ev("a", 3), _ev("a", 4)])
        assert info.value.current_version == 3
        assert await store.get_latest_version("a") == 3

    async def test_save_events_expected_version(self, store: EventStore) -> None:
        """With ``expected_version``, the actor's latest version must equal it, else
        VersionConflictError (with the current version) and nothing is written."""
        await store.save_events([_ev("a", 1)], expected_version=0)
        with pytest.raises(VersionConflictError) as info:
            await store.save_events([_ev("a", 5), _ev("a", 6)], expected_version=0)
        assert info.value.current_version == 1
        await store.save_events([_ev("a", 2), _ev("a", 3)], expected_version=1)
        assert await _versions(store, "a") == [1, 2, 3]

    @pytest.mark.parametrize(
        "batch",
        [
            [],
            [_ev("a", 1), _ev("b", 2)],
            [_ev("a", 2), _ev("a", 1)],
            [_ev("a", 1), _ev("a", 1)],
            [_ev("a", 1), _ev("a", 2, bad={1, 2})],
        ],
        ids=["empty", "two-actors", "decreasing", "repeated", "bad-data"],
    )
    async def test_save_events_rejects_bad_batches(
        self, store: EventStore, batch: list[Event]
    ) -> None:
        """A batch must hold at least one valid event, all of one actor, with strictly
        increasing versions; otherwise InvalidEventError and none of it is written."""
        with pytest.raises(InvalidEventError):
            await store.save_events(batch)
        assert await store.get_events("a") == []

    async def test_malformed_batch_keeps_earlier_history(self, store: EventStore) -> None:
        """A batch with one bad event writes none of its events (not even the valid ones
        before it) and leaves the earlier history as it was."""
        await store.save_event(_ev("a", 1))
        with pytest.raises(InvalidEventError):
            await store.save_events([_ev("a", 2), _ev("a", 3, bad=float("inf"))])
        assert await _versions(store, "a") == [1]

    async def test_batch_size_limit_is_the_same_everywhere(self, store: EventStore) -> None:
        """A batch of MAX_BATCH_SIZE (1,000: JetStream's atomic batch limit) events is
        stored; one more is refused (InvalidEventError "at most 1000") before anything is
        written."""
        assert MAX_BATCH_SIZE == 1000
        with pytest.raises(InvalidEventError, match="at most 1000"):
            await store.save_events([_ev("a", v) for v in range(1, MAX_BATCH_SIZE + 2)])
        assert await store.get_latest_version("a") == 0
        await store.save_events([_ev("a", v) for v in range(1, MAX_BATCH_SIZE + 1)])
        assert await store.get_latest_version("a") == MAX_BATCH_SIZE
        assert len(await store.get_events("a")) == MAX_BATCH_SIZE

    @pytest.mark.parametrize("expected", [-1, MAX_VERSION + 1, True, 1.0, "0"])
    async def test_bad_expected_version_is_bad_input(
        self, store: EventStore, expected: object
    ) -> None:
        """``expected_version`` is None or an int in 0..=MAX_VERSION; anything else is
        InvalidEventError naming it, and nothing is written."""
        with pytest.raises(InvalidEventError, match="expected_version"):
            await store.save_events([_ev("a", 1)], expected_version=expected)  # type: ignore[arg-type]
        assert await store.get_events("a") == []

    async def test_a_batch_is_already_stored_only_if_every_event_of_it_is(
        self, store: EventStore
    ) -> None:
        """Re-saving a batch returns normally only when the actor's history ends with the
        whole batch (same ids and versions); a batch whose last event is the stored tail
        but whose others are not stored conflicts: it is never reported stored."""
        first, second = _ev("x", 1), _ev("x", 2)
        await store.save_event(first)
        await store.save_event(second)
        impostor = _ev("x", 1)  # a new id for version 1, then the stored tail event
        with pytest.raises(VersionConflictError) as info:
            await store.save_events([impostor, second])
        assert info.value.current_version == 2
        batch = [_ev("x", 3), _ev("x", 4), _ev("x", 5)]
        await store.save_events(batch)
        await store.save_events(batch)  # the same batch again: already stored
        assert [e.id for e in await store.get_events("x")] == [
            first.id,
            second.id,
            *(e.id for e in batch),
        ]

    # -- subscriptions --------------------------------------------------------------------
    # ``store.subscribe(after=0, filter=None)``: every actor's events in position order,
    # catch-up then live. Each wait below is guarded (_GUARD seconds) only against a hang.

    async def test_subscribe_catches_up_then_goes_live(self, store: _Subscribable) -> None:
        """A subscription yields the events stored before it, in the order they were
        appended across actors (a batch's events in order), each with the position the
        store's reads give it; then, with no gap and no duplicate, the events appended
        after it caught up. ``caught_up`` is True once the backlog was read."""
        a1, b1, b2, a2 = _ev("a", 1), _ev("b", 1), _ev("b", 2), _ev("a", 2)
        await store.save_event(a1)
        await store.save_events([b1, b2])
        await store.save_event(a2)
        truth = await _positions(store, ["a", "b"])
        async with store.subscribe() as sub:
            assert sub.position == 0 and not sub.caught_up
            backlog = await _take(sub, 4)
            assert backlog == [a1, b1, b2, a2]
            assert [e.position for e in backlog] == truth
            assert sub.caught_up and sub.position == truth[-1]
            c1, a3 = _ev("c", 1), _ev("a", 3)
            await store.save_event(c1)
            await store.save_event(a3)
            live = await _take(sub, 2)
            assert live == [c1, a3]
            positions = [e.position or 0 for e in (*backlog, *live)]
            assert positions == sorted(set(positions))
            assert positions == await _positions(store, ["a", "b", "c"])
            stats = sub.stats
            assert (stats.delivered, stats.filtered_out, stats.malformed) == (6, 0, 0)
            assert stats.position == positions[-1] and stats.caught_up

    async def test_subscribe_across_concurrent_writers_has_no_gap_and_no_duplicate(
        self, store: _Subscribable
    ) -> None:
        """Writer tasks append to several actors (single events and batches) before,
        while and after a subscription starts: the subscription yields exactly the
        store's events, each once, in position order, and each batch's events next to
        each other in version order."""
        writers, per_writer = 4, 24
        progress = [0] * writers
        started = asyncio.Event()
        batches: list[list[str]] = []

        async def write(w: int) -> None:
            actor, version = f"w-{w}", 0
            while version < per_writer:
                if version % 5 == 2:  # every few events a batch of three
                    batch = [_ev(actor, version + i) for i in (1, 2, 3)]
                    await store.save_events(batch)
                    batches.append([e.id for e in batch])
                    version += 3
                else:
                    version += 1
                    await store.save_event(_ev(actor, version))
                progress[w] = version
                if sum(progress) >= writers * per_writer // 3:
                    started.set()  # a third is stored: time to subscribe
                await asyncio.sleep(0)  # let the others and the subscriber run

        actors = [f"w-{w}" for w in range(writers)]
        async with store.subscribe() as sub:
            tasks = [asyncio.create_task(write(w)) for w in range(writers)]
            try:
                async with asyncio.timeout(_GUARD):
                    await started.wait()
                    received = await _take(sub, 5)  # the subscription starts mid-way
                    await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
            total = sum([len(await store.get_events(a)) for a in actors])
            assert total >= writers * per_writer
            received += await _take(sub, total - len(received))
            truth = await _positions(store, actors)
            assert [e.position for e in received] == truth
            stored = [e for a in actors for e in await store.get_events(a)]
            stored.sort(key=lambda e: e.position or 0)
            assert [e.id for e in received] == [e.id for e in stored]
            assert sub.caught_up and sub.stats.delivered == total
        order = [e.id for e in received]
        for batch in batches:
            first = order.index(batch[0])
            assert order[first : first + len(batch)] == batch

    async def test_subscribe_after_resumes_exactly_where_it_stopped(
        self, store: _Subscribable
    ) -> None:
        """``subscribe(after=p)`` yields exactly the events with position > p, whatever
        p is (0, any event's position, the last one: then it waits for the next event);
        ``position`` starts at ``after``."""
        for i in range(6):
            await store.save_event(_ev(f"r-{i % 3}", i // 3 + 1))
        async with store.subscribe() as first:
            everything = await _take(first, 6)
        positions = [e.position or 0 for e in everything]
        for cut in (0, 1, 4, 6):
            after = positions[cut - 1] if cut else 0
            async with store.subscribe(after=after) as sub:
                assert sub.position == after and sub.after == after
                rest = await _take(sub, 6 - cut)
                assert [e.id for e in rest] == [e.id for e in everything[cut:]]
                if cut == 6:  # at the end: the next event is the next appended, nothing older
                    newer = _ev("r-0", 3)
                    await store.save_event(newer)
                    assert await _take(sub, 1) == [newer]

    async def test_subscribe_filter_skips_but_advances(self, store: _Subscribable) -> None:
        """With a :class:`~aether.bus.SubscriptionFilter` only the events it passes are
        yielded (same order, same positions); the others are counted as filtered out and
        advance ``position`` even while no passing event comes, so resuming from
        ``position`` never repeats them. A task waiting in ``__anext__`` may be cancelled:
        the subscription goes on."""
        wanted = SubscriptionFilter(event_types={"Deposited"}, actor_pattern="order-*")
        events = [
            Event("Opened", "order-1", 1),
            Event("Deposited", "order-1", 2),
            Event("Deposited", "customer-1", 1),
            Event("Deposited", "order-2", 1),
            Event("Withdrawn", "order-2", 2),
        ]
        for event in events:
            await store.save_event(event)
        async with store.subscribe(filter=wanted) as sub:
            assert sub.filter == wanted
            passed = await _take(sub, 2)
            assert passed == [events[1], events[3]]
            read = await _positions(store, ["order-1", "customer-1", "order-2"])
            assert [e.position for e in passed] == [read[1], read[3]]
            # The last event is refused: position reaches it while the iterator waits.
            waiting = asyncio.ensure_future(anext(sub))
            await _until(lambda: sub.position == read[4])
            assert not waiting.done()
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            late = Event("Deposited", "order-3", 2)
            await store.save_event(Event("Opened", "order-3", 1))
            await store.save_event(late)
            assert await _take(sub, 1) == [late]
            stats = sub.stats
            assert (stats.delivered, stats.filtered_out) == (3, 4)

    async def test_subscribe_caught_up_and_lag(self, store: _Subscribable) -> None:
        """``caught_up`` turns True once the events stored at the start were read (at
        once on an empty store, while the iterator waits); ``stats.lag`` counts the events
        stored after ``position`` (None before the first read; exact while nothing is
        appended)."""
        async with store.subscribe() as empty:
            assert empty.stats.lag is None
            waiting = asyncio.ensure_future(anext(empty))
            await _until(lambda: empty.caught_up)
            assert empty.stats.lag == 0 and not waiting.done()
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        for v in range(1, 4):
            await store.save_event(_ev("lag", v))
        async with store.subscribe() as sub:
            [first] = await _take(sub, 1)
            assert first.version == 1 and not sub.caught_up
            assert sub.stats.lag == 2
            await _take(sub, 2)
            assert sub.caught_up and sub.stats.lag == 0
            await store.save_event(_ev("lag", 4))  # caught_up stays True
            assert sub.caught_up
            assert [e.version for e in await _take(sub, 1)] == [4]

    async def test_subscribe_close_ends_the_iteration(self, store: _Subscribable) -> None:
        """``close()`` ends a loop waiting for events (it simply stops), is idempotent,
        and every later ``__anext__`` raises StopAsyncIteration; leaving ``async with``
        closes; a subscription closed before it was read yields nothing."""
        await store.save_event(_ev("c", 1))
        sub = store.subscribe()
        received: list[Event] = []

        async def consume() -> None:
            async for event in sub:
                received.append(event)

        consumer = asyncio.ensure_future(consume())
        await _until(lambda: len(received) == 1 and sub.caught_up)
        assert not consumer.done()
        await sub.close()
        async with asyncio.timeout(_GUARD):
            await consumer  # the loop ended without an error
        assert sub.closed
        await sub.close()  # idempotent
        with pytest.raises(StopAsyncIteration):
            await anext(sub)
        await store.save_event(_ev("c", 2))
        with pytest.raises(StopAsyncIteration):
            await anext(sub)
        async with store.subscribe() as scoped:
            assert [e.version for e in await _take(scoped, 2)] == [1, 2]
        assert scoped.closed
        unread = store.subscribe()
        await unread.close()
        with pytest.raises(StopAsyncIteration):
            await anext(unread)

    async def test_subscriptions_are_independent(self, store: _Subscribable) -> None:
        """Several subscriptions read the same events independently, each its own copy;
        closing one does not affect the others."""
        await store.save_event(_ev("i", 1, items=[1]))
        one, two = store.subscribe(), store.subscribe()
        async with one, two:
            [mine] = await _take(one, 1)
            mine.data["items"].append(2)
            await one.close()
            [theirs] = await _take(two, 1)
            assert theirs.data == {"items": [1]}
            await store.save_event(_ev("i", 2))
            assert [e.version for e in await _take(two, 1)] == [2]

    @pytest.mark.parametrize("after", [-1, True, "3", 1.0, None, 2**63])
    async def test_subscribe_bad_arguments(self, store: _Subscribable, after: object) -> None:
        """``after`` must be an int position >= 0 (bool refused) and ``filter`` a
        SubscriptionFilter or None: InvalidEventError (a ValueError and TypeError) at the
        call, before anything is read."""
        with pytest.raises(InvalidEventError, match="after"):
            store.subscribe(after=after)  # type: ignore[arg-type]
        with pytest.raises(InvalidEventError, match="filter"):
            store.subscribe(filter="order-*")  # type: ignore[arg-type]


class SnapshotStoreContract(EventStoreContract):
    """The contract of a :class:`~aether.store.SnapshotStore`: all of
    :class:`EventStoreContract`, plus snapshots.

    Subclass it in a test module (the subclass's name must start with ``Test``) and
    override the ``store`` fixture to give each test a new store holding no events and no
    snapshots.
    """

    async def test_implements_snapshot_store(self, store: SnapshotStore) -> None:
        """The store is a :class:`~aether.store.SnapshotStore` (has its methods)."""
        assert isinstance(store, SnapshotStore)

    async def test_unknown_actor_has_no_snapshot(self, store: SnapshotStore) -> None:
        """An actor with no snapshot: ``get_latest_snapshot`` returns None."""
        assert await store.get_latest_snapshot("nobody") is None

    async def test_bad_snapshot_read_arguments(self, store: SnapshotStore) -> None:
        """``get_latest_snapshot`` refuses an empty actor id with InvalidEventError."""
        with pytest.raises(InvalidEventError):
            await store.get_latest_snapshot("")

    @pytest.mark.parametrize(
        "actor", list(_TOO_LONG_ACTOR_IDS.values()), ids=list(_TOO_LONG_ACTOR_IDS)
    )
    async def test_too_long_actor_ids_are_refused_by_snapshots(
        self, store: SnapshotStore, actor: str
    ) -> None:
        """An actor id longer than MAX_TOKEN_LENGTH once encoded is refused with
        InvalidEventError "too long" by ``save_snapshot`` and ``get_latest_snapshot``."""
        with pytest.raises(InvalidEventError, match="too long"):
            await store.save_snapshot(ActorSnapshot(actor, 1, {}))
        with pytest.raises(InvalidEventError, match="too long"):
            await store.get_latest_snapshot(actor)

    @pytest.mark.parametrize(
        "actor", list(_LONGEST_ACTOR_IDS.values()), ids=list(_LONGEST_ACTOR_IDS)
    )
    async def test_snapshots_of_actor_ids_at_the_limit_are_accepted(
        self, store: SnapshotStore, actor: str
    ) -> None:
        """A snapshot of an actor id of MAX_TOKEN_LENGTH characters once encoded is stored
        and read."""
        await store.save_snapshot(ActorSnapshot(actor, 1, {"n": 1}))
        snapshot = await store.get_latest_snapshot(actor)
        assert snapshot is not None and snapshot.actor_id == actor

    async def test_snapshots_never_go_backwards(self, store: SnapshotStore) -> None:
        """``get_latest_snapshot`` returns the newest snapshot saved: an older one never
        replaces a newer one; each actor has its own."""
        await store.save_snapshot(ActorSnapshot("a", 5, {"balance": 50}))
        await store.save_snapshot(ActorSnapshot("a", 3, {"balance": 30}))
        latest = await store.get_latest_snapshot("a")
        assert latest is not None and (latest.version, latest.state) == (5, {"balance": 50})
        await store.save_snapshot(ActorSnapshot("a", 8, {"balance": 80}))
        latest = await store.get_latest_snapshot("a")
        assert latest is not None and latest.version == 8
        assert await store.get_latest_snapshot("b") is None

    async def test_concurrent_snapshot_writers_keep_the_newest(self, store: SnapshotStore) -> None:
        """Snapshots saved concurrently, in any order: the newest one wins."""
        versions = list(range(1, 41))
        await asyncio.gather(
            *(store.save_snapshot(ActorSnapshot("a", v, {"v": v})) for v in reversed(versions))
        )
        latest = await store.get_latest_snapshot("a")
        assert latest is not None and latest.version == 40 and latest.state == {"v": 40}

    async def test_bad_snapshot_is_rejected(self, store: SnapshotStore) -> None:
        """A snapshot with an empty actor id or a state JSON cannot hold raises
        InvalidEventError and is not stored."""
        with pytest.raises(InvalidEventError):
            await store.save_snapshot(ActorSnapshot("", 1, {}))
        with pytest.raises(InvalidEventError):
            await store.save_snapshot(ActorSnapshot("a", 1, {"x": object()}))
        assert await store.get_latest_snapshot("a") is None

    @pytest.mark.parametrize("version", [-5, 0, MAX_VERSION + 1, True, "3"])
    async def test_snapshot_versions_outside_the_range_are_refused(
        self, store: SnapshotStore, version: object
    ) -> None:
        """Snapshot versions are ints in 1..=MAX_VERSION like event versions (a snapshot
        summarises at least one event): anything else is InvalidEventError naming the
        version, and nothing is stored; MAX_VERSION itself is stored."""
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
