"""Every program under ``examples/`` runs against real nats-servers, so the how-tos never rot.

The docs include these files verbatim (``tests/test_docs.py`` checks that), so what the
how-tos show is what runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import httpx
import nats
import nats.js.errors
import pytest

from aether import Event
from aether.admin import StreamAdmin, StreamRef
from aether.store import JetStreamConfig, JetStreamEventStore
from aether.testing import NatsCluster, NatsServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Generous: a subprocess that hangs fails here instead of at pytest-timeout.
SUBPROCESS_TIMEOUT = 240


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (not a package) under a private module name."""
    module_name = f"aether_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # pydantic resolves annotations through it
    spec.loader.exec_module(module)
    return module


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def delete_streams(servers: list[str], *names: str) -> None:
    async with await nats.connect(servers=servers) as nc:
        js = nc.jetstream()
        for name in names:
            for stream in (name, f"{name}_snapshots"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream)


def example_env() -> dict[str, str]:
    """The environment for example subprocesses: no inherited NATS_URL."""
    return {k: v for k, v in os.environ.items() if k != "NATS_URL"}


# -- examples/fastapi_app.py -------------------------------------------------------------

bank = load_example("fastapi_app")


# --8<-- [start:fastapi-fixture]
class Bank:
    """The FastAPI example app on the session nats-server, in a namespace of its own."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.namespace = unique("bank")
        self.app = bank.create_app(nats_url, namespace=self.namespace)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://bank.test"
        )

    @property
    def stream(self) -> str:
        """The app's JetStream stream (namespace applied), once the app has started."""
        store: JetStreamEventStore = self.app.state.store
        return store.stream_name

    async def open_store(self) -> tuple[nats.NATS, JetStreamEventStore]:
        """Another writer on the same stream (as a second process or host would be)."""
        nc = await nats.connect(self.nats_url)
        config = JetStreamConfig(namespace=self.namespace)
        return nc, await JetStreamEventStore.open(nc, "bank", config)


@pytest.fixture
async def app(nats_url: str) -> AsyncIterator[Bank]:
    service = Bank(nats_url)
    # httpx's ASGITransport does not run the lifespan: enter it as the server would.
    async with service.app.router.lifespan_context(service.app), service.client:
        yield service
    await delete_streams([nats_url], service.stream)


# --8<-- [end:fastapi-fixture]


async def test_fastapi_commands_become_events(app: Bank) -> None:
    client = app.client
    response = await client.post("/accounts/alice", json={"owner": "Alice"})
    assert response.status_code == 201, response.text
    assert response.json() == {"id": "alice", "owner": "Alice", "balance": 0, "version": 1}

    response = await client.post("/accounts/alice/deposits", json={"amount": 100})
    assert response.json()["balance"] == 100
    response = await client.post("/accounts/alice/withdrawals", json={"amount": 30})
    assert response.json() == {"id": "alice", "owner": "Alice", "balance": 70, "version": 3}

    response = await client.post("/accounts/alice/withdrawals", json={"amount": 1000})
    assert response.status_code == 422
    assert "insufficient funds" in response.json()["detail"]
    response = await client.post("/accounts/alice", json={"owner": "Mallory"})
    assert response.status_code == 422

    response = await client.get("/accounts/alice")
    assert response.json()["balance"] == 70
    response = await client.get("/accounts/alice/events")
    events = response.json()
    assert [(e["version"], e["type"], e["data"]) for e in events] == [
        (1, "AccountOpened", {"owner": "Alice"}),
        (2, "Deposited", {"amount": 100}),
        (3, "Withdrawn", {"amount": 30}),
    ]
    # the namespace has a stream of its own: <escaped namespace>__<stream name>
    assert app.stream == f"{app.namespace}__bank"


async def test_fastapi_unknown_account_and_bad_input(app: Bank) -> None:
    client = app.client
    assert (await client.get("/accounts/nobody")).status_code == 404
    response = await client.post("/accounts/nobody/deposits", json={"amount": 5})
    assert response.status_code == 404
    assert (await client.get("/accounts/nobody/events")).json() == []
    response = await client.post("/accounts/nobody/deposits", json={"amount": -5})
    assert response.status_code == 422  # pydantic validation


async def test_fastapi_stale_expected_version_is_409(app: Bank) -> None:
    client = app.client
    await client.post("/accounts/bob", json={"owner": "Bob"})
    response = await client.post(
        "/accounts/bob/deposits", json={"amount": 5, "expected_version": 1}
    )
    assert response.status_code == 200
    assert response.json()["version"] == 2

    response = await client.post(
        "/accounts/bob/deposits", json={"amount": 5, "expected_version": 1}
    )
    assert response.status_code == 409
    assert response.json()["current_version"] == 2


