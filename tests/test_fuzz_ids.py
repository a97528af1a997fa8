"""Actor ids and namespaces fuzzed with hypothesis against a real JetStream store.

``tests/test_subjects.py`` fuzzes the encoding as a pure function; here every id goes
through a store on the session ``nats_server``: each generated id gets a real event, is read
back through a second store (its own connection and a cold cache), and at the end the whole
stream is audited message by message. Properties:

- reading id Y never returns an event written for another id X (and X's own events are all
  there, in order): subjects are per id, never shared, never wildcards;
- each id's subject has exactly three tokens and its last token decodes back to the id;
- ``get_latest_version`` of an id never written is 0, and its history is empty;
- the stream holds exactly the messages written (nothing leaked to other subjects);
- invalid ids (empty, not a ``str``, lone surrogates, too long once encoded) raise
  ``InvalidEventError`` and write nothing;
- stores on two different (namespace, stream name) pairs never share a stream nor see each
  other's events or snapshots, even the pairs that older versions' ``<sanitised
  namespace>_<name>`` put in one stream (``"a.b"``, ``"a b"``, ``"a_b"``; ``("x", "y_n")``
  and ``("x_y", "n")``).

The tests are synchronous and drive one ``asyncio.Runner`` from inside hypothesis, so the
connections and stores live across examples (hypothesis does not run coroutines itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from aether import ActorSnapshot, Event, InvalidEventError, VersionConflictError
from aether.store import JetStreamConfig, JetStreamEventStore
from aether.store._subjects import MAX_TOKEN_LENGTH, decode_actor_token, encode_actor_id
from aether.testing import NatsServer

from ._stores import StoreFactory, store_factory, unique

pytestmark = pytest.mark.fault

TOKEN = re.compile(r"[A-Za-z0-9_-]+")
# Subject syntax, white space, the escape character and look-alikes of escapes.
SUBJECT_SYNTAX = [".", "*", ">", "_", " ", "\t", "\n", "\r", "\x00", "$", "-", "%", "/", "\\"]
SUBJECT_SYNTAX += ["\u00a0", "\u2028", "\ufeff", "\u3000", "\uff0e", "\uff0a", "\ufe65"]

_chars = st.one_of(
    st.sampled_from(SUBJECT_SYNTAX),
    st.sampled_from("aAbB02E5F"),  # material for escape look-alikes such as "a_2Eb"
    st.characters(codec="utf-8"),  # any code point but surrogates
    st.characters(min_codepoint=0x10000, codec="utf-8"),  # astral planes
)
raw_ids = st.text(_chars, min_size=1, max_size=24)

BATCH_EXAMPLES = 350
RANDOM_IDS_PER_EXAMPLE = 12
MIN_DISTINCT_IDS = 2000


def _near_collisions(actor_id: str) -> list[str]:
    """Ids that a weaker encoding would map to *actor_id*'s subject (or a neighbour's)."""
    token = encode_actor_id(actor_id)
    return [
        token,  # the encoding of one id used as another id's literal
        encode_actor_id(token),
        actor_id.replace(".", "_2E"),
        actor_id.replace(".", "_"),
        actor_id.replace("_", "."),
        actor_id.replace(" ", "_20"),
        token.lower(),
        actor_id.swapcase(),
        f"{actor_id}.",
        f"_{actor_id}",
        f"{actor_id}.>",
        f"{actor_id}.*",
        f"{actor_id}{actor_id}",
    ]


def _random_id(rnd: random.Random) -> str:
    """An id from a hypothesis-seeded ``Random``: long mixes of syntax characters, ASCII,
    any code point and astral ones, which hypothesis's text strategy (biased towards short,
    repeated values) rarely produces."""
    pools: list[Callable[[], str]] = [
        lambda: rnd.choice(SUBJECT_SYNTAX),
        lambda: chr(rnd.randrange(0x20, 0x7F)),
        lambda: chr(rnd.choice([rnd.randrange(0, 0xD800), rnd.randrange(0xE000, 0x110000)])),
        lambda: chr(rnd.randrange(0x10000, 0x110000)),
    ]
    return "".join(rnd.choice(pools)() for _ in range(rnd.randint(1, 16)))


@st.composite
def id_batches(draw: st.DrawFn) -> list[str]:
    """About 30-50 distinct ids: hypothesis's own (short, repeated, edge-case heavy), random
    ones, and near-collisions of some of them."""
    bases = draw(st.lists(raw_ids, min_size=12, max_size=20, unique=True))
    rnd = draw(st.randoms(use_true_random=False))
    bases += [_random_id(rnd) for _ in range(RANDOM_IDS_PER_EXAMPLE)]
    ids = list(bases)
    for base in bases:
        ids += draw(st.lists(st.sampled_from(_near_collisions(base)), max_size=2))
    return list(dict.fromkeys(ids))  # distinct, in order


# Hand-picked neighbours: every one of these must have its own subject.
COLLISION_CANDIDATES = [
    "a.b", "a_2Eb", "a_b", "a_5Fb", "a b", "a_20b", "a\tb", "a*b", "a>b", "a.*", "a.>",
    "a..b", "a_2E_2Eb", "a.b.", ".a.b", "ab", "AB", "a-b", "a%2Eb", "a$b", "$JS.API",
    ".", "..", "*", ">", "_", "__", "_5F", "_5F5F", "_2E", "_2e", "-", "--", " ", "\t",
    "é", "e\u0301", "\u00c3\u00a9", "_C3_A9", "\U0001f600", "_F0_9F_98_80", "\x00", "_00",
    "a\u2024b", "a\uff0eb", "a\ufe52b", "a\u3002b",
]  # fmt: skip


@dataclass
class IdFuzz:
    """A writer and a reader store (separate connections) on one fresh stream, and a model."""

    writer: JetStreamEventStore
    reader: JetStreamEventStore
    admin: Client
    #: actor id -> ids of the events written for it, in version order
    model: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.model.values())

    async def write_and_check(self, ids: Sequence[str], unwritten: Sequence[str] = ()) -> None:
        events = [
            Event("Fuzzed", actor_id, len(self.model.get(actor_id, ())) + 1, {"id": actor_id})
            for actor_id in ids
        ]
        await asyncio.gather(*(self.writer.save_event(event) for event in events))
        for event in events:
            self.model.setdefault(event.actor_id, []).append(event.id)
        await asyncio.gather(*(self.check_actor(actor_id) for actor_id in ids))
        await asyncio.gather(
            *(
                self.check_unwritten(actor_id)
                for actor_id in unwritten
                if actor_id not in self.model
            )
        )
        state = await stream_state(self.admin, self.writer.stream_name)
        assert state["messages"] == self.total
        assert state.get("num_subjects", 0) == len(self.model)

    async def check_actor(self, actor_id: str) -> None:
        check_subject(self.reader, actor_id)
        events = await self.reader.get_events(actor_id)
        expected = self.model[actor_id]
        assert [e.id for e in events] == expected, f"wrong history for {actor_id!r}"
        assert all(e.actor_id == actor_id and e.data == {"id": actor_id} for e in events)
        assert [e.version for e in events] == list(range(1, len(expected) + 1))
        assert await self.reader.get_latest_version(actor_id) == len(expected)

    async def check_unwritten(self, actor_id: str) -> None:
        assert await self.reader.get_latest_version(actor_id) == 0
        assert await self.reader.get_events(actor_id) == []
        assert await self.reader.get_latest_snapshot(actor_id) is None

    async def audit(self) -> None:
        """Every message of the stream: on its own id's subject, and exactly the model."""
        stream = self.writer.stream_name
        prefix = f"{stream}.events."
        js = self.admin.jetstream()
        no_acks = ConsumerConfig(ack_policy=AckPolicy.NONE, max_ack_pending=-1)
        sub = await js.pull_subscribe(f"{prefix}>", stream=stream, config=no_acks)
        found: dict[str, list[str]] = {}
        try:
            remaining = self.total
            while remaining:
                for msg in await sub.fetch(min(remaining, 500), timeout=10):
                    event = Event.from_json(msg.data)
                    token = msg.subject.removeprefix(prefix)
                    assert msg.subject.startswith(prefix) and TOKEN.fullmatch(token)
                    assert decode_actor_token(token) == event.actor_id
                    assert encode_actor_id(event.actor_id) == token
                    found.setdefault(event.actor_id, []).append(event.id)
                    remaining -= 1
        finally:
            await sub.unsubscribe()
        assert found == self.model


