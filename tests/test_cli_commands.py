"""The inspection and append commands, in-process (click's CliRunner) against a real server.

Every test uses its own stream (the session server is shared). Errors a user can cause
must be one line (``Error: ...``) with the documented exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import pytest
from click.testing import CliRunner, Result
from nats.aio.client import Client
from nats.js.api import RetentionPolicy

from aether import (
    ActorSnapshot,
    Event,
    EventTooLargeError,
    InvalidEventError,
    JetStreamError,
    JetStreamNotEnabledError,
    ReplayError,
    StoreUnavailableError,
    StreamExistsError,
    StreamNotFoundError,
    UnsuitableStreamError,
    UnsupportedServerError,
    VersionConflictError,
)
from aether.cli import cli
from aether.cli._connect import connect
from aether.cli._errors import (
    EXIT_CONFLICT,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    ConnectionConfigError,
    translate_errors,
)
from aether.cli._output import format_time
from aether.cli.events import format_row
from aether.cli.stream import format_duration, parse_duration
from aether.store import InvalidConfigError, JetStreamConfig, JetStreamEventStore
from aether.testing import NatsServer

from ._stores import unique

T = TypeVar("T")
NATS_ENV = (
    "NATS_URL",
    "NATS_CREDS",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
)
UNREACHABLE = "nats://127.0.0.1:1"


@pytest.fixture(autouse=True)
def _no_nats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection settings come from each test's arguments, not the developer's shell."""
    for name in NATS_ENV:
        monkeypatch.delenv(name, raising=False)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


def aether(*args: str, url: str | None = None, **kwargs: Any) -> Result:
    """Run ``aether <args> [--url url]`` in-process."""
    full = [*args, "--url", url] if url else list(args)
    return CliRunner().invoke(cli, full, catch_exceptions=False, **kwargs)


def assert_one_line_error(result: Result, exit_code: int, *fragments: str) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def json_lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


