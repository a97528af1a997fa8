"""Creating and checking a store's streams (``aether.store._provision``) and its config.

Against the session's real nats-server: streams an operator (or an older aether) made are
created beforehand with raw JetStream API requests, then provisioned or refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, timedelta
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from aether import Event
from aether.errors import (
    AetherError,
    JetStreamError,
    StreamNotFoundError,
    UnsuitableStreamError,
)
from aether.store import JetStreamEventStore
from aether.store._jsapi import NS_PER_SECOND, JsApi
from aether.store._provision import (
    StreamSettings,
    _create,
    check_events_stream,
    find,
    provision,
)
from aether.store._subjects import (
    META_KIND,
    META_NAMESPACE,
    META_STREAM,
    legacy_stream_name,
    real_stream_name,
)
from aether.store.config import InvalidConfigError, JetStreamConfig

from ._stores import unique

CONFIG = JetStreamConfig(storage="memory")
NS = NS_PER_SECOND


#: A store whose retries fit in a 10 s duplicate window.
CONFIG_QUICK = JetStreamConfig(
    request_timeout=timedelta(seconds=1), retry_deadline=timedelta(seconds=5)
)


async def find_settings(
    api: JsApi, namespace: str, name: str, config: JetStreamConfig | None
) -> tuple[StreamSettings, StreamSettings | None]:
    """:func:`find`'s streams as their settings."""
    events, snapshots = await find(api, namespace, name, config)
    return events.settings, None if snapshots is None else snapshots.settings


class Streams:
    """Raw JetStream calls for the tests; deletes every stream it saw at the end."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.api = JsApi(nc, request_timeout=2, retry_deadline=5)
        self.names: set[str] = set()

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.names.add(body["name"])
        return await self.api.call(f"STREAM.CREATE.{body['name']}", {"storage": "memory", **body})

    async def info(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.api.call(f"STREAM.INFO.{name}")
        except JetStreamError:
            return None

    async def publish(self, subject: str, data: bytes = b"{}") -> None:
        ack = await self.api.request(subject, data)
        assert "error" not in ack[0], ack

    def track(self, *settings: StreamSettings | None) -> None:
        self.names.update(s.name for s in settings if s is not None)

    async def provision(
        self, namespace: str, name: str, config: JetStreamConfig = CONFIG, *, atomic: bool = True
    ) -> tuple[StreamSettings, StreamSettings]:
        self.names.add(real_stream_name(namespace, name))
        self.names.add(real_stream_name(namespace, name) + "_snapshots")
        events, snapshots = await provision(self.api, namespace, name, config, atomic=atomic)
        self.track(events, snapshots)
        return events, snapshots

    async def cleanup(self) -> None:
        for name in self.names:
            with contextlib.suppress(JetStreamError):
                await self.api.call(f"STREAM.DELETE.{name}")


@pytest.fixture
async def streams(nc: Client) -> AsyncIterator[Streams]:
    helper = Streams(nc)
    try:
        yield helper
    finally:
        await helper.cleanup()


def _state(info: dict[str, Any] | None) -> tuple[dict[str, Any], int, str] | None:
    """What must not change: the stream's config, message count and creation time."""
    if info is None:
        return None
    return info["config"], info["state"]["messages"], info["created"]


def _without_server_keys(config: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in config.get("metadata", {}).items() if not k.startswith("_nats.")}
    return {**config, "metadata": metadata}


# -- creating -----------------------------------------------------------------------------


