"""A differential, stateful property test of the store contract.

A hypothesis ``RuleBasedStateMachine`` runs random sequences of operations against the
real stores and against the pure-Python model in ``tests/_model.py`` (the contract of
DESIGN.md "Store semantics", written to be obviously right), and after every step
compares each outcome (return, ``VersionConflictError`` with its ``current_version``,
``InvalidEventError``) and every actor's stored history, read back.

Two machines, because the in-memory store cannot follow an operator:

- ``ApiMachine``: ``InMemoryEventStore`` and two ``JetStreamEventStore`` s (each on its
  own NATS connection, so each with its own version cache) on one fresh stream. Each
  write runs on the memory store and on one of the JetStream stores (both must agree
  with the model); the JetStream stores share the stream, so one store's cache goes
  stale whenever the other writes. Only API operations.
- ``OperatorMachine``: the two JetStream stores, the same API operations, plus what an
  operator or a foreign writer does to the stream through a separate admin connection:
  purge an actor's subject, delete the stream (and maybe the snapshot stream) and
  recreate it, publish foreign messages (malformed JSON; an event whose version is
  2**63, -7, true or 0; an event of another actor; a well-formed event above the
  latest). The memory store has no such operations, so it is left out rather than
  compared only up to the first operator action (which random rule choice makes early).

Strategies are biased towards the shapes where a version cache can lie: few actors,
versions drawn around the model's latest version *and* around what the writing store's
cache holds (``cached_version`` + 1, i.e. an application with a stale view), re-saves of
earlier Event objects (the actor's tail or any older one), ids reused from older events
(also at the last position of a batch), and a save whose Event is mutated while in
flight (the outcome and history must reflect the event as it was when the save began).

The operator's "delete and recreate" may *refill* the new stream: a third writer appends
as many events on each subject as there were, in the same order, with higher versions
and new ids, so that every stream sequence a cache remembers points at a message again
(the shape "stream recreated, others wrote, the same actor's tail is at the cached
sequence again" is otherwise too rare for random search).

Choices made where the contract leaves room (see ``tests/_model.py`` for the rules):

- Retry detection for a batch: ``save_events`` returns normally iff the actor's newest
  ``len(batch)`` valid events are the batch's (id, version)s. Comparing only the last
  event would call "stored" a refused batch whose last event was later saved alone.
- A foreign *valid* event is published with ``Nats-Msg-Id`` = its id (as Go Aether does),
  so its id counts as taken; foreign invalid messages carry ids that are never reused
  (whether such an id is "taken" is left open).
- Snapshot versions are drawn >= 1 (a snapshot of version 0 is bad input).
- nats-server keeps its duplicate-window entries after a purge (checked on 2.15), so the
  model's "a purged event is no longer stored, saving it again stores it" cannot rely on
  the server's Nats-Msg-Id de-duplication.

Mutation in flight: the save runs as its own task and the Event is changed after 1-3
loop ticks, i.e. after the save has started.

``cached_version`` is only observed (an int or None) and used to steer the strategies,
never compared with anything. The deterministic regression tests at the end pin the
known fault shapes so that each is checked on every run, whatever hypothesis draws.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, ClassVar

import nats
import nats.js.errors
import orjson
import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from nats.aio.client import Client

from aether import ActorSnapshot, Event, InvalidEventError, VersionConflictError
from aether.store import InMemoryEventStore, JetStreamConfig, JetStreamEventStore

from ._model import (
    INVALID,
    MAX_VERSION,
    OK,
    Key,
    Outcome,
    StoreModel,
    key_of,
)
from ._stores import StoreFactory, ev, unique, versions

# Few actors, so that collisions are frequent; one needs its id encoded into the subject.
ACTORS = ("a", "b", "c.1")
# In-memory streams (faster); a short retry deadline turns an unexpected hang into an error.
CONFIG = JetStreamConfig(storage="memory", retry_deadline=timedelta(seconds=10))
HANG_GUARD = 60.0

actor_ids = st.sampled_from(ACTORS)
js_stores = st.sampled_from(["s1", "s2"])

# "next" first: hypothesis shrinks towards the first choice.
VERSION_KINDS = ["next", "cached_next", "equal", "lower", "gap", "one", "cached"]


async def outcome(call: Awaitable[Any]) -> Outcome:
    """What a write did: ok, conflict(current_version), invalid, or any other exception."""
    try:
        await asyncio.wait_for(call, HANG_GUARD)
    except VersionConflictError as exc:
        return ("conflict", exc.current_version)
    except InvalidEventError:
        return INVALID
    except Exception as exc:  # reported as a mismatch with the model
        return ("raised", f"{type(exc).__name__}: {exc}")
    return OK


def show(event: Event) -> str:
    return f"{event.actor_id!r} v{event.version!r} id={event.id!r}"


def show_batch(events: list[Event], expected_version: Any) -> str:
    shown = ", ".join(show(e) for e in events)
    return f"save_events([{shown}], expected_version={expected_version!r})"


class StoreMachine(RuleBasedStateMachine):
    """The rules shared by both machines (API operations only)."""

    url: ClassVar[str] = ""
    WITH_MEMORY: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.model = StoreModel()
        self.memory = InMemoryEventStore() if self.WITH_MEMORY else None
        self.clients: list[Client] = []
        self.counter = itertools.count(1)
        self.sent: list[Event] = []  # a copy of every event given to a save, as sent
        self.by_key: dict[tuple[str, int, str], Event] = {}  # (actor, version, id) -> copy
        self.batches: list[tuple[list[Event], int | None]] = []
        self.ids: list[str] = []  # ids of events written or attempted (reuse pool)
        self.dirty = True  # something was written since the histories were last compared
        self.name = unique("model")
        self.s1, self.s2 = self.runner.run(self._open())
        self.stream = self.s1.stream_name

    async def _open(self) -> tuple[JetStreamEventStore, JetStreamEventStore]:
        stores = []
        for _ in range(2):
            client = await nats.connect(self.url)
            self.clients.append(client)
            stores.append(await JetStreamEventStore.open(client, self.name, CONFIG))
        self.admin = await nats.connect(self.url)
        self.clients.append(self.admin)
        return stores[0], stores[1]

    def teardown(self) -> None:
        async def close() -> None:
            js = self.admin.jetstream()
            for stream in (self.stream, f"{self.stream}_snapshots"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream)
            for client in self.clients:
                await client.close()

        try:
            self.runner.run(close())
        finally:
            self.runner.close()

    # -- helpers --------------------------------------------------------------------------

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.runner.run(asyncio.wait_for(coro, HANG_GUARD))

    def js(self, via: str) -> JetStreamEventStore:
        return self.s1 if via == "s1" else self.s2

    def readers(self, data: st.DataObject) -> tuple[str, Any]:
        names = ["s1", "s2"] + (["memory"] if self.memory is not None else [])
        via = data.draw(st.sampled_from(names), label="via")
        return via, self.memory if via == "memory" else self.js(via)

    def writers(self, via: str) -> list[tuple[str, Any]]:
        pairs: list[tuple[str, Any]] = [(via, self.js(via))]
        if self.memory is not None:
            pairs.insert(0, ("memory", self.memory))
        return pairs

    def fresh_id(self) -> str:
        return f"id{next(self.counter)}"

    def draw_id(self, data: st.DataObject, label: str, avoid: list[str] | None = None) -> str:
        pool = [i for i in self.ids if i not in (avoid or [])]
        if pool:
            reuse = data.draw(st.booleans(), label=f"{label}: reuse an older id")
            if reuse:
                return data.draw(st.sampled_from(pool), label=label)
        return self.fresh_id()

    def draw_version(self, data: st.DataObject, actor: str, store: JetStreamEventStore) -> int:
        latest = self.model.latest(actor)
        cached = store.cached_version(actor)
        if type(cached) is not int or not 0 <= cached < MAX_VERSION:
            cached = latest
        kind = data.draw(st.sampled_from(VERSION_KINDS), label="version kind")
        if kind == "next":
            return latest + 1
        if kind == "cached_next":  # an application whose view is the store's cache
            return cached + 1
        if kind == "cached":
            return max(cached, 1)
        if kind == "equal":
            return max(latest, 1)
        if kind == "lower":
            return data.draw(st.integers(1, max(latest, 1)), label="lower version")
        if kind == "gap":
            return latest + data.draw(st.integers(2, 120), label="gap")
        return 1

    def new_event(self, actor: str, version: Any, event_id: str) -> Event:
        return Event("Saved", actor, version, {"n": next(self.counter)}, id=event_id)

    def remember(self, events: list[Event]) -> None:
        for event in events:
            copy = dataclasses.replace(event, data=dict(event.data))
            self.sent.append(copy)
            if type(event.version) is int and type(event.actor_id) is str:
                self.by_key.setdefault((event.actor_id, event.version, event.id), copy)
            if type(event.id) is str and event.id not in self.ids:
                self.ids.append(event.id)

    def write(
        self, desc: str, via: str, call: Callable[[Any], Awaitable[Any]], expected: Outcome
    ) -> None:
        """Run one logical write on the memory store (if any) and on *via*."""
        note(f"{via}: {desc} -> model: {expected}")
        self.dirty = True
        for name, store in self.writers(via):
            got = self.run(outcome(call(store)))
            assert got == expected, f"{name}: {desc}: got {got}, model says {expected}"

    # -- writes ---------------------------------------------------------------------------

    @rule(data=st.data())
    def save_event(self, data: st.DataObject) -> None:
        actor = data.draw(actor_ids, label="actor")
        via = data.draw(js_stores, label="via")
        version = self.draw_version(data, actor, self.js(via))
        event = self.new_event(actor, version, self.draw_id(data, "id"))
        expected = self.model.save_event(event)
        self.remember([event])
        self.write(f"save_event({show(event)})", via, lambda s: s.save_event(event), expected)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def resave_event(self, data: st.DataObject) -> None:
        """Save an earlier Event again, exactly: an actor's tail, the last one sent, any."""
        how = data.draw(st.sampled_from(["tail", "last_sent", "any"]), label="which")
        event = None
        if how == "tail":
            tail = self.model.tail(data.draw(actor_ids, label="actor"))
            if tail is not None:
                event = self.by_key.get((tail[1], tail[2], tail[3]))
        elif how == "last_sent":
            event = self.sent[-1]
        if event is None:
            event = self.sent[data.draw(st.integers(0, len(self.sent) - 1), label="sent #")]
        via = data.draw(js_stores, label="via")
        expected = self.model.save_event(event)
        self.write(f"re-save_event({show(event)})", via, lambda s: s.save_event(event), expected)

    @rule(data=st.data())
    def save_events(self, data: st.DataObject) -> None:
        actor = data.draw(actor_ids, label="actor")
        via = data.draw(js_stores, label="via")
        store = self.js(via)
        size = data.draw(st.integers(1, 4), label="size")
        versions = [self.draw_version(data, actor, store)]
        for _ in range(size - 1):
            versions.append(versions[-1] + data.draw(st.integers(1, 3), label="step"))
        ids: list[str] = []
        for i in range(size):
            ids.append(self.draw_id(data, f"id {i}", avoid=ids))
        events = [self.new_event(actor, v, i) for v, i in zip(versions, ids, strict=True)]
        expected_version = self.draw_expected(data, actor, store)
        self.batch(events, expected_version, via)

    def draw_expected(self, data: st.DataObject, actor: str, store: JetStreamEventStore) -> Any:
        latest = self.model.latest(actor)
        kind = data.draw(
            st.sampled_from(["none", "right", "cached", "wrong"]), label="expected_version"
        )
        if kind == "right":
            return latest
        if kind == "cached":
            cached = store.cached_version(actor)
            return cached if type(cached) is int and cached >= 0 else latest
        if kind == "wrong":
            return data.draw(
                st.sampled_from([latest + 1, max(latest - 1, 0), latest + 7]), label="wrong"
            )
        return None

    def batch(self, events: list[Event], expected_version: Any, via: str) -> None:
        expected = self.model.save_events(events, expected_version)
        self.remember(events)
        self.batches.append((list(events), expected_version))
        desc = show_batch(events, expected_version)
        self.write(
            desc, via, lambda s: s.save_events(events, expected_version=expected_version), expected
        )

    @precondition(lambda self: self.batches)
    @rule(data=st.data())
    def resave_batch(self, data: st.DataObject) -> None:
        """A caller retrying an earlier save_events exactly."""
        which = data.draw(st.integers(0, len(self.batches) - 1), label="batch #")
        events, expected_version = self.batches[which]
        self.batch(events, expected_version, data.draw(js_stores, label="via"))

    @rule(data=st.data())
    def save_bad_input(self, data: st.DataObject) -> None:
        """Invalid input: InvalidEventError from both stores, nothing written."""
        actor = data.draw(actor_ids, label="actor")
        via = data.draw(js_stores, label="via")
        latest = self.model.latest(actor)
        kind = data.draw(
            st.sampled_from(
                [
                    "version 0",
                    "version -1",
                    "version True",
                    "version '2'",
                    "version 2**63",
                    "empty actor",
                    "batch starting at 0",
                    "batch not increasing",
                    "batch with one id twice",
                    "batch of two actors",
                    "empty batch",
                    "expected_version -1",
                    "expected_version True",
                ]
            ),
            label="bad input",
        )
        version: Any = {
            "version 0": 0,
            "version -1": -1,
            "version True": True,
            "version '2'": str(latest + 1),
            "version 2**63": 2**63,
        }.get(kind, latest + 1)
        if not kind.startswith(("batch", "empty batch", "expected")):
            event = self.new_event("" if kind == "empty actor" else actor, version, self.fresh_id())
            expected = self.model.save_event(event)
            assert expected == INVALID
            self.write(f"save_event({show(event)})", via, lambda s: s.save_event(event), expected)
            return
        first, second = latest + 1, latest + 2
        other = actor
        if kind == "batch starting at 0":
            first, second = 0, 1
        elif kind == "batch not increasing":
            second = first
        elif kind == "batch of two actors":
            other = next(a for a in ACTORS if a != actor)
        events = [
            self.new_event(actor, first, self.fresh_id()),
            self.new_event(other, second, self.fresh_id()),
        ]
        if kind == "batch with one id twice":
            events[1].id = events[0].id
        if kind == "empty batch":
            events = []
        expected_version: Any = {"expected_version -1": -1, "expected_version True": True}.get(kind)
        expected = self.model.save_events(events, expected_version)
        assert expected == INVALID
        desc = show_batch(events, expected_version)
        self.write(
            desc, via, lambda s: s.save_events(events, expected_version=expected_version), expected
        )

    @rule(data=st.data())
    def save_event_mutated_in_flight(self, data: st.DataObject) -> None:
        """The caller changes ``event.version`` while its save is in flight: the outcome and
        the history must be those of the event as it was when the save began."""
        actor = data.draw(actor_ids, label="actor")
        via = data.draw(js_stores, label="via")
        version = self.draw_version(data, actor, self.js(via))
        event = self.new_event(actor, version, self.draw_id(data, "id"))
        later = data.draw(
            st.sampled_from([1, version - 1, version + 1, version + 100, 0]), label="mutated to"
        )
        ticks = data.draw(st.integers(1, 3), label="loop ticks before the mutation")
        expected = self.model.save_event(event)
        self.remember([event])
        note(f"{via}: save_event({show(event)}), v -> {later} after {ticks} ticks")
        note(f"  -> model: {expected}")
        self.dirty = True
        for name, store in self.writers(via):
            mine = dataclasses.replace(event, data=dict(event.data))
            got = self.run(self._mutating(store, mine, later, ticks))
            assert got == expected, (
                f"{name}: save_event({show(event)}) mutated to v{later} in flight: "
                f"got {got}, model says {expected}"
            )

    @staticmethod
    async def _mutating(store: Any, event: Event, version: int, ticks: int) -> Outcome:
        # The save starts running at the first tick (a task of its own, not wrapped).
        task = asyncio.ensure_future(store.save_event(event))
        for _ in range(ticks):
            await asyncio.sleep(0)
        event.version = version
        return await outcome(task)

    # -- reads ----------------------------------------------------------------------------

    @rule(data=st.data())
    def get_events(self, data: st.DataObject) -> None:
        """A replay (get_events, iter_events or get_events_with_errors' events), from a
        version around the latest or just after the stored snapshot (a replay after a
        snapshot may start at a stream sequence the store remembered)."""
        actor = data.draw(actor_ids, label="actor")
        via, store = self.readers(data)
        latest = self.model.latest(actor)
        snapshot = self.model.snapshots.get(actor, (0, {}))[0]
        from_version: Any = data.draw(
            st.sampled_from([0, 1, latest, latest + 1, snapshot + 1, -3, 2, "1"]),
            label="from_version",
        )
        method = data.draw(
            st.sampled_from(["get_events", "iter_events", "get_events_with_errors"]),
            label="method",
        )
        want: Any = INVALID
        if type(from_version) is int:
            want = self.model.events_from(actor, from_version)

        async def replay() -> list[Event]:
            if method == "iter_events":
                return [e async for e in store.iter_events(actor, from_version)]
            if method == "get_events_with_errors":
                return list((await store.get_events_with_errors(actor, from_version)).events)
            return list(await store.get_events(actor, from_version))

        try:
            got: Any = [key_of(e) for e in self.run(replay())]
        except InvalidEventError:
            got = INVALID
        assert got == want, (
            f"{via}: {method}({actor!r}, {from_version!r}) = {got}, model says {want}"
        )

    @rule(data=st.data())
    def get_latest_version(self, data: st.DataObject) -> None:
        actor = data.draw(actor_ids, label="actor")
        via, store = self.readers(data)
        got = self.run(store.get_latest_version(actor))
        want = self.model.latest(actor)
        assert got == want, f"{via}: get_latest_version({actor!r}) = {got}, model says {want}"

    # -- snapshots ------------------------------------------------------------------------

    @rule(data=st.data())
    def save_snapshot(self, data: st.DataObject) -> None:
        actor = data.draw(actor_ids, label="actor")
        via = data.draw(js_stores, label="via")
        stored = self.model.snapshots.get(actor, (0, {}))[0]
        version = data.draw(
            st.sampled_from([stored + 1, max(stored, 1), max(stored - 1, 1), stored + 5]),
            label="version",
        )
        state = {"n": next(self.counter)}
        expected = self.model.save_snapshot(actor, version, state)
        snapshot = ActorSnapshot(actor, version, state)
        self.write(
            f"save_snapshot({actor!r} v{version} {state})",
            via,
            lambda s: s.save_snapshot(snapshot),
            expected,
        )

    @rule(data=st.data())
    def get_latest_snapshot(self, data: st.DataObject) -> None:
        actor = data.draw(actor_ids, label="actor")
        via, store = self.readers(data)
        snapshot = self.run(store.get_latest_snapshot(actor))
        got = None if snapshot is None else (snapshot.actor_id, snapshot.version, snapshot.state)
        stored = self.model.snapshots.get(actor)
        want = None if stored is None else (actor, *stored)
        assert got == want, f"{via}: get_latest_snapshot({actor!r}) = {got}, model says {want}"

    # -- after every step -----------------------------------------------------------------

    @invariant()
    def histories_match_the_model(self) -> None:
        """Every actor's history, read back (get_events does not touch the cache), after
        every step that wrote something."""
        if not self.dirty:
            return
        self.dirty = False
        stores: list[tuple[str, Any]] = [("s1", self.s1)]
        if self.memory is not None:
            stores.append(("memory", self.memory))

        async def read() -> list[list[Event]]:
            return list(await asyncio.gather(*(s.get_events(a) for _, s in stores for a in ACTORS)))

        histories = iter(self.run(read()))
        for name, _ in stores:
            for actor in ACTORS:
                got = [key_of(e) for e in next(histories)]
                want = self.model.history(actor)
                assert got == want, f"{name}: history of {actor!r}: {got}, model says {want}"
        for store in (self.s1, self.s2):
            for actor in ACTORS:
                cached = store.cached_version(actor)
                assert cached is None or type(cached) is int, f"cached_version = {cached!r}"