class Streams:
    """Fresh stream names for a test; all their streams are deleted afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.created: list[str] = []

    def name(self) -> str:
        name = unique("cli")
        self.created.append(name)
        return name

    async def open(self, name: str, namespace: str = "") -> tuple[Client, JetStreamEventStore]:
        nc = await nats.connect(self.url)
        store = await JetStreamEventStore.open(nc, name, JetStreamConfig(namespace=namespace))
        self.created.append(store.stream_name)
        return nc, store

    async def seed(self, name: str, events: list[Event], namespace: str = "") -> None:
        nc, store = await self.open(name, namespace)
        try:
            for event in events:
                await store.save_event(event)
        finally:
            await nc.close()

    async def cleanup(self) -> None:
        async with await nats.connect(self.url) as nc:
            js = nc.jetstream()
            for name in self.created:
                for stream in (name, f"{name}_snapshots"):
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await js.delete_stream(stream)


@pytest.fixture
def streams(nats_url: str) -> Iterator[Streams]:
    tracker = Streams(nats_url)
    yield tracker
    run(tracker.cleanup)


def ev(actor: str, version: int, event_type: str = "Deposited", **data: Any) -> Event:
    return Event(event_type, actor, version, data)


# -- help -------------------------------------------------------------------------------------

NATS_COMMANDS = ("demo", "streams", "stream", "actors", "events", "tail", "append", "snapshot")
NATS_SUBCOMMANDS = [
    *(("demo", "streams", "actors", "events", "tail", "append", "snapshot")),
    "stream info",
    "stream create",
    "stream delete",
]
CONNECTION_OPTIONS = (
    "--url",
    "--creds",
    "--user",
    "--password",
    "--token",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
)


def test_help_lists_every_command_and_the_exit_codes() -> None:
    result = aether("--help")
    assert result.exit_code == 0
    for command in ("server", *NATS_COMMANDS):
        assert f"  {command} " in result.stdout, command
    assert "Exit codes:" in result.stdout
    codes = dict(
        line.strip().split("  ", 1)
        for line in result.stdout.split("Exit codes:")[1].splitlines()
        if line.strip()
    )
    assert codes["2"].startswith("usage error"), codes
    assert codes["4"].startswith("conflict"), codes
    assert codes["7"].startswith("cannot connect"), codes
    assert (EXIT_USAGE, EXIT_UNREACHABLE) == (2, 7)


def test_usage_errors_and_unreachable_servers_have_their_own_codes(nats_url: str) -> None:
    bad_version = aether("append", "acc", "T", "--version", "0", url=UNREACHABLE)
    assert bad_version.exit_code == EXIT_USAGE
    assert "Invalid value for '--version'" in bad_version.stderr
    bad_stream = aether("events", "acc", "-s", "bad.name", url=nats_url)
    assert bad_stream.exit_code == EXIT_USAGE
    unreachable = aether("streams", url=UNREACHABLE)
    assert unreachable.exit_code == EXIT_UNREACHABLE != EXIT_USAGE


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:4222", "https://nats.example.com", "nats://a:4222,HTTP://b:4222"]
)
def test_a_url_with_another_scheme_is_a_usage_error(url: str) -> None:
    result = aether("streams", url=url)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "is not a NATS URL scheme (use nats://, tls://, ws://, wss://)" in result.stderr
    assert "Traceback" not in result.stderr
    from_env = aether("events", "acc", env={"NATS_URL": url})
    assert from_env.exit_code == EXIT_USAGE
    assert "NATS_URL" in from_env.stderr


def test_connect_refuses_another_scheme_too() -> None:
    with pytest.raises(ConnectionConfigError, match="http:// is not a NATS URL scheme"):
        run(lambda: connect("http://127.0.0.1:4222", name="test"))


@pytest.mark.parametrize("command", NATS_SUBCOMMANDS)
def test_every_nats_command_takes_the_connection_options(command: str) -> None:
    result = aether(*command.split(), "--help")
    assert result.exit_code == 0, result.output
    for option in CONNECTION_OPTIONS:
        assert option in result.stdout, (command, option)
    assert "NATS_URL" in result.stdout


# -- streams ----------------------------------------------------------------------------------


def test_streams_lists_aether_streams_with_their_counts(streams: Streams, nats_url: str) -> None:
    bank = streams.name()
    legacy = streams.name()
    foreign = streams.name()

    async def setup() -> None:
        await streams.seed(bank, [ev("a", 1), ev("a", 2), ev("b.1", 1)], namespace="tenant a")
        nc, store = await streams.open(bank, "tenant a")
        await store.save_snapshot(ActorSnapshot("a", 2, {"balance": 3}))
        js = nc.jetstream()
        # created without aether metadata (older aether, Go Aether): found by its subjects
        await js.add_stream(name=legacy, subjects=[f"{legacy}.events.>"])
        await js.publish(f"{legacy}.events.x", ev("x", 1).to_json())
        await js.add_stream(name=foreign, subjects=[f"{foreign}.>"])
        await js.publish(f"{foreign}.y", b"not aether")
        await nc.close()

    run(setup)
    rows = {row["stream"]: row for row in json_lines(aether("streams", "--json", url=nats_url))}
    real = f"tenant_20a__{bank}"  # the namespace escaped like an actor id, then "__"
    assert rows[real] == {
        "stream": real,
        "namespace": "tenant a",  # as given: what --namespace takes
        "name": bank,
        "actors": 2,
        "events": 3,
        "bytes": rows[real]["bytes"],
        "snapshots": 1,
        "metadata": True,
    }
    assert rows[real]["bytes"] > 0
    assert rows[legacy]["metadata"] is False
    assert (rows[legacy]["namespace"], rows[legacy]["name"], rows[legacy]["events"]) == (
        "",
        legacy,
        1,
    )
    assert foreign not in rows
    assert not [name for name in rows if name.endswith("_snapshots")]

    table = aether("streams", url=nats_url)
    assert table.exit_code == 0, table.output
    line = next(line for line in table.stdout.splitlines() if bank in line)
    assert line.split()[:6] == ["tenant", "a", bank, real, "2", "3"]
    # the row names the store for the other commands
    listed = aether("events", "a", "-N", "tenant a", "-s", bank, "--json", url=nats_url)
    assert [e["version"] for e in json_lines(listed)] == [1, 2]


# -- actors -----------------------------------------------------------------------------------

ODD_IDS = ["order-1", "a.b", "with space", "ünïcode", "star*>", "under_score"]


def test_actors_decodes_ids_and_takes_each_latest_version(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    history = [ev(actor, v) for i, actor in enumerate(ODD_IDS) for v in range(1, i + 2)]
    history += [ev("gaps", 1), ev("gaps", 5), ev("gaps", 9)]
    run(lambda: streams.seed(name, history))

    rows = json_lines(aether("actors", "-s", name, "--json", url=nats_url))
    expected = {actor: i + 1 for i, actor in enumerate(ODD_IDS)} | {"gaps": 9}
    assert {row["actor"]: row["version"] for row in rows} == expected
    assert [row["actor"] for row in rows] == sorted(expected)
    assert next(row for row in rows if row["actor"] == "gaps")["events"] == 3

    table = aether("actors", "-s", name, url=nats_url)
    assert table.exit_code == 0, table.output
    assert "with space" in table.stdout
    assert "ünïcode" in table.stdout

    prefixed = json_lines(aether("actors", "-s", name, "--prefix", "order", "--json", url=nats_url))
    assert prefixed == [{"actor": "order-1", "version": 1, "events": 1}]

    limited = aether("actors", "-s", name, "--limit", "2", "--json", url=nats_url)
    assert len(json_lines(limited)) == 2
    assert "showing 2 of 7 actors" in limited.stderr

    none = aether("actors", "-s", name, "--prefix", "zzz", url=nats_url)
    assert none.exit_code == 0
    assert "no actors whose id starts with 'zzz'" in none.stderr


def test_actors_is_quick_with_thousands_and_truncates_at_the_limit(
    streams: Streams, nats_url: str
) -> None:
    name = streams.name()
    count = 1200

    async def setup() -> None:
        nc, store = await streams.open(name)
        limiter = asyncio.Semaphore(100)

        async def save(i: int) -> None:
            async with limiter:
                await store.save_event(ev(f"acct-{i:05d}", 1 + i % 3))

        await asyncio.gather(*(save(i) for i in range(count)))
        await nc.close()

    run(setup)
    result = aether("actors", "-s", name, "--json", url=nats_url)
    rows = json_lines(result)
    assert len(rows) == 1000  # the default --limit
    assert rows[0] == {"actor": "acct-00000", "version": 1, "events": 1}
    assert rows[-1] == {"actor": "acct-00999", "version": 1 + 999 % 3, "events": 1}
    assert "showing 1,000 of 1,200 actors" in result.stderr
    everything = aether("actors", "-s", name, "--limit", "0", "--json", url=nats_url)
    assert len(json_lines(everything)) == count
    assert "showing" not in everything.stderr


def test_actors_skips_subjects_aether_would_not_write(streams: Streams, nats_url: str) -> None:
    name = streams.name()

    async def setup() -> None:
        await streams.seed(name, [ev("ok", 1)])
        async with await nats.connect(nats_url) as nc:
            # a foreign writer's subject: not aether's encoding of any actor id
            await nc.jetstream().publish(f"{name}.events.x.y", b"{}")

    run(setup)
    result = aether("actors", "-s", name, "--json", url=nats_url)
    assert json_lines(result) == [{"actor": "ok", "version": 1, "events": 1}]
    assert "skipped 1 subject(s)" in result.stderr


def test_actors_takes_the_stream_as_an_option_like_every_command() -> None:
    for command in ("actors", "events", "tail", "append", "snapshot"):
        assert "-s, --stream NAME" in aether(command, "--help").stdout, command
    positional = aether("actors", "bank", url=UNREACHABLE)
    assert positional.exit_code == EXIT_USAGE
    assert "unexpected extra argument (bank)" in positional.stderr


def test_actors_of_a_missing_stream_is_not_found(nats_url: str) -> None:
    missing = unique("missing")
    result = aether("actors", "-s", missing, url=nats_url)
    assert_one_line_error(result, EXIT_NOT_FOUND, f"stream '{missing}' not found")


# -- events -----------------------------------------------------------------------------------


def _rows(result: Result) -> list[list[str]]:
    """The text rows of ``aether events``: version, time, type, data."""
    assert result.exit_code == 0, result.output
    return [line.split(None, 3) for line in result.stdout.splitlines()]


def test_events_shows_the_history_as_rows_and_as_json(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    history = [ev("acc", 1, "Opened", owner="ann"), ev("acc", 2, amount=5), ev("acc", 3, amount=7)]
    history[1].correlation_id = "corr-1"
    run(lambda: streams.seed(name, [*history, ev("other", 1)]))

    rows = _rows(aether("events", "acc", "--stream", name, url=nats_url))
    assert [(row[0], row[2], row[3]) for row in rows] == [
        ("1", "Opened", '{"owner":"ann"}'),
        ("2", "Deposited", '{"amount":5}'),
        ("3", "Deposited", '{"amount":7}'),
    ]
    assert rows[0][1] == format_time(history[0].timestamp)

    lines = aether("events", "acc", "--stream", name, "--json", url=nats_url).stdout.splitlines()
    assert [Event.from_json(line) for line in lines] == history

    later = aether("events", "acc", "-s", name, "--from", "3", "--json", url=nats_url)
    assert [Event.from_json(line).version for line in later.stdout.splitlines()] == [3]

    none_after = aether("events", "acc", "-s", name, "--from", "4", url=nats_url)
    assert none_after.exit_code == 0
    assert none_after.stdout == ""
    assert "no events from version 4" in none_after.stderr


def test_events_rows_line_up() -> None:
    short, long = ev("a", 7, "Opened", x=1), ev("a", 12, "Deposited", x=2)
    first, second = format_row(short, width=2), format_row(long, width=2)
    assert first.startswith(" 7  ") and second.startswith("12  ")
    assert first.index('{"x":1}') == second.index('{"x":2}')


GAPS = [1, 5, 9, 20, 21]


@pytest.mark.parametrize(
    ("args", "versions"),
    [
        (("--limit", "2"), [1, 5]),
        (("--limit", "99"), GAPS),
        (("--from", "6", "--limit", "1"), [9]),
        (("--last", "1"), [21]),
        (("--last", "3"), [9, 20, 21]),  # versions have gaps: the window widens
        (("--last", "5"), GAPS),
        (("--last", "50"), GAPS),
        (("--from", "6", "--last", "3"), [9, 20, 21]),
        (("--from", "10", "--last", "5"), [20, 21]),
    ],
)
def test_events_limit_and_last(
    streams: Streams, nats_url: str, args: tuple[str, ...], versions: list[int]
) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("acc", v) for v in GAPS]))
    as_json = aether("events", "acc", "-s", name, *args, "--json", url=nats_url)
    assert [e["version"] for e in json_lines(as_json)] == versions
    rows = _rows(aether("events", "acc", "-s", name, *args, url=nats_url))
    assert [int(row[0]) for row in rows] == versions


def test_events_limit_and_last_together_is_a_usage_error() -> None:
    result = aether("events", "acc", "--limit", "1", "--last", "1", url=UNREACHABLE)
    assert result.exit_code == EXIT_USAGE
    assert "either --limit or --last" in result.stderr


def test_events_prints_each_row_as_it_is_read(
    streams: Streams, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are printed while the history is still being read, not after it."""
    name = streams.name()
    run(lambda: streams.seed(name, [ev("acc", v) for v in range(1, 31)]))
    order: list[str] = []
    iter_events = JetStreamEventStore.iter_events_with_errors

    async def recording(
        self: JetStreamEventStore, actor_id: str, from_version: int = 0
    ) -> AsyncIterator[Event | ReplayError]:
        async for event in iter_events(self, actor_id, from_version):
            assert isinstance(event, Event)
            order.append(f"read {event.version}")
            yield event

    def echo(message: object = None, *args: Any, **kwargs: Any) -> None:
        order.append(f"printed {str(message).split()[0]}")

    monkeypatch.setattr(JetStreamEventStore, "iter_events_with_errors", recording)
    monkeypatch.setattr("aether.cli.events.click.echo", echo)
    result = aether("events", "acc", "-s", name, url=nats_url)
    assert result.exit_code == 0, result.output
    assert order[:3] == ["read 1", "printed 1", "read 2"]
    assert order[-1] == "printed 30"