async def test_provision_creates_both_streams(streams: Streams) -> None:
    name = unique("prov")
    events, snapshots = await streams.provision("tenant.a", name)
    real = real_stream_name("tenant.a", name)
    assert events.name == real == f"tenant_2Ea__{name}"
    assert events.subjects == (f"{real}.events.>",)
    assert events.retention == "limits"
    assert events.discard == "old"
    assert events.storage == "memory"
    assert events.replicas == 1
    assert events.max_age is None  # kept forever by default
    assert events.max_msgs is events.max_bytes is events.max_msgs_per_subject is None
    assert events.duplicate_window == timedelta(minutes=2)
    assert events.allow_atomic
    assert events.created.tzinfo is not None
    assert {k: v for k, v in events.metadata.items() if k.startswith("aether.")} == {
        META_KIND: "events",
        META_NAMESPACE: "tenant.a",  # the raw namespace, not a sanitised one
        META_STREAM: name,
    }
    assert snapshots.name == f"{real}_snapshots"
    assert snapshots.subjects == (f"{real}.snapshots.>",)
    assert snapshots.max_msgs_per_subject == 1
    assert snapshots.metadata[META_KIND] == "snapshots"
    assert snapshots.metadata[META_NAMESPACE] == "tenant.a"

    # Again: the same streams, nothing created anew (same creation time).
    again, again_snapshots = await streams.provision("tenant.a", name)
    assert again == events
    assert again_snapshots == snapshots
    assert await find_settings(streams.api, "tenant.a", name, CONFIG) == (events, snapshots)


async def test_settings_from_the_server_answer(streams: Streams) -> None:
    name = unique("info")
    events, _ = await streams.provision("", name)
    info = await streams.info(name)
    assert info is not None
    assert StreamSettings.from_info(info) == events
    assert events.created.astimezone(UTC).isoformat()[:26] == info["created"][:26]


async def test_retention_sets_max_age(streams: Streams) -> None:
    config = JetStreamConfig(storage="memory", stream_retention=timedelta(days=2))
    events, snapshots = await streams.provision("", unique("ret"), config)
    assert events.max_age == timedelta(days=2)
    assert snapshots.max_age is None


async def test_duplicate_window_follows_the_config(streams: Streams) -> None:
    config = JetStreamConfig(storage="memory", duplicate_window=timedelta(minutes=10))
    events, _ = await streams.provision("", unique("dup"), config)
    assert events.duplicate_window == timedelta(minutes=10)


async def test_without_atomic_nothing_is_turned_on(streams: Streams) -> None:
    events, _ = await streams.provision("", unique("noatomic"), atomic=False)
    assert not events.allow_atomic


async def test_concurrent_provisions_agree(streams: Streams, nats_url: str) -> None:
    name = unique("race")
    clients = [await nats.connect(nats_url) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(
                provision(
                    JsApi(c, request_timeout=2, retry_deadline=5), "ns", name, CONFIG, atomic=True
                )
                for c in clients
            )
        )
    finally:
        for client in clients:
            await client.close()
    for events, snapshots in results:
        streams.track(events, snapshots)
    assert len({events.created for events, _ in results}) == 1
    assert len({snapshots.created for _, snapshots in results}) == 1


async def test_a_stream_created_meanwhile_is_checked(streams: Streams) -> None:
    # provision saw no stream, then another process created one with other settings
    # before our STREAM.CREATE: it is used only if suitable.
    name = unique("meanwhile")
    await _events_stream(retention="interest")(streams, name)
    body = {"name": name, "subjects": [f"{name}.events.>"], "storage": "memory"}
    with pytest.raises(UnsuitableStreamError) as info:
        await _create(streams.api, body, lambda s: check_events_stream(s, "", name, CONFIG))
    assert info.value.setting == "retention"
    other = unique("meanwhile")
    await _events_stream(max_age=3600 * NS)(streams, other)
    body = {"name": other, "subjects": [f"{other}.events.>"], "storage": "memory"}
    found = await _create(streams.api, body, lambda s: check_events_stream(s, "", other, CONFIG))
    assert found.settings.max_age == timedelta(hours=1)


async def test_find_creates_nothing(streams: Streams) -> None:
    name = unique("find")
    with pytest.raises(StreamNotFoundError) as info:
        await find_settings(streams.api, "ns", name, CONFIG)
    assert info.value.stream_name == real_stream_name("ns", name)
    assert await streams.info(real_stream_name("ns", name)) is None
    # An events stream without a snapshot stream: found, snapshots None.
    real = real_stream_name("", name)
    await streams.create({"name": real, "subjects": [f"{real}.events.>"]})
    events, snapshots = await find_settings(streams.api, "", name, CONFIG)
    assert events.name == real
    assert snapshots is None
    assert await streams.info(f"{real}_snapshots") is None