class ApiMachine(StoreMachine):
    """Memory store and two JetStream stores, API operations only."""

    WITH_MEMORY = True


FOREIGN_KINDS = [
    "above",
    "garbage",
    "version 2**63",
    "version -7",
    "version true",
    "version 0",
    "other actor",
]


class OperatorMachine(StoreMachine):
    """Two JetStream stores, plus an operator and a foreign writer on the admin connection."""

    WITH_MEMORY = False

    @rule(actor=actor_ids)
    def purge_actor(self, actor: str) -> None:
        note(f"operator: purge {actor!r}'s subject")
        self.dirty = True
        js = self.admin.jetstream()
        self.run(js.purge_stream(self.stream, subject=self.s1.subject_for(actor)))
        self.model.purge(actor)

    @rule(snapshots_too=st.booleans(), refill=st.sampled_from([None, 0, 1, 50]))
    def delete_and_recreate_stream(self, snapshots_too: bool, refill: int | None) -> None:
        """Delete the stream (and maybe the snapshot stream) and recreate it. With *refill*,
        a third writer then appends as many messages on each subject as before, in the same
        order (so every cached stream sequence points at a message again), with versions
        raised by *refill* and new ids: the shape where a cache keyed by sequence lies."""
        note(
            f"operator: delete the stream{' and the snapshots' if snapshots_too else ''}, "
            f"recreate{'' if refill is None else f', refill with versions +{refill}'}"
        )
        old = list(self.model.stream)
        self.dirty = True

        async def go() -> JetStreamEventStore:
            js = self.admin.jetstream()
            await js.delete_stream(self.stream)
            if snapshots_too:
                await js.delete_stream(f"{self.stream}_snapshots")
            return await JetStreamEventStore.open(self.admin, self.name, CONFIG)

        third = self.run(go())
        self.model.delete_stream(snapshots_too)
        if refill is None:
            return
        for message in old:
            previous = self.model.latest(message.actor)
            version = previous + 1
            if message.event is not None:
                version = max(version, message.event[2] + refill)
            event = self.new_event(message.actor, version, self.fresh_id())
            assert self.model.save_event(event) == OK
            self.remember([event])
            self.run(third.save_event(event))

    @rule(data=st.data())
    def foreign_message(self, data: st.DataObject) -> None:
        actor = data.draw(actor_ids, label="actor")
        kind = data.draw(st.sampled_from(FOREIGN_KINDS), label="foreign message")
        latest = self.model.latest(actor)
        fid = self.fresh_id()
        wire: dict[str, Any] = {
            "id": fid,
            "eventType": "Foreign",
            "actorId": actor,
            "version": latest + 1,
            "data": {"by": "foreign"},
            "timestamp": "2026-01-02T03:04:05Z",
        }
        headers: dict[str, str] | None = None
        key: Key | None = None
        if kind == "above":
            wire["version"] = min(
                latest + data.draw(st.integers(1, 50), label="above by"), MAX_VERSION
            )
            # Like Go Aether: the event id is the Nats-Msg-Id.
            headers = {"Nats-Msg-Id": fid}
            key = ("Foreign", actor, wire["version"], fid, {"by": "foreign"})
        elif kind == "other actor":
            wire["actorId"] = next(a for a in ACTORS if a != actor)
        elif kind != "garbage":
            wire["version"] = {
                "version 2**63": 2**63,
                "version -7": -7,
                "version true": True,
                "version 0": 0,
            }[kind]
        payload = b'{"id": "x", "version": ' if kind == "garbage" else orjson.dumps(wire)
        note(f"foreign writer: {kind} on {actor!r}: {payload!r}")
        self.dirty = True
        js = self.admin.jetstream()
        self.run(js.publish(self.s1.subject_for(actor), payload, headers=headers))
        self.model.foreign(actor, key)
        if key is not None:
            self.remember([Event.from_json(payload)])


