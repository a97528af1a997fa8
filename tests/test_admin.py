"""The public admin API (``aether.admin``) against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import nats
import pytest
from nats.aio.client import Client

from aether import (
    Event,
    JetStreamNotEnabledError,
    StreamExistsError,
    StreamNotFoundError,
    UnsuitableStreamError,
)
from aether.admin import StreamAdmin, StreamInfo, StreamRef
from aether.event import ActorSnapshot
from aether.store import InvalidConfigError, JetStreamConfig, JetStreamEventStore
from aether.testing import NatsServer

from ._stores import unique


@pytest.fixture
async def admin(nc: Client) -> AsyncIterator[StreamAdmin]:
    yield StreamAdmin(nc)
    # Tests delete what they made through the admin API itself; this only tidies failures.
    js = nc.jetstream()
    for info in await js.streams_info():
        if "adm" in info.config.name:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(info.config.name)


async def test_stream_refs_name_streams_as_open_does() -> None:
    assert StreamRef().stream_name == "events"
    assert StreamRef("bank", "tenant a").stream_name == "tenant_20a__bank"
    # A namespaced store's JetStream name parses back to its pair; a plain name is a name.
    assert StreamRef.parse("tenant_20a__bank") == StreamRef("bank", "tenant a")
    assert StreamRef.parse("bank") == StreamRef("bank", "")
    assert StreamRef("bank", "acme").describe() == (
        "'bank' in namespace 'acme' (JetStream stream 'acme__bank')"
    )


@pytest.mark.parametrize(
    ("stream", "namespace", "field"),
    [
        ("bad.name", "", "stream_name"),
        ("a b", "", "stream_name"),
        ("", "", "stream_name"),
        ("x_snapshots", "", "stream_name"),
        ("x_parked", "", "stream_name"),
        ("a__b", "ns", "stream_name"),  # "__" only as a JetStream name, without namespace
        ("zz__", "", "stream_name"),
        ("ok", "bad\udc00", "namespace"),
    ],
)
async def test_bad_names_are_typed_errors(stream: str, namespace: str, field: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        StreamRef.parse(stream, namespace)
    assert info.value.field == field


async def test_bad_timeouts_are_typed_errors(nc: Client) -> None:
    for bad in (timedelta(0), timedelta(seconds=-1), 5):
        with pytest.raises(InvalidConfigError) as info:
            StreamAdmin(nc, retry_deadline=bad)  # type: ignore[arg-type]
        assert info.value.field == "retry_deadline"


async def test_open_refuses_a_bad_stream_name_with_the_same_typed_error(nc: Client) -> None:
    before = {s.config.name for s in await nc.jetstream().streams_info()}
    for method in (JetStreamEventStore.open, JetStreamEventStore.attach):
        with pytest.raises(InvalidConfigError) as info:
            await method(nc, "bad.name")
        assert info.value.field == "stream_name"
    assert {s.config.name for s in await nc.jetstream().streams_info()} == before


async def test_create_inspect_and_delete_a_stream(admin: StreamAdmin, nc: Client) -> None:
    ref = StreamRef(unique("adm"), "tenant-a")
    config = JetStreamConfig(stream_retention=timedelta(days=30), storage="memory")
    created = await admin.create_stream(ref, config)
    assert (created.namespace, created.name, created.stream_name) == (
        "tenant-a",
        ref.name,
        ref.stream_name,
    )
    assert created.settings.max_age == timedelta(days=30)
    assert created.settings.storage == "memory"
    assert created.snapshot_stream == ref.stream_name + "_snapshots"
    assert (created.events, created.actors, created.snapshots) == (0, 0, 0)
    assert created.has_metadata

    with pytest.raises(StreamExistsError) as exists:
        await admin.create_stream(ref)
    assert exists.value.stream_name == ref.stream_name

    # A store uses the stream as created, and what it writes shows in the info.
    store = await JetStreamEventStore.open(nc, ref.name, JetStreamConfig(namespace="tenant-a"))
    await store.save_events([Event("Opened", "acc-1", 1), Event("Deposited", "acc-1", 2)])
    await store.save_event(Event("Opened", "acc-2", 1))
    await store.save_snapshot(ActorSnapshot("acc-1", 2, {"balance": 1}))
    info = await admin.stream_info(StreamRef.parse(ref.stream_name))
    assert (info.events, info.actors, info.snapshots) == (3, 2, 1)
    assert (info.first_position, info.last_position) == (1, 3)
    assert info.settings.max_age == timedelta(days=30)

    # Durable subscriptions park events in <stream>_parked: deleted with the store too.
    parked = f"{ref.stream_name}_parked"
    await nc.jetstream().add_stream(name=parked, subjects=[f"{ref.stream_name}.parked.>"])
    deleted = await admin.delete_stream(ref)
    assert deleted.events == 3
    with pytest.raises(StreamNotFoundError):
        await admin.stream_info(ref)
    names = {s.config.name for s in await nc.jetstream().streams_info()}
    assert ref.stream_name not in names and f"{ref.stream_name}_snapshots" not in names
    assert parked not in names
    # The live store notices: its next read says the stream is gone.
    with pytest.raises(StreamNotFoundError):
        await store.get_latest_version("acc-1")
    with pytest.raises(StreamNotFoundError):
        await admin.delete_stream(ref)
    await store.close()


async def test_a_stream_created_without_retention_keeps_events_forever(
    admin: StreamAdmin,
) -> None:
    ref = StreamRef(unique("adm"))
    info = await admin.create_stream(ref)
    assert info.settings.max_age is None
    assert info.settings.retention == "limits"
    await admin.delete_stream(ref)


async def test_a_foreign_stream_is_neither_described_nor_deleted(
    admin: StreamAdmin, nc: Client
) -> None:
    name = unique("adm")
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.orders.>"])
    ref = StreamRef(name)
    with pytest.raises(UnsuitableStreamError) as info:
        await admin.stream_info(ref)
    assert info.value.setting == "subjects"
    with pytest.raises(UnsuitableStreamError):
        await admin.delete_stream(ref)
    assert (await js.stream_info(name)).config.name == name  # still there
    with pytest.raises(StreamExistsError):
        await admin.create_stream(ref)
    assert name not in {s.name for s in await admin.list_streams()}
    await js.delete_stream(name)


async def test_list_streams_shows_aether_streams_with_their_pairs(
    admin: StreamAdmin, nc: Client
) -> None:
    base = unique("adm")
    first = await admin.create_stream(StreamRef(base, "ns-b"))
    second = await admin.create_stream(StreamRef(base, "ns-a"))
    # Go Aether's layout: no aether metadata, only <name>.events.> subjects.
    js = nc.jetstream()
    bare = f"{base}bare"
    await js.add_stream(name=bare, subjects=[f"{bare}.events.>"])
    await js.add_stream(name=f"{base}other", subjects=[f"{base}other.x"])

    listed = [s for s in await admin.list_streams() if s.stream_name.count(base)]
    assert [(s.namespace, s.name) for s in listed] == [
        ("", bare),
        ("ns-a", base),
        ("ns-b", base),
    ]
    assert [s.has_metadata for s in listed] == [False, True, True]
    assert listed[1].stream_name == second.stream_name
    assert listed[2].stream_name == first.stream_name
    assert listed[1].snapshot_stream == second.snapshot_stream
    assert listed[0].snapshot_stream is None
    for info in listed:
        await admin.delete_stream(info.ref)
    await js.delete_stream(f"{base}other")


async def test_list_actors_with_versions_prefix_limit_and_foreign_subjects(
    admin: StreamAdmin, nc: Client
) -> None:
    ref = StreamRef(unique("adm"))
    store = await JetStreamEventStore.open(nc, ref.name)
    for i in range(1, 6):
        actor = f"order-{i}"
        await store.save_events([Event("Placed", actor, v) for v in range(1, i + 1)])
    await store.save_event(Event("Opened", "acct.with dots", 7))
    # A foreign writer's subject that is no actor id aether encodes ("_zz" is no escape).
    await nc.jetstream().publish(f"{store.stream_name}.events._zz", b"{}")

    everything = await admin.list_actors(ref)
    assert [(a.actor_id, a.version, a.events) for a in everything.actors] == [
        ("acct.with dots", 7, 1),
        *[(f"order-{i}", i, i) for i in range(1, 6)],
    ]
    assert (everything.matching, everything.skipped_subjects) == (6, 1)

    some = await admin.list_actors(ref, prefix="order-", limit=2)
    assert [a.actor_id for a in some.actors] == ["order-1", "order-2"]
    assert some.matching == 5
    assert (await admin.list_actors(ref, prefix="nobody")).actors == []
    with pytest.raises(ValueError, match="limit"):
        await admin.list_actors(ref, limit=-1)
    with pytest.raises(StreamNotFoundError):
        await admin.list_actors(StreamRef(unique("adm")))
    await store.close()
    await admin.delete_stream(ref)


async def test_a_server_without_jetstream_is_reported_at_once() -> None:
    async with NatsServer(jetstream=False) as server:
        client = await nats.connect(server.url)
        try:
            admin = StreamAdmin(client, retry_deadline=timedelta(minutes=5))
            for call in (
                admin.list_streams(),
                admin.stream_info(StreamRef()),
                admin.create_stream(StreamRef()),
                admin.delete_stream(StreamRef()),
                admin.list_actors(StreamRef()),
            ):
                with pytest.raises(JetStreamNotEnabledError):
                    await call
        finally:
            await client.close()


async def test_concurrent_creations_of_one_stream_exactly_one_wins(admin: StreamAdmin) -> None:
    ref = StreamRef(unique("adm"))
    # The same settings: the server alone would accept both (a create is idempotent).
    results = await asyncio.gather(
        *(admin.create_stream(ref) for _ in range(4)), return_exceptions=True
    )
    created = [r for r in results if isinstance(r, StreamInfo)]
    refused = [r for r in results if isinstance(r, StreamExistsError)]
    assert (len(created), len(refused)) == (1, 3), results
    await admin.delete_stream(ref)


async def test_leftover_snapshots_block_a_creation_instead_of_joining_it(
    admin: StreamAdmin, nc: Client
) -> None:
    ref = StreamRef(unique("adm"))
    await admin.create_stream(ref)
    store = await JetStreamEventStore.open(nc, ref.name)
    await store.save_event(Event("Opened", "acc", 1))
    await store.save_snapshot(ActorSnapshot("acc", 1, {"balance": 99}))
    await store.close()
    # An interrupted deletion of the events stream only: its snapshots must not join a
    # new stream of the same name, where "acc" has no events.
    await nc.jetstream().delete_stream(ref.stream_name)
    with pytest.raises(StreamExistsError) as info:
        await admin.create_stream(ref)
    assert info.value.stream_name == f"{ref.stream_name}_snapshots"
    with pytest.raises(StreamNotFoundError):
        await admin.stream_info(ref)  # nothing was created
    await nc.jetstream().delete_stream(f"{ref.stream_name}_snapshots")


async def test_a_stream_whose_window_only_suits_quick_writers_is_still_administered(
    admin: StreamAdmin,
) -> None:
    ref = StreamRef(unique("adm"))
    quick = JetStreamConfig(
        request_timeout=timedelta(seconds=1),
        retry_deadline=timedelta(seconds=5),
        duplicate_window=timedelta(seconds=10),
    )
    created = await admin.create_stream(ref, quick)
    assert created.settings.duplicate_window == timedelta(seconds=10)
    assert (await admin.stream_info(ref)).stream_name == ref.stream_name
    assert (await admin.list_actors(ref)).actors == []
    patient = StreamAdmin(admin._nc, retry_deadline=timedelta(minutes=5))
    assert (await patient.list_actors(ref)).matching == 0
    await admin.delete_stream(ref)


async def test_only_streams_a_store_can_open_are_listed(admin: StreamAdmin, nc: Client) -> None:
    base = unique("adm")
    original = await admin.create_stream(StreamRef(base))
    js = nc.jetstream()
    # A copy carrying the original's metadata: no store uses it, and deleting its
    # listed pair would delete the original.
    config = original.settings.metadata
    await js.add_stream(
        name=f"{base}-copy", subjects=[f"{base}-copy.events.>"], metadata=dict(config)
    )
    # Go Aether's layout under a name no store can be opened on.
    await js.add_stream(name=f"{base}__v2", subjects=[f"{base}__v2.events.>"])
    listed = [s for s in await admin.list_streams() if base in s.stream_name]
    assert [s.stream_name for s in listed] == [base]
    for info in listed:
        assert (await admin.stream_info(info.ref)).stream_name == info.stream_name
    await admin.delete_stream(original.ref)
    await js.delete_stream(f"{base}-copy")
    await js.delete_stream(f"{base}__v2")