def test_events_in_a_namespace(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("acc", 1)], namespace="tenant-a"))
    result = aether("events", "acc", "-s", name, "--namespace", "tenant-a", "--json", url=nats_url)
    assert [e["version"] for e in json_lines(result)] == [1]
    # the same stream, named by its JetStream name
    result = aether("events", "acc", "-s", f"tenant-a__{name}", "--json", url=nats_url)
    assert [e["version"] for e in json_lines(result)] == [1]
    other = aether("events", "acc", "-s", name, "--namespace", "tenant-b", url=nats_url)
    assert_one_line_error(
        other, EXIT_NOT_FOUND, "namespace 'tenant-b'", f"'tenant-b__{name}'", "not found"
    )
    # the old name of the same store (<namespace>_<name>) is another stream: none here
    old = aether("events", "acc", "-s", f"tenant-a_{name}", url=nats_url)
    assert_one_line_error(old, EXIT_NOT_FOUND, f"'tenant-a_{name}'", "not found")


async def _create_legacy_streams(nc: Client, namespace: str, name: str) -> str:
    """The streams an aether before the injective names made for (namespace, name):
    ``<namespace>_<name>`` (a namespace that needed no sanitising), with its metadata."""
    legacy = f"{namespace}_{name}"
    for stream, kind, extra in (
        (legacy, "events", {"duplicate_window": 120 * 10**9}),
        (f"{legacy}_snapshots", "snapshots", {"max_msgs_per_subject": 1}),
    ):
        body = {
            "name": stream,
            "subjects": [f"{legacy}.{kind}.>"],
            "metadata": {"aether.kind": kind, "aether.namespace": namespace, "aether.stream": name},
            **extra,
        }
        answer = await nc.request(f"$JS.API.STREAM.CREATE.{stream}", json.dumps(body).encode())
        assert "error" not in json.loads(answer.data), answer.data
    return legacy