# Sized to take about 90 s together on a 2-core CI runner (measured: ~0.07 s per ApiMachine
# example, ~0.08 s per OperatorMachine example of 30 steps). AETHER_MODEL_SCALE multiplies
# the number of examples, for a deeper search by hand (e.g. AETHER_MODEL_SCALE=10).
SCALE = float(os.environ.get("AETHER_MODEL_SCALE", "1"))
STEPS = 30


def _run(machine: type[StoreMachine], url: str, examples: int) -> None:
    machine.url = url
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=max(1, int(examples * SCALE)),
            stateful_step_count=STEPS,
            deadline=None,
            print_blob=True,
            # Shrink only the first bug found: shrinking several at once against a real
            # server can take hypothesis' full 5 minutes (the regression tests below
            # report each known shape separately anyway).
            report_multiple_bugs=False,
            # No "explain" phase: against a real server it re-runs the failing example for
            # minutes, for comments that a state machine's output hardly uses.
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        ),
    )


# A failing run then shrinks (10-60 s here; hypothesis stops shrinking after 5 minutes).
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_api_operations_match_the_model(nats_url: str) -> None:
    _run(ApiMachine, nats_url, examples=500)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_operator_actions_match_the_model(nats_url: str) -> None:
    _run(OperatorMachine, nats_url, examples=600)