# -- the operator's settings are kept -------------------------------------------------------


async def test_operator_limits_are_kept(streams: Streams) -> None:
    name = unique("op")
    await streams.create(
        {
            "name": name,
            "subjects": [f"{name}.events.>", "other.>"],
            "max_age": 3600 * NS,
            "max_bytes": 10_000_000,
            "max_msgs": 1000,
            "discard": "old",
            "duplicate_window": 60 * NS,
            "storage": "memory",
        }
    )
    await streams.publish(f"{name}.events.a")
    before = await streams.info(name)
    events, _ = await streams.provision("", name)
    assert events.max_age == timedelta(hours=1)
    assert events.max_bytes == 10_000_000
    assert events.max_msgs == 1000
    assert events.duplicate_window == timedelta(minutes=1)
    assert events.subjects == (f"{name}.events.>", "other.>")
    assert events.allow_atomic and events.allow_direct  # the only changes made
    after = await streams.info(name)
    assert before is not None and after is not None
    # The server's own "_nats.*" metadata records the feature level the update needs.
    assert _without_server_keys(after["config"]) == {
        **_without_server_keys(before["config"]),
        "allow_atomic": True,
        "allow_direct": True,
    }
    assert after["state"]["messages"] == 1


# -- unsuitable streams are refused, nothing written ----------------------------------------

Bad = Callable[[Streams, str], Awaitable[None]]


def _events_stream(**settings: Any) -> Bad:
    async def make(streams: Streams, name: str) -> None:
        body = {"name": name, "subjects": [f"{name}.events.>"], **settings}
        await streams.create(body)
        subject = body["subjects"][0].replace(">", "a")
        if settings.get("no_ack"):  # no answer to wait for
            await streams.nc.publish(subject, b"{}")
            await streams.nc.flush()
            for _ in range(200):
                if ((await streams.info(name)) or {})["state"]["messages"]:
                    break
                await asyncio.sleep(0.01)
        else:
            await streams.publish(subject)

    return make


async def _mirror(streams: Streams, name: str) -> None:
    source = f"{name}-src"
    await streams.create({"name": source, "subjects": [f"{name}.events.>"]})
    await streams.publish(f"{name}.events.a")
    await streams.create({"name": name, "mirror": {"name": source}})


async def _sealed(streams: Streams, name: str) -> None:
    await _events_stream()(streams, name)
    info = await streams.info(name)
    assert info is not None
    await streams.api.call(f"STREAM.UPDATE.{name}", {**info["config"], "sealed": True})


