"""Replays of large events (issue fault 7): a replay must never overflow the client.

nats-server drops a client whose outbound buffer exceeds ``max_pending`` (64 MiB by
default) as a "Slow Consumer", and nats-py drops messages of a subscription holding more
than its pending limits. A replay used to keep two pull requests of ``replay_batch_size``
messages in flight whatever their size: 1,000 events of 100 KB at once. It now also bounds
the bytes its pull requests may bring (``max_bytes``), and goes on after a pull the server
ended at that bound.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from aether import Event, JetStreamError
from aether.store import JetStreamConfig, JetStreamEventStore, _jsapi

from ._stores import unique

MEMORY = JetStreamConfig(storage="memory")


class Conn:
    """A connection that never reconnects and records every error it reports."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.nc = Client()

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(exc)

    def assert_intact(self) -> None:
        """Still connected, never reconnected, no error: neither nats-py's "Slow
        Consumer" nor the reset with which the server cuts off a slow consumer."""
        assert self.nc.is_connected
        assert self.nc.stats["reconnects"] == 0
        assert not [e for e in self.errors if isinstance(e, nats.errors.SlowConsumerError)]
        assert self.errors == []


@pytest.fixture
async def conn(nats_url: str) -> AsyncIterator[Conn]:
    c = Conn()
    await c.nc.connect(nats_url, allow_reconnect=False, error_cb=c.on_error)
    yield c
    await c.nc.close()


@contextlib.asynccontextmanager
async def opened(
    nats_url: str, nc: Client, config: JetStreamConfig = MEMORY
) -> AsyncIterator[JetStreamEventStore]:
    """A store on *nc* and a fresh stream, deleted afterwards (it holds a lot of data)."""
    store = await JetStreamEventStore.open(nc, unique("big"), config)
    try:
        yield store
    finally:
        async with await nats.connect(nats_url) as admin:
            js = admin.jetstream()
            for stream in (store.stream_name, f"{store.stream_name}_snapshots"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream)


def blob_event(actor: str, version: int, size: int) -> Event:
    return Event(event_type="Blob", actor_id=actor, version=version, data={"blob": "x" * size})


async def write(store: JetStreamEventStore, actor: str, sizes: list[int], per_batch: int) -> None:
    """Append events of *sizes* (data bytes) to *actor*, *per_batch* per atomic batch."""
    for start in range(0, len(sizes), per_batch):
        chunk = sizes[start : start + per_batch]
        await store.save_events(
            [blob_event(actor, start + i + 1, size) for i, size in enumerate(chunk)],
            expected_version=start,
        )


def check(events: list[Event], sizes: list[int]) -> None:
    assert [e.version for e in events] == list(range(1, len(sizes) + 1))
    assert [len(e.data["blob"]) for e in events] == sizes


def near_max_payload(nc: Client) -> int:
    # save_event refuses a payload above max_payload - 256 - len(id) (id: a 36-char uuid);
    # the event's JSON envelope around its data takes a few hundred bytes.
    return nc.max_payload - 256 - 36 - 1024


@pytest.mark.slow
@pytest.mark.parametrize(
    ("count", "size", "per_batch"),
    [(1100, 100_000, 50), (160, None, 8)],
    ids=["1100x100KB", "160x1MB"],
)
async def test_replay_of_large_events_keeps_the_connection(
    nats_url: str, conn: Conn, count: int, size: int | None, per_batch: int
) -> None:
    """The regression: 110 MB (or 160 MB) of history on one connection that cannot
    reconnect. Before the fix the server cut the client off as a slow consumer."""
    sizes = [size or near_max_payload(conn.nc)] * count
    async with opened(nats_url, conn.nc) as store:
        await write(store, "big", sizes, per_batch)
        retries = store.stats.retries

        check(await store.get_events("big"), sizes)
        conn.assert_intact()

        streamed = [event async for event in store.iter_events("big")]
        check(streamed, sizes)
        conn.assert_intact()
        assert store.stats.retries == retries  # no stalled replay resumed either