# -- the known fault shapes, deterministic --------------------------------------------------


async def recreate(nc: Client, store: JetStreamEventStore, snapshots_too: bool = False) -> None:
    """Operator: delete the store's stream (and maybe its snapshots) and let open() recreate."""
    js = nc.jetstream()
    await js.delete_stream(store.stream_name)
    if snapshots_too:
        await js.delete_stream(f"{store.stream_name}_snapshots")
    await JetStreamEventStore.open(nc, store.stream_name)


async def test_fault_recreated_stream_under_a_warm_cache(
    open_store: StoreFactory, nc: Client
) -> None:
    """(1) S1 wrote A v1..v3 (A's tail at stream sequence 3, cached). The stream is deleted
    and recreated; B, B, then A v100 are written, so A's tail is at sequence 3 again. S1's
    save of A v4 must be a conflict with 100, not appended after v100."""
    s1, s2 = await open_store(), await open_store()
    for v in (1, 2, 3):
        await s1.save_event(ev("A", v))
    await recreate(nc, s1)
    await s2.save_event(ev("B", 1))
    await s2.save_event(ev("B", 2))
    await s2.save_event(ev("A", 100))
    msg = await nc.jetstream().get_last_msg(s1.stream_name, s1.subject_for("A"))
    assert msg.seq == 3  # the shape: A's tail is at the sequence S1 cached
    with pytest.raises(VersionConflictError) as info:
        await s1.save_event(ev("A", 4))
    assert info.value.current_version == 100
    assert await versions(s2, "A") == [100]