# --8<-- [start:fastapi-outside-writer]
async def test_fastapi_outside_writer_is_seen(app: Bank) -> None:
    """Another process appends behind the app's back: the app's cache is stale, the server
    catches it, and the app answers from the true state."""
    client = app.client
    await client.post("/accounts/carol", json={"owner": "Carol"})
    await client.post("/accounts/carol/deposits", json={"amount": 10})  # app's cache: v2
    nc, other = await app.open_store()
    try:
        await other.save_event(Event("Deposited", "carol", 3, {"amount": 1000}))
    finally:
        await nc.close()

    response = await client.post(
        "/accounts/carol/withdrawals", json={"amount": 500, "expected_version": 2}
    )
    assert response.status_code == 409
    assert response.json()["current_version"] == 3
    response = await client.post("/accounts/carol/withdrawals", json={"amount": 500})
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "carol", "owner": "Carol", "balance": 510, "version": 4}


# --8<-- [end:fastapi-outside-writer]


async def test_fastapi_concurrent_commands_are_retried(app: Bank) -> None:
    client = app.client
    await client.post("/accounts/dave", json={"owner": "Dave"})
    responses = await asyncio.gather(
        *(client.post("/accounts/dave/deposits", json={"amount": n}) for n in range(1, 9))
    )
    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(r.json()["version"] for r in responses) == list(range(2, 10))
    assert (await client.get("/accounts/dave")).json()["balance"] == sum(range(1, 9))


async def test_fastapi_snapshots(app: Bank) -> None:
    client = app.client
    await client.post("/accounts/erin", json={"owner": "Erin"})
    for _ in range(bank.SNAPSHOT_EVERY + 4):
        await client.post("/accounts/erin/deposits", json={"amount": 2})
    nc, store = await app.open_store()
    try:
        snapshot = await store.get_latest_snapshot("erin")
        assert snapshot is not None
        assert snapshot.version == bank.SNAPSHOT_EVERY
        account = await bank.load_account(store, "erin")
        assert account.snapshot_version == bank.SNAPSHOT_EVERY
        assert (account.version, account.balance) == (bank.SNAPSHOT_EVERY + 5, 2 * 24)
    finally:
        await nc.close()
    assert (await client.get("/accounts/erin")).json()["balance"] == 2 * (bank.SNAPSHOT_EVERY + 4)


class LogWatch(logging.Handler):
    """The messages of one logger, and a way to wait for one of them (no sleeping)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logger
        self.messages: list[str] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.changed.set()

    async def wait_for(self, text: str, after: int = 0) -> int:
        """Wait until a message from index *after* on contains *text*; its index."""

        async def found() -> int:
            while True:
                for n in range(after, len(self.messages)):
                    if text in self.messages[n]:
                        return n
                self.changed.clear()
                await self.changed.wait()

        # A generous bound so that a regression fails here rather than at pytest-timeout.
        return await asyncio.wait_for(found(), timeout=120)

    def __enter__(self) -> LogWatch:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


@pytest.mark.fault
async def test_fastapi_outage_is_a_few_log_lines(
    fresh_nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """While the NATS server is away the app logs one line per change, never a traceback
    (nats-py's default error callback logs every failed reconnect with its traceback)."""
    caplog.set_level(logging.INFO)
    service = Bank(fresh_nats_server.url)
    with LogWatch(logging.getLogger("bank")) as log:
        async with service.app.router.lifespan_context(service.app), service.client:
            client = service.client
            response = await client.post("/accounts/frank", json={"owner": "Frank"})
            assert response.status_code == 201, response.text

            await asyncio.to_thread(fresh_nats_server.stop)  # the outage
            down = await log.wait_for("nats disconnected")
            await log.wait_for("nats error: ", after=down)  # a failed reconnect attempt
            await asyncio.to_thread(fresh_nats_server.start)
            await log.wait_for("nats reconnected", after=down)

            response = await client.post("/accounts/frank/deposits", json={"amount": 5})
            assert response.status_code == 200, response.text
            assert response.json()["version"] == 2

    assert "Traceback" not in caplog.text
    assert [r for r in caplog.records if r.exc_info] == []
    assert "nats disconnected, reconnecting" in log.messages
    assert log.messages[-1] == "nats connection closed"  # the shutdown is no outage
    assert all("\n" not in message for message in log.messages), log.messages


# -- examples/multiple_writers.py --------------------------------------------------------


@pytest.mark.slow
def test_multiple_writer_processes(nats_url: str) -> None:
    stream = unique("mw")
    try:
        result = subprocess.run(
            [
                sys.executable,
                str(EXAMPLES / "multiple_writers.py"),
                "--url",
                nats_url,
                "--stream",
                stream,
                "--processes",
                "3",
                "--accounts",
                "3",
                "--events",
                "40",
            ],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            env=example_env(),
        )
    finally:
        asyncio.run(delete_streams([nats_url], stream))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 processes wrote 120 events to 3 accounts" in result.stdout
    assert "audit: PASS" in result.stdout


@pytest.mark.slow
def test_multiple_writers_on_their_own_server() -> None:
    """Without --url the example starts its own nats-server (the documented default)."""
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "multiple_writers.py"),
            "--processes",
            "2",
            "--events",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=example_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit: PASS" in result.stdout