def test_commands_use_a_stream_made_by_an_older_version(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    legacy = f"tenant-b_{name}"
    streams.created.append(legacy)

    async def setup() -> None:
        async with await nats.connect(nats_url) as nc:
            await _create_legacy_streams(nc, "tenant-b", name)

    run(setup)
    ns = ("-N", "tenant-b")
    appended = aether("append", "acc", "Opened", "-s", name, *ns, url=nats_url)
    assert appended.exit_code == 0, appended.output
    assert f"(JetStream stream '{legacy}')" in appended.stdout

    async def check_and_snapshot() -> None:
        async with await nats.connect(nats_url) as nc:
            js = nc.jetstream()
            assert (await js.stream_info(legacy)).state.messages == 1
            with pytest.raises(nats.js.errors.NotFoundError):
                await js.stream_info(f"tenant-b__{name}")  # nothing new was created
            config = JetStreamConfig(namespace="tenant-b")
            async with await JetStreamEventStore.attach(nc, name, config) as store:
                await store.save_snapshot(ActorSnapshot("acc", 1, {"open": True}))

    run(check_and_snapshot)
    rows = {row["stream"]: row for row in json_lines(aether("streams", "--json", url=nats_url))}
    assert (rows[legacy]["namespace"], rows[legacy]["name"]) == ("tenant-b", name)
    assert (rows[legacy]["events"], rows[legacy]["snapshots"]) == (1, 1)
    events = aether("events", "acc", "-s", name, *ns, "--json", url=nats_url)
    assert [e["eventType"] for e in json_lines(events)] == ["Opened"]
    actors = aether("actors", "-s", name, *ns, "--json", url=nats_url)
    assert json_lines(actors) == [{"actor": "acc", "version": 1, "events": 1}]
    tail = aether("tail", "-s", name, *ns, "--from-start", "-n", "1", "--json", url=nats_url)
    assert [e["eventType"] for e in json_lines(tail)] == ["Opened"]
    assert f"'{legacy}'" in tail.stderr
    snapshot = aether("snapshot", "acc", "-s", name, *ns, "--json", url=nats_url)
    assert snapshot.exit_code == 0, snapshot.output
    assert ActorSnapshot.from_json(snapshot.stdout).state == {"open": True}
    # named by its JetStream name, the stream is another pair's: refused, never used
    by_name = aether("events", "acc", "-s", legacy, url=nats_url)
    assert_one_line_error(by_name, 1, f"stream '{legacy}' is another store's", "'tenant-b'")


def test_events_skips_malformed_messages(streams: Streams, nats_url: str) -> None:
    name = streams.name()

    async def setup() -> None:
        await streams.seed(name, [ev("acc", 1)])
        async with await nats.connect(nats_url) as nc:
            await nc.jetstream().publish(f"{name}.events.acc", b"garbage")
        await streams.seed(name, [ev("acc", 2)])

    run(setup)
    result = aether("events", "acc", "-s", name, url=nats_url)
    assert [row[0] for row in _rows(result)] == ["1", "2"]
    # Said once on stderr, with where the message is.
    assert result.stderr.count("skipped malformed message at stream sequence 2") == 1
    as_json = aether("events", "acc", "-s", name, "--json", url=nats_url)
    assert [e["version"] for e in json_lines(as_json)] == [1, 2]


@pytest.mark.parametrize("as_json", [False, True])
def test_events_of_an_unknown_actor_is_not_found(
    streams: Streams, nats_url: str, as_json: bool
) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("acc", 1)]))
    args = ["events", "nobody", "-s", name, *(["--json"] if as_json else [])]
    result = aether(*args, url=nats_url)
    assert_one_line_error(result, EXIT_NOT_FOUND, "actor 'nobody' has no events", repr(name))