async def test_fault_recreated_stream_same_sequence_single_actor(
    open_store: StoreFactory, nc: Client
) -> None:
    """(1), smallest form: S1 wrote A v1 (seq 1); recreated; S2 wrote A v5 (seq 1 again)."""
    s1, s2 = await open_store(), await open_store()
    await s1.save_event(ev("A", 1))
    await recreate(nc, s1)
    await s2.save_event(ev("A", 5))
    with pytest.raises(VersionConflictError) as info:
        await s1.save_event(ev("A", 2))
    assert info.value.current_version == 5
    assert await versions(s2, "A") == [5]


@pytest.mark.parametrize("mutated_to", [1, 0, 10])
async def test_fault_event_mutated_while_its_save_is_in_flight(store: Any, mutated_to: int) -> None:
    """(2) The caller changes ``event.version`` after save_event started: the event is
    stored as it was when the save began, and the store's view stays right."""
    await store.save_event(ev("A", 1))
    event = ev("A", 2)
    task = asyncio.ensure_future(store.save_event(event))
    await asyncio.sleep(0)  # the save has started
    event.version = mutated_to
    await task
    assert await versions(store, "A") == [1, 2]
    with pytest.raises(VersionConflictError) as info:
        await store.save_event(ev("A", 2))
    assert info.value.current_version == 2
    await store.save_event(ev("A", 3))
    assert await versions(store, "A") == [1, 2, 3]