UNSUITABLE: dict[str, tuple[Bad, str]] = {
    "interest": (_events_stream(retention="interest"), "retention"),
    "workqueue": (_events_stream(retention="workqueue"), "retention"),
    "per-subject limit": (_events_stream(max_msgs_per_subject=1), "max_msgs_per_subject"),
    "discard new + max_msgs": (_events_stream(discard="new", max_msgs=100), "discard"),
    "discard new + max_bytes": (_events_stream(discard="new", max_bytes=10**6), "discard"),
    "discard new + max_age": (_events_stream(discard="new", max_age=3600 * NS), "discard"),
    "discard_new_per_subject": (
        _events_stream(discard="new", discard_new_per_subject=True, max_msgs_per_subject=10),
        "discard_new_per_subject",
    ),
    # nats-server refuses windows under 100 ms: 200 ms stands for "far too short".
    "short duplicate window": (_events_stream(duplicate_window=NS // 5), "duplicate_window"),
    "no ack": (_events_stream(no_ack=True), "no_ack"),
    "mirror": (_mirror, "mirror"),
    "sealed": (_sealed, "sealed"),
    "other subjects": (
        lambda streams, name: _events_stream(subjects=[f"{name}.other.>"])(streams, name),
        "subjects",
    ),
    "another pair's stream": (
        _events_stream(metadata={META_KIND: "events", META_NAMESPACE: "x", META_STREAM: "y"}),
        "metadata",
    ),
    "a snapshot stream": (
        _events_stream(metadata={META_KIND: "snapshots", META_NAMESPACE: "", META_STREAM: "z"}),
        "metadata",
    ),
}


@pytest.mark.parametrize("case", UNSUITABLE)
async def test_unsuitable_events_stream_is_refused(streams: Streams, case: str) -> None:
    make, setting = UNSUITABLE[case]
    name = unique("bad")
    await make(streams, name)
    before = _state(await streams.info(name))
    for attempt in ("provision", "find"):
        with pytest.raises(UnsuitableStreamError) as info:
            if attempt == "provision":
                await provision(streams.api, "", name, CONFIG, atomic=True)
            else:
                await find_settings(streams.api, "", name, CONFIG)
        error = info.value
        assert isinstance(error, AetherError)
        assert error.stream_name == name
        assert error.setting == setting
        assert f": {setting}: " in str(error)
        assert "aether" in str(error)
        # Nothing written or changed: not the stream, not a snapshot stream.
        assert _state(await streams.info(name)) == before
        assert await streams.info(f"{name}_snapshots") is None
    assert pickle.loads(pickle.dumps(error)).setting == setting


def test_refusal_messages_say_what_is_required() -> None:
    error = UnsuitableStreamError("s", "retention", "is 'interest'; aether needs 'limits'")
    assert str(error) == "stream 's' is unsuitable for aether: retention: is 'interest'; " + (
        "aether needs 'limits'"
    )


async def test_duplicate_window_is_judged_by_the_config(streams: Streams) -> None:
    name = unique("win")
    await _events_stream(duplicate_window=10 * NS)(streams, name)
    quick = JetStreamConfig(
        storage="memory",
        request_timeout=timedelta(seconds=1),
        retry_deadline=timedelta(seconds=5),
    )
    events, _ = await streams.provision("", name, quick)  # 10 s >= 5 s + 1 s: fine
    assert events.duplicate_window == timedelta(seconds=10)
    with pytest.raises(UnsuitableStreamError, match=r"duplicate_window: is 10s.*32s"):
        await find_settings(streams.api, "", name, CONFIG)  # the default needs 30 s + 2 s
    # Without a config (readers, the admin API) the window is not judged.
    events, _ = await find_settings(streams.api, "", name, None)
    assert events.duplicate_window == timedelta(seconds=10)


async def test_attach_reads_a_stream_with_a_short_window_but_refuses_to_append(
    streams: Streams,
) -> None:
    name = unique("win")
    await streams.create(
        {
            "name": name,
            "subjects": [f"{name}.events.>"],
            "duplicate_window": 10 * NS,
            "allow_atomic": True,
        }
    )
    writer = await JetStreamEventStore.attach(streams.nc, name, CONFIG_QUICK)
    await writer.save_event(Event("Opened", "acc", 1))  # 10 s covers 5 s + 1 s of retries
    store = await JetStreamEventStore.attach(streams.nc, name, CONFIG)  # needs 32 s
    assert [e.version for e in await store.get_events("acc")] == [1]
    assert await store.get_latest_version("acc") == 1
    for append in (
        store.save_event(Event("Deposited", "acc", 2)),
        store.save_events([Event("Deposited", "acc", 2), Event("Deposited", "acc", 3)]),
    ):
        with pytest.raises(UnsuitableStreamError, match="duplicate_window"):
            await append
    assert await store.get_latest_version("acc") == 1  # nothing written
    await store.close()
    await writer.close()


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"retention": "interest"}, "retention"),
        ({"discard": "new", "max_msgs": 10}, "discard"),
        ({"subjects": ["elsewhere.>"]}, "subjects"),
    ],
)
async def test_unsuitable_snapshot_stream_is_refused(
    streams: Streams, settings: dict[str, Any], setting: str
) -> None:
    name = unique("snap")
    await streams.create(
        {"name": f"{name}_snapshots", "subjects": [f"{name}.snapshots.>"], **settings}
    )
    before = _state(await streams.info(f"{name}_snapshots"))
    with pytest.raises(UnsuitableStreamError) as info:
        await provision(streams.api, "", name, CONFIG, atomic=True)
    assert info.value.setting == setting
    assert info.value.stream_name == f"{name}_snapshots"
    # Checked before anything was created: no events stream either.
    assert await streams.info(name) is None
    assert _state(await streams.info(f"{name}_snapshots")) == before