def test_events_of_a_missing_stream_is_not_found(nats_url: str) -> None:
    result = aether("events", "acc", "--stream", "no-such-stream", url=nats_url)
    assert_one_line_error(result, EXIT_NOT_FOUND, "stream 'no-such-stream' not found")


def test_a_stream_that_is_not_aethers_is_refused(streams: Streams, nats_url: str) -> None:
    name = streams.name()

    async def setup() -> None:
        async with await nats.connect(nats_url) as nc:
            await nc.jetstream().add_stream(name=name, subjects=[f"{name}.other.>"])

    run(setup)
    result = aether("events", "acc", "-s", name, url=nats_url)
    assert_one_line_error(result, 1, "is not an aether event stream")


def test_a_stream_aether_cannot_use_is_refused(streams: Streams, nats_url: str) -> None:
    name = streams.name()

    async def setup() -> None:
        async with await nats.connect(nats_url) as nc:
            js = nc.jetstream()
            await js.add_stream(
                name=name, subjects=[f"{name}.events.>"], retention=RetentionPolicy.INTEREST
            )

    run(setup)
    for args in (("events", "acc"), ("append", "acc", "T")):
        result = aether(*args, "-s", name, url=nats_url)
        assert_one_line_error(
            result, 1, f"stream {name!r} is unsuitable for aether: retention", "'limits'"
        )


@pytest.mark.parametrize(
    ("stream", "reason"),
    [("a.b", "letters, digits"), ("bank_snapshots", "'_snapshots'"), ("bank_", "'__'")],
)
def test_a_bad_stream_name_is_a_usage_error(stream: str, reason: str) -> None:
    result = aether("events", "acc", "--stream", stream, url=UNREACHABLE)
    assert result.exit_code == 2
    assert "Invalid value for '--stream'" in result.stderr
    assert reason in result.stderr


# -- append -----------------------------------------------------------------------------------


def _versions(url: str, stream: str, actor: str) -> list[int]:
    return [
        e["version"] for e in json_lines(aether("events", actor, "-s", stream, "--json", url=url))
    ]


def test_append_takes_the_next_version_or_the_given_one(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    first = aether("append", "acc", "Opened", "-s", name, "--create", url=nats_url)
    assert first.exit_code == 0, first.output
    assert "as version 1 of actor 'acc'" in first.stdout

    second = aether(
        "append",
        "acc",
        "Deposited",
        "--data",
        '{"amount": 5}',
        "-m",
        "correlationId=c-1",
        "--command-id",
        "cmd-9",
        "-s",
        name,
        "--json",
        url=nats_url,
    )
    stored = Event.from_json(second.stdout)
    assert (stored.version, stored.data, stored.correlation_id, stored.command_id) == (
        2,
        {"amount": 5},
        "c-1",
        "cmd-9",
    )

    gap = aether("append", "acc", "Deposited", "--version", "7", "-s", name, url=nats_url)
    assert "as version 7" in gap.stdout
    piped = aether(
        "append", "acc", "Closed", "-d", "-", "-s", name, url=nats_url, input='{"x": [1]}'
    )
    assert "as version 8" in piped.stdout, piped.output
    assert _versions(nats_url, name, "acc") == [1, 2, 7, 8]
    last = json_lines(aether("events", "acc", "-s", name, "--from", "8", "--json", url=nats_url))
    assert last[0]["data"] == {"x": [1]}


def test_append_conflict_names_the_current_version(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("acc", 1), ev("acc", 2), ev("acc", 3)]))
    result = aether("append", "acc", "Deposited", "--version", "2", "-s", name, url=nats_url)
    line = assert_one_line_error(result, EXIT_CONFLICT)
    assert line == "Error: version conflict: actor 'acc' has version 3, cannot save version 2"
    same = aether("append", "acc", "Deposited", "--version", "3", "-s", name, url=nats_url)
    assert_one_line_error(same, EXIT_CONFLICT, "has version 3, cannot save version 3")
    assert _versions(nats_url, name, "acc") == [1, 2, 3]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{bad", "--data is not valid JSON"),
        ("", "--data is not valid JSON"),
        ("[1, 2]", "--data must be a JSON object ({...}), not an array"),
        ('"text"', "not a string"),
        ("42", "not a number"),
        ("null", "not null"),
        ('{"x": NaN}', "data['x'] is nan"),
    ],
)
def test_append_refuses_bad_data_before_connecting(data: str, message: str) -> None:
    # Against an unreachable server: the input is checked first (exit 5, not 2).
    result = aether("append", "acc", "T", "--data", data, url=UNREACHABLE)
    assert_one_line_error(result, EXIT_INVALID, message)