async def test_fault_resaving_a_stored_event_that_is_no_longer_the_latest(
    open_store: StoreFactory,
) -> None:
    """(3) S1 saved e1 (A v1); S2 appended A v2. Re-saving e1 through S1 (warm cache) is a
    conflict with 2, as it is through a cold store."""
    s1, s2 = await open_store(), await open_store()
    e1 = ev("A", 1)
    await s1.save_event(e1)
    await s2.save_event(ev("A", 2))
    for store in (s1, s2):
        with pytest.raises(VersionConflictError) as info:
            await store.save_event(e1)
        assert info.value.current_version == 2
    assert await versions(s1, "A") == [1, 2]


async def test_resaving_an_older_event_memory() -> None:
    """(3) for the in-memory store."""
    store = InMemoryEventStore()
    e1 = ev("A", 1)
    await store.save_event(e1)
    await store.save_event(ev("A", 2))
    with pytest.raises(VersionConflictError) as info:
        await store.save_event(e1)
    assert info.value.current_version == 2


@pytest.mark.parametrize("via", ["writer", "other store"])
async def test_fault_resaving_the_last_event_after_a_purge(
    open_store: StoreFactory, nc: Client, via: str
) -> None:
    """(4) After the actor's subject is purged its events are no longer stored: re-saving
    the last one stores it again (the writer's warm cache must not answer "already
    stored"; a cold store must not call it a reused id)."""
    s1, s2 = await open_store(), await open_store()
    e1, e2 = ev("A", 1), ev("A", 2)
    await s1.save_event(e1)
    await s1.save_event(e2)
    await nc.jetstream().purge_stream(s1.stream_name, subject=s1.subject_for("A"))
    await (s1 if via == "writer" else s2).save_event(e2)
    assert [key_of(e) for e in await s2.get_events("A")] == [key_of(e2)]
    assert await s2.get_latest_version("A") == 2