async def test_operator_snapshot_stream_without_limit_is_fine(streams: Streams) -> None:
    name = unique("snapok")
    await streams.create({"name": f"{name}_snapshots", "subjects": [f"{name}.snapshots.>"]})
    _, snapshots = await streams.provision("", name)
    assert snapshots.max_msgs_per_subject is None


# -- namespaces: distinct streams, legacy streams -------------------------------------------


async def test_colliding_pairs_get_distinct_streams(streams: Streams) -> None:
    acme = unique("acme")
    first, first_snapshots = await streams.provision(acme, "prod_orders")
    second, second_snapshots = await streams.provision(f"{acme}_prod", "orders")
    assert first.name != second.name
    assert first_snapshots.name != second_snapshots.name
    await streams.publish(f"{first.name}.events.a")
    assert (await streams.info(second.name) or {})["state"]["messages"] == 0


async def _legacy(streams: Streams, namespace: str, name: str, *, metadata: bool = True) -> str:
    """A stream as aether created it before the injective names, with one event."""
    legacy = legacy_stream_name(namespace, name)
    assert legacy is not None
    sanitised = legacy.removesuffix(f"_{name}")
    await streams.create(
        {
            "name": legacy,
            "subjects": [f"{legacy}.events.>"],
            "max_age": 365 * 86400 * NS,
            "duplicate_window": 120 * NS,
            **(
                {
                    "metadata": {
                        META_KIND: "events",
                        META_NAMESPACE: sanitised,
                        META_STREAM: name,
                    }
                }
                if metadata
                else {}
            ),
        }
    )
    await streams.publish(f"{legacy}.events.a")
    return legacy


async def test_legacy_stream_is_used_by_its_own_pair(streams: Streams) -> None:
    acme = unique("acme")
    legacy = await _legacy(streams, acme, "prod_orders")
    events, snapshots = await find_settings(streams.api, acme, "prod_orders", CONFIG)
    assert events.name == legacy
    assert snapshots is None
    events, snapshots = await streams.provision(acme, "prod_orders")
    assert events.name == legacy
    assert events.max_age == timedelta(days=365)  # the operator's (old default) kept
    assert snapshots.name == f"{legacy}_snapshots"
    assert snapshots.subjects == (f"{legacy}.snapshots.>",)
    assert await streams.info(real_stream_name(acme, "prod_orders")) is None