# -- examples/cluster.py -----------------------------------------------------------------


@pytest.fixture
def cluster(nats_cluster: NatsCluster) -> Iterator[NatsCluster]:
    """The session cluster, with every node running again after the test."""
    yield nats_cluster
    for i in range(nats_cluster.size):
        if i not in nats_cluster.running():
            nats_cluster.start(i)


@pytest.mark.cluster
@pytest.mark.fault
async def test_cluster_example_survives_the_leader_kill(cluster: NatsCluster) -> None:
    example = load_example("cluster")
    stream = unique("orders")
    try:
        stored = await example.run(cluster.urls, stream=stream, orders=6, cluster=cluster)
        assert stored == 6 * 4
        assert cluster.running() == list(range(cluster.size))  # the example restarted it
    finally:
        await delete_streams(cluster.urls, stream)


@pytest.mark.cluster
async def test_cluster_example_with_urls(cluster: NatsCluster) -> None:
    example = load_example("cluster")
    stream = unique("orders")
    try:
        # main() runs its own event loop, as from the command line.
        url = ",".join(cluster.urls)
        assert await asyncio.to_thread(example.main, ["--url", url, "--stream", stream]) == 0
    finally:
        await delete_streams(cluster.urls, stream)


# -- examples/testing/ -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.cluster
def test_testing_examples_pass() -> None:
    """The testing how-to's tests, run by pytest as a user's project would run them."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(EXAMPLES / "testing"),
            "-p",
            "no:cacheprovider",
            "-q",
            "-o",
            "asyncio_mode=strict",
        ],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        cwd=ROOT,
        env=example_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout, result.stdout


# -- examples/read_model.py --------------------------------------------------------------


def _read_model_process(nats_url: str, stream: str, db: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "read_model.py"),
            "--url",
            nats_url,
            "--stream",
            stream,
            "--db",
            str(db),
        ],
        env=example_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _applied(db: Path) -> int:
    """The position the read model in *db* has applied (0 before it made its tables)."""
    if not db.exists():
        return 0
    try:
        return int(load_example("read_model").Balances(db).position())
    except sqlite3.OperationalError:  # the model's process holds the write lock
        return 0


async def _position_reaches(db: Path, position: int, process: subprocess.Popen[bytes]) -> None:
    """Wait until the read model has applied *position* (polling its own table)."""
    for _ in range(SUBPROCESS_TIMEOUT * 20):
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        if await asyncio.to_thread(_applied, db) >= position:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the read model never reached position {position}")


@pytest.mark.slow
@pytest.mark.fault
async def test_read_model_applies_each_event_once_across_a_sigkill(
    nats_url: str, tmp_path: Path
) -> None:
    """Kill the read model's process mid-stream (SIGKILL), start it again: every money
    event has exactly one effect, because its position is stored with its rows."""
    stream = unique("readmodel")
    nc = await nats.connect(nats_url)
    store = await JetStreamEventStore.open(nc, stream)
    expected: dict[str, int] = {}
    try:

        async def write(first: int, count: int) -> int:
            """Append *count* money events (and some that are not money) in batches of
            ten per account; returns the stream's last position."""
            per_account: dict[str, list[Event]] = {}
            for i in range(first, first + count):
                account = f"acct-{i % 7}"
                amount = i % 13 + 1
                kind = "Withdrawn" if i % 5 == 0 else "Deposited"
                change = -amount if kind == "Withdrawn" else amount
                expected[account] = expected.get(account, 0) + change
                per_account.setdefault(account, []).append(
                    Event(kind, account, 0, {"amount": amount})
                )
                if i % 9 == 0:  # not money: filtered out, never applied
                    per_account[account].append(Event("Renamed", account, 0, {"amount": 0}))
            for account, events in per_account.items():
                version = await store.get_latest_version(account)
                for start in range(0, len(events), 10):
                    chunk = events[start : start + 10]
                    for offset, event in enumerate(chunk, start=version + start + 1):
                        event.version = offset
                    await store.save_events(chunk)
            return (await nc.jetstream().stream_info(stream)).state.last_seq

        db = tmp_path / "balances.sqlite3"
        await write(0, 5000)
        first_run = _read_model_process(nats_url, stream, db)
        await _position_reaches(db, 50, first_run)
        # The model may have applied all 5,000 by now. So that the kill lands mid-stream
        # whatever the machine's speed, hold SQLite's write lock (the model's commits
        # wait on it, up to sqlite3's 5 s busy timeout) while more events arrive.
        lock = sqlite3.connect(db, timeout=SUBPROCESS_TIMEOUT, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            held_at = int(lock.execute("SELECT pos FROM position").fetchone()[0])
            last = await write(5000, 200)
            assert first_run.poll() is None, "the model must still be running at the kill"
            first_run.kill()  # SIGKILL: no chance to tidy up
            first_run.wait(SUBPROCESS_TIMEOUT)
        finally:
            lock.rollback()
            lock.close()
        killed_at = _applied(db)
        assert 50 <= killed_at == held_at < last, "the kill must land mid-stream"

        second_run = _read_model_process(nats_url, stream, db)
        try:
            last = await write(5200, 200)  # live events too
            money_last = 0
            for account in expected:
                for event in await store.get_events(account):
                    if event.event_type != "Renamed":
                        money_last = max(money_last, event.position or 0)
            await _position_reaches(db, money_last, second_run)
        finally:
            second_run.terminate()
            second_run.wait(SUBPROCESS_TIMEOUT)
        assert load_example("read_model").Balances(db).balances() == expected
        assert last >= money_last
    finally:
        await store.close()
        await nc.close()
        await delete_streams([nats_url], stream)


# -- examples/reactor.py ---------------------------------------------------------------

reactor = load_example("reactor")


async def _until(condition: object, what: str) -> None:
    """Wait until the async *condition* holds (checked every 50 ms, 60 s at most)."""
    for _ in range(1200):
        if await condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
async def test_reactor_sends_once_retries_and_parks(nats_url: str, tmp_path: Path) -> None:
    """Good events are sent once (also across a restart of the reactor), a busy mail
    server is retried then parked after max_deliver attempts, a missing address is
    parked at once; nothing is skipped silently."""
    stream = unique("reactor")
    nc = await nats.connect(nats_url)
    store = await JetStreamEventStore.open(nc, stream)
    outbox = tmp_path / "sent.txt"
    try:
        good = [Event("Opened", f"acct-{i}", 1, {"email": f"{i}@example.com"}) for i in range(3)]
        no_address = Event("Opened", "acct-x", 1, {})
        busy = Event("Opened", "acct-y", 1, {"email": "y@example.com", "busy": True})
        for event in [*good, no_address, busy, Event("Deposited", "acct-0", 2, {"amount": 1})]:
            await store.save_event(event)

        def sent() -> list[str]:
            return outbox.read_text().split() if outbox.exists() else []

        async def parked_reasons() -> dict[str, str]:
            return {p.event_id or "": p.reason for p in await store.parked("welcome-mails")}

        task = asyncio.ensure_future(reactor.react(store, reactor.Mailer(outbox)))

        async def settled() -> bool:
            return len(sent()) == 3 and len(await parked_reasons()) == 2

        await _until(settled, "three mails sent and two events parked")
        assert sorted(sent()) == sorted(e.id for e in good)
        assert await parked_reasons() == {no_address.id: "term", busy.id: "max_deliver"}
        [parked_busy] = [p for p in await store.parked("welcome-mails") if p.event_id == busy.id]
        assert parked_busy.attempts == 3

        # Restart: the durable subscription goes on from where it was; only the new
        # account gets a mail, and nobody gets a second one.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        late = Event("Opened", "acct-late", 1, {"email": "late@example.com"})
        await store.save_event(late)
        task = asyncio.ensure_future(reactor.react(store, reactor.Mailer(outbox)))

        async def late_sent() -> bool:
            return late.id in sent()

        await _until(late_sent, "the mail of the account opened while it was down")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert sorted(sent()) == sorted([*(e.id for e in good), late.id])
    finally:
        await store.close()
        await nc.close()
        async with await nats.connect(nats_url) as admin_nc:
            await StreamAdmin(admin_nc).delete_stream(StreamRef(stream))  # _parked too