@pytest.mark.parametrize(
    "owner", ["the actor's latest", "an older one of the actor", "another actor's"]
)
async def test_fault_batch_whose_last_event_reuses_an_older_id(store: Any, owner: str) -> None:
    """(5) A batch whose last event carries the id of a stored event (the actor's latest,
    an older one, another actor's) is refused with InvalidEventError, nothing written."""
    old = ev("B" if owner == "another actor's" else "A", 1)
    await store.save_event(old)
    if owner == "an older one of the actor":
        await store.save_event(ev("A", 2))
    before = await versions(store, "A")
    with pytest.raises(InvalidEventError):
        await store.save_events([ev("A", 5), ev("A", 6, event_id=old.id)])
    assert await versions(store, "A") == before


@pytest.mark.parametrize("bad_version", [2**63, -7, True, 0])
async def test_fault_foreign_message_with_an_invalid_version(
    open_store: StoreFactory, nc: Client, bad_version: Any
) -> None:
    """(9) A foreign message on A's subject whose version is outside 1..2**63-1 (or not an
    int) is skipped: it is not the latest version, not replayed, and A stays writable."""
    s1, s2 = await open_store(), await open_store()
    await s1.save_event(ev("A", 1))
    wire = {
        "id": "foreign-1",
        "eventType": "Foreign",
        "actorId": "A",
        "version": bad_version,
        "data": {},
        "timestamp": "2026-01-02T03:04:05Z",
    }
    await nc.jetstream().publish(s1.subject_for("A"), orjson.dumps(wire))
    for store in (s1, s2):
        assert await versions(store, "A") == [1]
    with pytest.raises(VersionConflictError) as info:
        await s1.save_event(ev("A", 1))  # warm cache
    assert info.value.current_version == 1
    assert await s2.get_latest_version("A") == 1  # cold
    await s1.save_event(ev("A", 2))
    assert await versions(s2, "A") == [1, 2]