async def test_legacy_stream_is_not_handed_to_a_colliding_pair(
    streams: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    acme = unique("acme")
    legacy = await _legacy(streams, acme, "prod_orders")
    before = _state(await streams.info(legacy))
    with pytest.raises(StreamNotFoundError):
        await find_settings(streams.api, f"{acme}_prod", "orders", CONFIG)
    events, _ = await streams.provision(f"{acme}_prod", "orders")
    assert events.name == real_stream_name(f"{acme}_prod", "orders") != legacy
    assert (await streams.info(events.name) or {})["state"]["messages"] == 0
    assert _state(await streams.info(legacy)) == before
    assert "not exactly this pair" in caplog.text


@pytest.mark.parametrize("metadata", [True, False])
async def test_ambiguous_legacy_streams_are_not_used(streams: Streams, metadata: bool) -> None:
    # A namespace that needed sanitising ("a.b" was recorded as "a_b"), or no metadata at
    # all: it cannot be told whose stream it is.
    namespace = f"{unique('t')}.eu"
    legacy = await _legacy(streams, namespace, "orders", metadata=metadata)
    with pytest.raises(StreamNotFoundError):
        await find_settings(streams.api, namespace, "orders", CONFIG)
    events, _ = await streams.provision(namespace, "orders")
    assert events.name != legacy


async def test_new_name_held_by_another_pairs_legacy_stream_is_refused(streams: Streams) -> None:
    # ("x.", "orders") was "x__orders" in the old layout: the new name of ("x", "orders").
    x = unique("x")
    legacy = await _legacy(streams, f"{x}.", "orders")
    assert legacy == real_stream_name(x, "orders")
    with pytest.raises(UnsuitableStreamError) as info:
        await streams.provision(x, "orders")
    assert info.value.setting == "metadata"
    assert await streams.info(f"{legacy}_snapshots") is None


# -- the config -----------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = JetStreamConfig(
        namespace="",
        stream_retention=timedelta(0),
        replica_count=0,
        version_cache_size=0,
        duplicate_window=timedelta(0),
    )
    assert config == JetStreamConfig()
    assert config.stream_retention is None  # events are kept forever
    assert config.duplicate_window == timedelta(minutes=2)
    assert config.min_duplicate_window == timedelta(seconds=32)
    assert JetStreamConfig(stream_retention=None, request_timeout=None) == config  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"replica_count": -1}, "replica_count"),
        ({"replica_count": 6}, "replica_count"),
        ({"replica_count": True}, "replica_count"),
        ({"replica_count": 1.0}, "replica_count"),
        ({"replica_count": "3"}, "replica_count"),
        ({"storage": "tape"}, "storage"),
        ({"storage": 1}, "storage"),
        ({"namespace": 42}, "namespace"),
        ({"namespace": "\ud800"}, "namespace"),
        ({"namespace": "ü" * 100}, "namespace"),
        ({"version_cache_size": -5}, "version_cache_size"),
        ({"version_cache_size": False}, "version_cache_size"),
        ({"replay_batch_size": 10_001}, "replay_batch_size"),
        ({"replay_batch_size": -1}, "replay_batch_size"),
        ({"request_timeout": 2}, "request_timeout"),
        ({"request_timeout": timedelta(seconds=-1)}, "request_timeout"),
        ({"retry_deadline": timedelta(seconds=-1)}, "retry_deadline"),
        ({"retry_deadline": 30.0}, "retry_deadline"),
        ({"stream_retention": timedelta(seconds=30)}, "stream_retention"),
        ({"stream_retention": timedelta(minutes=2)}, "stream_retention"),
        ({"stream_retention": timedelta(days=-1)}, "stream_retention"),
        ({"stream_retention": 3600}, "stream_retention"),
        ({"duplicate_window": timedelta(seconds=10)}, "duplicate_window"),
        ({"duplicate_window": timedelta(milliseconds=50)}, "duplicate_window"),
        ({"retry_deadline": timedelta(minutes=5)}, "duplicate_window"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        JetStreamConfig(**kwargs)
    assert info.value.field == field
    assert f"JetStreamConfig.{field} " in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AetherError)
    assert pickle.loads(pickle.dumps(info.value)).field == field


def test_config_accepts_what_the_server_accepts() -> None:
    config = JetStreamConfig(
        stream_retention=timedelta(minutes=3),
        replica_count=5,
        replay_batch_size=10_000,
        namespace="any tenant.eu/*>",
    )
    assert config.stream_retention == timedelta(minutes=3)
    long_retry = JetStreamConfig(
        retry_deadline=timedelta(minutes=5), duplicate_window=timedelta(minutes=6)
    )
    assert long_retry.min_duplicate_window == timedelta(minutes=5, seconds=2)
    tiny = JetStreamConfig(
        request_timeout=timedelta(milliseconds=10),
        retry_deadline=timedelta(milliseconds=20),
        duplicate_window=timedelta(milliseconds=100),
        stream_retention=timedelta(milliseconds=101),
    )
    assert tiny.duplicate_window == timedelta(milliseconds=100)


def test_duplicate_window_message_explains_why() -> None:
    with pytest.raises(ValueError, match="stored twice"):
        JetStreamConfig(retry_deadline=timedelta(minutes=5))
    with pytest.raises(ValueError, match=r"stream_retention \(30s\) must exceed"):
        JetStreamConfig(stream_retention=timedelta(seconds=30))