def test_append_refuses_bad_metadata() -> None:
    result = aether("append", "acc", "T", "-m", "novalue", url=UNREACHABLE)
    assert_one_line_error(result, EXIT_INVALID, "--metadata must be KEY=VALUE")


def test_append_to_a_missing_stream_needs_create(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    result = aether("append", "acc", "T", "-s", name, url=nats_url)
    assert_one_line_error(result, EXIT_NOT_FOUND, f"stream '{name}' not found")

    async def exists() -> bool:
        async with await nats.connect(nats_url) as nc:
            try:
                await nc.jetstream().stream_info(name)
            except nats.js.errors.NotFoundError:
                return False
            return True

    assert not run(exists)
    created = aether("append", "acc", "T", "-s", name, "-N", "", "--create", url=nats_url)
    assert created.exit_code == 0, created.output
    assert run(exists)


# -- snapshot ---------------------------------------------------------------------------------


def test_snapshot_shows_the_latest(streams: Streams, nats_url: str) -> None:
    name = streams.name()

    async def setup() -> None:
        await streams.seed(name, [ev("acc", v) for v in range(1, 6)])
        nc, store = await streams.open(name)
        await store.save_snapshot(ActorSnapshot("acc", 2, {"balance": 1}))
        await store.save_snapshot(ActorSnapshot("acc", 4, {"balance": 10, "owner": "ann"}))
        await nc.close()

    run(setup)
    shown = aether("snapshot", "acc", "-s", name, url=nats_url)
    assert shown.exit_code == 0, shown.output
    assert "4 (actor at version 5, 1 event(s) after the snapshot)" in shown.stdout
    assert '"owner": "ann"' in shown.stdout
    as_json = ActorSnapshot.from_json(
        aether("snapshot", "acc", "-s", name, "--json", url=nats_url).stdout
    )
    assert (as_json.version, as_json.state) == (4, {"balance": 10, "owner": "ann"})


def test_snapshot_missing_is_not_found(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("acc", 1)]))
    result = aether("snapshot", "acc", "-s", name, url=nats_url)
    assert_one_line_error(result, EXIT_NOT_FOUND, "actor 'acc' has no snapshot")


def test_snapshot_of_a_stream_without_snapshot_stream(streams: Streams, nats_url: str) -> None:
    name = streams.name()

    async def setup() -> None:
        async with await nats.connect(nats_url) as nc:
            js = nc.jetstream()
            await js.add_stream(name=name, subjects=[f"{name}.events.>"])
            await js.publish(f"{name}.events.acc", ev("acc", 1).to_json())

    run(setup)
    result = aether("snapshot", "acc", "-s", name, url=nats_url)
    assert_one_line_error(result, EXIT_NOT_FOUND, "has no snapshot")


# -- stream info / create / delete -----------------------------------------------------------