@pytest.mark.parametrize("version", [0, -1])
async def test_a_version_below_1_is_invalid_input(store: Any, version: int) -> None:
    """Bad input, not a conflict: InvalidEventError from both stores, nothing written."""
    with pytest.raises(InvalidEventError):
        await store.save_event(ev("A", version))
    with pytest.raises(InvalidEventError):
        await store.save_events([ev("A", version), ev("A", 1)])
    assert await store.get_events("A") == []


# -- found by the state machine while the fixes were being written -----------------------------


@pytest.mark.parametrize("how", ["save_event", "save_events"])
async def test_resaving_the_latest_event_after_a_malformed_foreign_message(
    open_store: StoreFactory, nc: Client, how: str
) -> None:
    """A foreign writer appended a malformed message after A's last event. That event is
    still A's latest *event* (malformed messages are skipped), so re-saving it is a retry
    that returns normally, warm or cold, and writes nothing."""
    s1, s2 = await open_store(), await open_store()
    e1 = ev("A", 1)
    await s1.save_event(e1)
    await nc.jetstream().publish(s1.subject_for("A"), b'{"id": "x", "version": ')
    for store in (s1, s2):
        if how == "save_event":
            await store.save_event(e1)
        else:
            await store.save_events([e1])
    assert await versions(s2, "A") == [1]


async def test_a_retried_batch_that_conflicts_is_a_conflict_even_with_a_reused_id(
    open_store: StoreFactory,
) -> None:
    """Versions are checked before ids: a batch whose first version is not above the
    latest is a VersionConflictError (with the true current version), even when one of its
    ids is also taken."""
    s1, s2 = await open_store(), await open_store()
    e1 = ev("A", 1)
    await s1.save_event(e1)
    batch = [ev("A", 2, event_id=e1.id), ev("A", 3)]
    with pytest.raises(InvalidEventError):
        await s1.save_events(batch)
    await s2.save_event(ev("A", 2))
    with pytest.raises(VersionConflictError) as info:
        await s1.save_events(batch)
    assert info.value.current_version == 2


async def test_the_id_of_a_purged_and_saved_again_event_stays_taken(
    open_store: StoreFactory, nc: Client
) -> None:
    """After A's subject is purged, re-saving A's last event stores it again; its id is
    then taken again: no other event, of A or of another actor, may reuse it."""
    s1, s2 = await open_store(), await open_store()
    e1 = ev("A", 1)
    await s1.save_event(e1)
    await nc.jetstream().purge_stream(s1.stream_name, subject=s1.subject_for("A"))
    await s1.save_event(e1)
    for reuse in (ev("A", 2, event_id=e1.id), ev("B", 1, event_id=e1.id)):
        for store in (s1, s2):
            with pytest.raises(InvalidEventError):
                await store.save_event(reuse)
    assert [key_of(e) for e in await s2.get_events("A")] == [key_of(e1)]
    assert await s2.get_events("B") == []


@pytest.mark.parametrize("first_saved_as", ["the same batch", "a single event"])
async def test_a_batch_carrying_purged_ids_is_refused_within_the_duplicate_window(
    open_store: StoreFactory, nc: Client, first_saved_as: str
) -> None:
    """Events purged from the stream are no longer stored, but their ids stay in the
    server's duplicate window. A single event is checked by where its id points (and
    stored again); an atomic batch gets one answer naming no id, so a batch carrying a
    purged id is refused as reusing it, nothing written (docs/guarantees.md). The same
    events saved one by one are stored."""
    s1, s2 = await open_store(), await open_store()
    batch = [ev("A", 1), ev("A", 2)]
    if first_saved_as == "the same batch":
        await s1.save_events(batch)
    else:
        await s1.save_event(batch[0])
    await nc.jetstream().purge_stream(s1.stream_name, subject=s1.subject_for("A"))
    with pytest.raises(InvalidEventError):
        await s1.save_events(batch)
    assert await s2.get_events("A") == []
    for event in batch:
        await s1.save_event(event)
    assert [key_of(e) for e in await s2.get_events("A")] == [key_of(e) for e in batch]


async def test_retrying_a_batch_of_which_only_the_last_event_is_stored(store: Any) -> None:
    """A refused batch's last event is later saved alone; retrying the batch is then not
    "already stored" (its other events are not): a conflict with the latest version."""
    e1 = ev("A", 1)
    await store.save_event(e1)
    batch = [ev("A", 2), ev("A", 3, event_id=e1.id), ev("A", 4)]
    with pytest.raises(InvalidEventError):
        await store.save_events(batch)
    await store.save_event(batch[-1])
    with pytest.raises(VersionConflictError) as info:
        await store.save_events(batch)
    assert info.value.current_version == 4
    assert await versions(store, "A") == [1, 4]