async def stream_state(admin: Client, stream: str) -> dict[str, Any]:
    """The stream's ``state`` as the server reports it (nats-py drops ``num_subjects``)."""
    reply = await admin.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
    info = json.loads(reply.data)
    assert "error" not in info, info
    state: dict[str, Any] = info["state"]
    return state


def check_subject(store: JetStreamEventStore, actor_id: str) -> None:
    """The id's subject is ``<stream>.events.<token>``, and the token decodes to the id."""
    subject = store.subject_for(actor_id)
    stream, events, token = subject.split(".")  # exactly three tokens, whatever the id
    assert (stream, events) == (store.stream_name, "events")
    assert TOKEN.fullmatch(token) and len(token) <= MAX_TOKEN_LENGTH
    assert decode_actor_token(token) == actor_id


@contextlib.contextmanager
def running(nats_url: str) -> Iterator[tuple[asyncio.Runner, StoreFactory, Client]]:
    """An event loop kept across hypothesis examples, with a store factory and an admin client."""
    with asyncio.Runner() as runner:
        factory_cm = store_factory([nats_url])
        factory = runner.run(factory_cm.__aenter__())
        admin = runner.run(nats.connect(nats_url))
        try:
            yield runner, factory, admin
        finally:
            runner.run(admin.close())
            runner.run(factory_cm.__aexit__(None, None, None))