def test_stream_create_info_and_delete(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    created = aether(
        "stream", "create", "-s", name, "-N", "tenant-a", "--retention", "30d",
        "--storage", "memory", "--duplicate-window", "5m", url=nats_url,
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    real = f"tenant-a__{name}"
    streams.created.append(real)
    assert f"created stream '{name}' in namespace 'tenant-a' (JetStream stream '{real}')" in (
        created.stdout
    )
    assert re.search(r"retention\s+30d$", created.stdout, re.MULTILINE), created.stdout
    run(lambda: streams.seed(name, [ev("a", 1), ev("a", 2), ev("b", 1)], namespace="tenant-a"))

    info = aether("stream", "info", "-s", real, "--json", url=nats_url)  # by its JetStream name
    assert json.loads(info.stdout) | {"created": "-"} == {
        "stream": real,
        "namespace": "tenant-a",
        "name": name,
        "retention": 30 * 86400.0,
        "storage": "memory",
        "replicas": 1,
        "duplicate_window": 300.0,
        "created": "-",
        "actors": 2,
        "events": 3,
        "bytes": json.loads(info.stdout)["bytes"],
        "first_position": 1,
        "last_position": 3,
        "snapshot_stream": f"{real}_snapshots",
        "snapshots": 0,
        "metadata": True,
    }
    table = aether("stream", "info", "-s", name, "-N", "tenant-a", url=nats_url)
    assert re.search(r"^events\s+3$", table.stdout, re.MULTILINE), table.stdout
    assert re.search(r"^duplicate window\s+5m$", table.stdout, re.MULTILINE), table.stdout

    again = aether("stream", "create", "-s", name, "-N", "tenant-a", url=nats_url)
    assert_one_line_error(again, EXIT_CONFLICT, f"stream '{real}' already exists")

    deleted = aether("stream", "delete", "-s", name, "-N", "tenant-a", "--yes", url=nats_url)
    assert deleted.exit_code == 0, deleted.output
    assert "3 events of 2 actors, 0 snapshots" in deleted.stdout
    gone = aether("stream", "info", "-s", name, "-N", "tenant-a", url=nats_url)
    assert_one_line_error(gone, EXIT_NOT_FOUND, f"stream '{name}' in namespace 'tenant-a'")
    assert "snapshots" not in {
        s["stream"] for s in json_lines(aether("streams", "--json", url=nats_url))
    }


async def _infos(nc: Client) -> AsyncIterator[Any]:
    for info in await nc.jetstream().streams_info():
        yield info


def test_stream_create_keeps_events_forever_by_default(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    created = aether("stream", "create", "-s", name, "--json", url=nats_url)
    assert created.exit_code == 0, created.output
    described = json.loads(created.stdout)
    assert (described["retention"], described["storage"], described["replicas"]) == (
        None,
        "file",
        1,
    )
    table = aether("stream", "info", "-s", name, url=nats_url)
    assert re.search(r"^retention\s+forever$", table.stdout, re.MULTILINE), table.stdout
    assert re.search(r"^duplicate window\s+2m$", table.stdout, re.MULTILINE), table.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--retention", "3x"), EXIT_USAGE, "'3x' is not a duration"),
        (("--retention", "0d"), EXIT_USAGE, "not a positive duration"),
        (("--replicas", "6"), EXIT_USAGE, "Invalid value for '--replicas'"),
        (("--storage", "disk"), EXIT_USAGE, "Invalid value for '--storage'"),
        (("--retention", "1m"), EXIT_INVALID, "must exceed duplicate_window"),
        (("--duplicate-window", "10s"), EXIT_INVALID, "duplicate_window"),
    ],
)
def test_stream_create_refuses_bad_settings_before_connecting(
    args: tuple[str, ...], code: int, message: str
) -> None:
    result = aether("stream", "create", "-s", "bank", *args, url=UNREACHABLE)
    assert result.exit_code == code, result.output
    assert message in result.stderr


@pytest.mark.parametrize("command", ["create", "delete"])
def test_stream_create_and_delete_need_a_stream_name(command: str) -> None:
    result = aether("stream", command, url=UNREACHABLE)
    assert result.exit_code == EXIT_USAGE
    assert "Missing option '--stream' / '-s'" in result.stderr


@pytest.mark.parametrize("answer", ["n\n", "", "maybe\nno\n"])
def test_stream_delete_asks_first(streams: Streams, nats_url: str, answer: str) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("a", 1)]))
    refused = aether("stream", "delete", "-s", name, input=answer, url=nats_url)
    assert refused.exit_code == 1, refused.output
    assert f"Delete stream '{name}' with 1 events of 1 actors and 0 snapshots?" in refused.stderr
    assert refused.stderr.strip().endswith("Error: nothing deleted (answer y, or pass --yes)")
    assert refused.stdout == ""
    still = aether("stream", "info", "-s", name, "--json", url=nats_url)
    assert json.loads(still.stdout)["events"] == 1

    confirmed = aether("stream", "delete", "-s", name, input="y\n", url=nats_url)
    assert confirmed.exit_code == 0, confirmed.output
    assert f"deleted stream '{name}' and '{name}_snapshots'" in confirmed.stdout
    assert aether("stream", "info", "-s", name, url=nats_url).exit_code == EXIT_NOT_FOUND


def test_stream_delete_leaves_other_streams_alone(streams: Streams, nats_url: str) -> None:
    name = streams.name()

    async def setup() -> None:
        async with await nats.connect(nats_url) as nc:
            await nc.jetstream().add_stream(name=name, subjects=[f"{name}.other.>"])

    run(setup)
    refused = aether("stream", "delete", "-s", name, "--yes", url=nats_url)
    assert_one_line_error(refused, 1, f"stream '{name}' is not an aether event stream")
    missing = aether("stream", "delete", "-s", unique("missing"), "--yes", url=nats_url)
    assert_one_line_error(missing, EXIT_NOT_FOUND, "not found")

    async def exists() -> bool:
        async with await nats.connect(nats_url) as nc:
            return (await nc.jetstream().stream_info(name)).config.name == name

    assert run(exists)


@pytest.mark.parametrize(
    ("text", "seconds", "shown"),
    [
        ("30d", 30 * 86400, "30d"),
        ("12h", 12 * 3600, "12h"),
        ("1d12h", 36 * 3600, "1d12h"),
        ("2w", 14 * 86400, "14d"),
        ("90s", 90, "1m30s"),
        ("1.5s", 1.5, "1.5s"),
        ("500ms", 0.5, "500ms"),
    ],
)
def test_durations(text: str, seconds: float, shown: str) -> None:
    parsed = parse_duration(text)
    assert parsed == timedelta(seconds=seconds)
    assert format_duration(parsed) == shown
    assert format_duration(None) == "forever"


# -- unreachable server -----------------------------------------------------------------------

UNREACHABLE_CALLS = [
    ("streams",),
    ("actors",),
    ("events", "acc"),
    ("append", "acc", "T"),
    ("snapshot", "acc"),
    ("tail",),
    ("stream", "info"),
    ("stream", "create", "-s", "bank"),
    ("stream", "delete", "-s", "bank", "--yes"),
]