async def test_pull_ended_by_max_bytes_is_continued(nats_url: str, conn: Conn) -> None:
    """500 events of 40 KB are 20 MB: more than one pull may bring, so a replay with
    batches of 500 needs more pulls than the message count alone calls for."""
    sizes = [40_000] * 500
    config = JetStreamConfig(storage="memory", replay_batch_size=500)
    async with opened(nats_url, conn.nc, config) as store:
        await write(store, "acct", sizes, 100)
        before = conn.nc.stats["out_msgs"]
        check(await store.get_events("acct"), sizes)
        # Besides the pulls: the consumer's creation and deletion.
        pulls = conn.nc.stats["out_msgs"] - before - 2
        assert pulls >= 3  # 20 MB at most 8 MiB a pull
        conn.assert_intact()


@pytest.mark.parametrize("pulls", [1, 2])
@pytest.mark.parametrize("batch", [1, 3, 10, 500])
async def test_pulls_ended_by_bytes_and_by_count_mixed(
    nats_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch, batch: int, pulls: int
) -> None:
    """The smallest budget (each pull admits one message of max_payload, no more; one or
    two pulls in flight), events of random sizes: pulls end by their byte bound, their
    message count, or the end of the subject in every order, and each is followed by the
    next."""
    one_message = conn.nc.max_payload + _jsapi._REPLAY_MSG_OVERHEAD
    monkeypatch.setattr(_jsapi, "_REPLAY_BYTES_IN_FLIGHT", pulls * one_message)
    assert _jsapi._replay_window(conn.nc.max_payload) == (pulls, one_message)
    rng = random.Random(7)
    sizes = [rng.choice([10, 1_000, 30_000, 200_000, 600_000]) for _ in range(120)]
    config = JetStreamConfig(storage="memory", replay_batch_size=batch)
    async with opened(nats_url, conn.nc, config) as store:
        await write(store, "mix", sizes, 20)
        check(await store.get_events("mix"), sizes)
        # A replay from the middle starts its consumer past the first message.
        tail = await store.get_events("mix", from_version=61)
        assert [e.version for e in tail] == list(range(61, 121))
        conn.assert_intact()


async def test_a_pull_refused_as_more_than_pending_does_not_end_the_replay(
    nats_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages deleted after the consumer counted them: the second pull finds the first
    already covering everything left, and the server refuses it (408 Requests Pending).
    That ends only that pull: the first still brings what is left."""
    real_create = _jsapi.JsApi._create_consumer

    async def create_then_delete(
        api: _jsapi.JsApi, stream: str, subject: str, start_seq: int
    ) -> tuple[str, int] | None:
        created = await real_create(api, stream, subject, start_seq)
        js = conn.nc.jetstream()
        for seq in range(2, 41):
            await js.delete_msg(stream, seq)
        return created

    monkeypatch.setattr(_jsapi.JsApi, "_create_consumer", create_then_delete)
    config = JetStreamConfig(storage="memory", replay_batch_size=4)
    async with opened(nats_url, conn.nc, config) as store:
        await write(store, "acct", [10] * 40, 40)
        assert [e.version for e in await store.get_events("acct")] == [1]
        assert store.stats.retries == 0
        conn.assert_intact()


async def test_a_message_larger_than_a_pull_is_an_error_not_a_loop(
    nats_url: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull's max_bytes admits the largest message the server accepts; should a stored
    message be larger still, each pull would end with nothing delivered. The replay
    says so instead of sending pulls forever."""
    monkeypatch.setattr(_jsapi, "_replay_window", lambda max_payload: (2, 4_000))
    async with opened(nats_url, conn.nc) as store:
        await write(store, "acct", [100, 10_000, 100], 3)
        with pytest.raises(JetStreamError, match="larger than 4000 bytes"):
            await store.get_events("acct")
        conn.assert_intact()