def _open_id_fuzz(runner: asyncio.Runner, factory: StoreFactory, admin: Client) -> IdFuzz:
    async def open_both() -> IdFuzz:
        writer = await factory()
        reader = await factory()  # the same stream, its own connection and cache
        assert reader.stream_name == writer.stream_name
        return IdFuzz(writer, reader, admin)

    return runner.run(open_both())


# ------------------------------------------------------------------ ids


def test_random_ids_never_touch_each_other(
    nats_server: NatsServer, record_property: Callable[[str, object], None]
) -> None:
    with running(nats_server.url) as (runner, factory, admin):
        fuzz = _open_id_fuzz(runner, factory, admin)

        @settings(
            max_examples=BATCH_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(ids=id_batches(), unwritten=st.lists(raw_ids, max_size=4))
        def check(ids: list[str], unwritten: list[str]) -> None:
            runner.run(fuzz.write_and_check(ids, unwritten))

        check()
        runner.run(fuzz.audit())
    # Ids repeat across examples (they then get version 2, 3, ...): count the distinct ones.
    record_property("distinct_actor_ids", len(fuzz.model))
    record_property("events_written", fuzz.total)
    assert len(fuzz.model) >= MIN_DISTINCT_IDS, len(fuzz.model)


def test_hand_picked_near_collisions(nats_server: NatsServer) -> None:
    with running(nats_server.url) as (runner, factory, admin):
        fuzz = _open_id_fuzz(runner, factory, admin)
        candidates = list(dict.fromkeys(COLLISION_CANDIDATES))
        tokens = [encode_actor_id(c) for c in candidates]
        assert len(set(tokens)) == len(candidates)  # injective on the list
        ids = list(dict.fromkeys(candidates + tokens))  # and each one's token as an id
        unwritten = ["a", "b", "a.", ".b", "_2", "_2E_", "2Eb", "a_", "_b", "A.B", "e"]
        runner.run(fuzz.write_and_check(ids, unwritten))
        runner.run(fuzz.write_and_check(ids[::-1]))  # a second event each, reverse order
        runner.run(fuzz.audit())


def test_ids_at_the_length_limit(nats_server: NatsServer) -> None:
    """The longest valid ids (a 2048-character token) are stored; one more byte is refused."""
    at_limit = [
        "a" * MAX_TOKEN_LENGTH,
        "." * (MAX_TOKEN_LENGTH // 3),  # "_2E" each
        "é" * (MAX_TOKEN_LENGTH // 6),  # two bytes, "_C3_A9"
        "\U0001f600" * (MAX_TOKEN_LENGTH // 12),  # four bytes
        "a" * (MAX_TOKEN_LENGTH - 3) + ">",
    ]
    over = ["a" * (MAX_TOKEN_LENGTH + 1), "a" * (MAX_TOKEN_LENGTH - 2) + ">", "é" * 342]
    with running(nats_server.url) as (runner, factory, admin):
        fuzz = _open_id_fuzz(runner, factory, admin)
        runner.run(fuzz.write_and_check(at_limit))
        for actor_id in over:
            runner.run(_check_refused(fuzz, actor_id))
        runner.run(fuzz.audit())


# ------------------------------------------------------------------ invalid ids

surrogate_ids = st.builds(
    lambda head, lone, tail: head + lone + tail,
    st.text(_chars, max_size=8),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.text(_chars, max_size=8),
)
too_long_ids = st.builds(
    lambda unit, extra: unit * (MAX_TOKEN_LENGTH // len(encode_actor_id(unit)) + 1) + extra,
    st.sampled_from(["a", ".", "*", ">", "é", "\U0001f600", " "]),
    st.text(_chars, max_size=4),
)


async def _check_refused(fuzz: IdFuzz, actor_id: object) -> None:
    """Every write with *actor_id* raises InvalidEventError and writes nothing."""
    before = fuzz.total
    bad: str = actor_id  # type: ignore[assignment]  # deliberately any object
    writes: list[Callable[[], Awaitable[None]]] = [
        lambda: fuzz.writer.save_event(Event("Fuzzed", bad, 1, {"id": "x"})),
        lambda: fuzz.writer.save_events([Event("Fuzzed", bad, 1), Event("Fuzzed", bad, 2)]),
        lambda: fuzz.writer.save_snapshot(ActorSnapshot(bad, 1, {"id": "x"})),
    ]
    for write in writes:
        with pytest.raises(InvalidEventError):
            await write()
    # Reads either refuse the id or find nothing: no other actor's events.
    for read in (fuzz.reader.get_latest_version, fuzz.reader.get_events):
        try:
            result = await read(bad)
        except InvalidEventError:
            continue
        assert result in (0, [])
    assert (await stream_state(fuzz.admin, fuzz.writer.stream_name))["messages"] == before
    snapshots = await stream_state(fuzz.admin, f"{fuzz.writer.stream_name}_snapshots")
    assert snapshots["messages"] == 0


def test_invalid_ids_raise_and_write_nothing(nats_server: NatsServer) -> None:
    with running(nats_server.url) as (runner, factory, admin):
        fuzz = _open_id_fuzz(runner, factory, admin)
        runner.run(fuzz.write_and_check(["neighbour", "\ufffd", "_ED_A0_80"]))
        for bad in ["", None, 42, b"bytes", ["a"]]:
            runner.run(_check_refused(fuzz, bad))

        @settings(max_examples=60, deadline=None, database=None)
        @given(actor_id=surrogate_ids | too_long_ids)
        def check(actor_id: str) -> None:
            runner.run(_check_refused(fuzz, actor_id))

        check()
        runner.run(fuzz.audit())


# ------------------------------------------------------------------ namespaces

_KEPT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ASCII_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_NS_UNSAFE = [".", " ", "*", ">", "\t", "$", "/", "é", "\U0001f600", "\x00", "_"]


def expected_stream(namespace: str, name: str) -> str:
    """The documented rule, written independently: no namespace, the name itself; else
    each UTF-8 byte of the namespace outside ``[A-Za-z0-9-]`` (``_`` included) as ``_XX``,
    then ``__`` and the name."""
    if not namespace:
        return name
    escaped = "".join(chr(b) if b in _KEPT else f"_{b:02X}" for b in namespace.encode())
    return f"{escaped}__{name}"


namespaces = st.text(st.sampled_from(_NS_UNSAFE) | st.sampled_from("aAbZ09-_"), max_size=10) | (
    st.text(st.characters(codec="utf-8"), max_size=10)
)


@st.composite
def namespace_pairs(draw: st.DrawFn) -> tuple[str, str]:
    first = draw(namespaces)
    how = draw(st.sampled_from(["independent", "sanitised-alike", "swapcase", "suffix"]))
    if how == "independent":
        return first, draw(namespaces)
    if how == "sanitised-alike":  # one stream before the injective names
        return first, "".join(
            draw(st.sampled_from(_NS_UNSAFE)) if c not in _ASCII_SAFE or c == "_" else c
            for c in first
        )
    if how == "swapcase":
        return first, first.swapcase()
    return first, first + draw(st.sampled_from(["_", "-", ".", "a"]))


async def _pairs_case(nc: Client, first: tuple[str, str], second: tuple[str, str]) -> None:
    """Stores on two (namespace, stream name) pairs share a stream exactly when the pairs
    are equal; otherwise neither sees the other's events or snapshots."""
    stores: list[JetStreamEventStore] = []
    try:
        for namespace, name in (first, second):
            store = await JetStreamEventStore.open(nc, name, JetStreamConfig(namespace=namespace))
            stores.append(store)
            assert store.stream_name == expected_stream(namespace, name)
        a, b = stores
        same = first == second
        assert (a.stream_name == b.stream_name) == same
        # No pair's events stream is the other's snapshot stream.
        assert a.stream_name != f"{b.stream_name}_snapshots"
        assert b.stream_name != f"{a.stream_name}_snapshots"

        mine = Event("Opened", "shared-actor", 1, {"by": "a"})
        await a.save_event(mine)
        await a.save_snapshot(ActorSnapshot("shared-actor", 1, {"by": "a"}))
        if same:  # the same pair is the same store
            assert [e.id for e in await b.get_events("shared-actor")] == [mine.id]
            with pytest.raises(VersionConflictError):
                await b.save_event(Event("Opened", "shared-actor", 1, {"by": "b"}))
            snapshot = await b.get_latest_snapshot("shared-actor")
            assert snapshot is not None and snapshot.state == {"by": "a"}
            return
        assert await b.get_latest_version("shared-actor") == 0
        assert await b.get_events("shared-actor") == []
        assert await b.get_latest_snapshot("shared-actor") is None
        theirs = Event("Opened", "shared-actor", 1, {"by": "b"})
        await b.save_event(theirs)
        await b.save_snapshot(ActorSnapshot("shared-actor", 1, {"by": "b"}))
        assert [e.id for e in await a.get_events("shared-actor")] == [mine.id]
        assert [e.id for e in await b.get_events("shared-actor")] == [theirs.id]
        snapshot = await a.get_latest_snapshot("shared-actor")
        assert snapshot is not None and snapshot.state == {"by": "a"}
    finally:
        js = nc.jetstream()
        for store in stores:
            await store.close()
        for stream in {s.stream_name for s in stores}:
            for real in (stream, f"{stream}_snapshots"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(real)


def test_namespaces_never_see_each_other(nats_server: NatsServer) -> None:
    with asyncio.Runner() as runner:
        nc = runner.run(nats.connect(nats_server.url))
        try:

            @settings(max_examples=100, deadline=None, database=None)
            @given(pair=namespace_pairs())
            def check(pair: tuple[str, str]) -> None:
                name = unique("ns")
                runner.run(_pairs_case(nc, (pair[0], name), (pair[1], name)))

            check()
        finally:
            runner.run(nc.close())


@pytest.mark.parametrize(
    ("first", "second"),
    [("a.b", "a b"), ("a.b", "a_b"), ("a*b", "a>b"), ("aéb", "a\U0001f600b"), ("t.1", "t$1")],
)
async def test_namespaces_that_sanitised_alike_are_kept_apart(
    nc: Client, first: str, second: str
) -> None:
    """Older versions sanitised namespaces, so "a.b" and "a b" shared a stream; now each
    namespace is escaped, and they never see each other."""
    name = unique("ns")
    await _pairs_case(nc, (first, name), (second, name))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("x", "y_{n}"), ("x_y", "{n}")),  # both were x_y_<n>
        (("", "x_{n}"), ("x", "{n}")),  # both were x_<n>
        (("x_{n}", "snapshots"), ("x", "{n}")),  # events x_<n>_snapshots = the snapshots
    ],
)
async def test_namespace_and_stream_name_never_combine_to_another_pairs_stream(
    nc: Client, first: tuple[str, str], second: tuple[str, str]
) -> None:
    """Older versions joined ``<namespace>_<stream_name>``, so a namespace and a stream
    name could combine into another pair's stream (or its snapshot stream)."""
    n = unique("c")
    await _pairs_case(
        nc,
        (first[0].format(n=n), first[1].format(n=n)),
        (second[0].format(n=n), second[1].format(n=n)),
    )