@pytest.mark.parametrize("args", UNREACHABLE_CALLS, ids=lambda args: " ".join(args[:2]))
def test_unreachable_server_is_one_line_and_exit_7(args: tuple[str, ...]) -> None:
    result = aether(*args, url=UNREACHABLE)
    assert_one_line_error(result, EXIT_UNREACHABLE, f"cannot connect to NATS at {UNREACHABLE}")


def test_nats_url_from_the_environment(streams: Streams, nats_url: str) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("acc", 1)]))
    result = aether("events", "acc", "-s", name, "--json", env={"NATS_URL": nats_url})
    assert [e["version"] for e in json_lines(result)] == [1]
    unreachable = aether("streams", env={"NATS_URL": UNREACHABLE})
    assert_one_line_error(unreachable, EXIT_UNREACHABLE, UNREACHABLE)


def test_a_server_without_jetstream_fails_at_once() -> None:
    with NatsServer(jetstream=False) as server:
        calls = [
            ("streams",),
            ("actors",),
            ("events", "acc"),
            ("append", "acc", "T", "--create"),
            ("stream", "info"),
            ("stream", "create", "-s", "bank"),
            ("stream", "delete", "-s", "bank", "--yes"),
            ("tail",),
        ]
        for args in calls:
            result = aether(*args, url=server.url)
            assert_one_line_error(
                result, 1, "JetStream is not available", "the NATS server has no JetStream"
            )


# -- the error translation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "exit_code", "message"),
    [
        (VersionConflictError("a", 2, 3), EXIT_CONFLICT, "actor 'a' has version 3"),
        (InvalidEventError("bad"), EXIT_INVALID, "bad"),
        (EventTooLargeError(10, 5), EXIT_INVALID, "10 bytes"),
        (StoreUnavailableError("gone"), EXIT_UNAVAILABLE, "no answer from JetStream: gone"),
        (JetStreamError(500, 10001, "boom"), 1, "JetStream refused: boom"),
        (StreamNotFoundError("ns__s"), EXIT_NOT_FOUND, "stream 'ns__s' not found"),
        (StreamExistsError("ns__s"), EXIT_CONFLICT, "stream 'ns__s' already exists"),
        (
            UnsuitableStreamError("s", "subjects", "its subjects are ['s.>']"),
            1,
            "stream 's' is not an aether event stream: its subjects",
        ),
        (
            UnsuitableStreamError("s", "retention", "is 'interest'; aether needs 'limits'"),
            1,
            "stream 's' is unsuitable for aether: retention: is 'interest'",
        ),
        (
            InvalidConfigError("namespace", "is too long"),
            EXIT_INVALID,
            "JetStreamConfig.namespace is too long",
        ),
        (JetStreamNotEnabledError("no JetStream"), 1, "JetStream is not available: no JetStream"),
        (UnsupportedServerError("too old"), 1, "too old"),
        (nats.errors.TimeoutError(), 1, "NATS error: timeout"),
    ],
)
def test_aether_errors_become_one_line_errors(
    error: Exception, exit_code: int, message: str
) -> None:
    with pytest.raises(CliError) as caught, translate_errors():
        raise error
    assert caught.value.exit_code == exit_code
    assert message in caught.value.format_message()
    assert "\n" not in caught.value.format_message()


def test_subscriptions_lists_durable_subscriptions_and_their_parked_events(
    streams: Streams, nats_url: str
) -> None:
    name = streams.name()
    events = [ev("acc", 1), ev("acc", 2), ev("acc", 3)]
    run(lambda: streams.seed(name, events))

    async def consume() -> None:
        async with await nats.connect(nats_url) as nc:
            store = await JetStreamEventStore.attach(nc, name)
            async with store.durable_subscription("mails", max_deliver=2) as deliveries:
                async for delivery in deliveries:
                    if delivery.event.version == 2:
                        await delivery.term("no address")
                    else:
                        await delivery.ack()
                    if delivery.event.version == 3:
                        break
            await store.close()

    run(consume)
    empty = aether("subscriptions", "-s", streams.name(), url=nats_url)
    assert empty.exit_code == 3  # no such stream
    listed = aether("subscriptions", "-s", name, url=nats_url)
    assert listed.exit_code == 0, listed.output
    [row] = [line.split() for line in listed.stdout.splitlines() if line.startswith("mails")]
    assert row[:2] == ["mails", "-"] and row[-2:] == ["1", "3"]  # parked 1, acked to 3
    [info] = json_lines(aether("subscriptions", "-s", name, "--json", url=nats_url))
    assert (info["name"], info["parked"], info["ackedPosition"], info["maxDeliver"]) == (
        "mails",
        1,
        3,
        2,
    )
    parked = aether("subscriptions", "-s", name, "--parked", "mails", "--json", url=nats_url)
    [record] = json_lines(parked)
    assert (record["position"], record["actorId"], record["version"], record["reason"]) == (
        2,
        "acc",
        2,
        "term",
    )
    assert record["eventId"] == events[1].id and record["detail"] == "no address"
    table = aether("subscriptions", "-s", name, "--parked", "mails", url=nats_url)
    assert "term: no address" in table.stdout
    none = aether("subscriptions", "-s", name, "--parked", "other", url=nats_url)
    assert none.exit_code == 0 and "no parked events" in none.stderr
    bad = aether("subscriptions", "-s", name, "--parked", "bad name", url=nats_url)
    assert bad.exit_code == EXIT_INVALID, bad.output
