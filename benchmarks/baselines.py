"""The baselines every aether figure is compared with, measured in the same run.

* **raw nats-py** (the client ceiling): the same JetStream operations written directly
  against nats-py, with the same headers (``Nats-Msg-Id`` and a correctly chained
  ``Nats-Expected-Last-Subject-Sequence``) and pre-encoded payloads where the workload
  allows it, so the server does the same work for both and only client-side cost differs.
* **eventsourcing** (a peer library): its SQLite recorder (a file in a temp dir) and,
  when a DSN is given, its PostgreSQL recorder; see :mod:`benchmarks._eventsourcing`.

eventsourcing and psycopg are optional (the ``bench`` extra) and imported lazily.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from aether import Event
from benchmarks.model import BenchDependencyError

if TYPE_CHECKING:
    from benchmarks._eventsourcing import EsPeer

__all__ = [
    "INSTALL_HINT",
    "PostgresSetup",
    "RawNats",
    "load_eventsourcing",
    "make_event",
    "open_postgres_peer",
    "open_sqlite_peer",
    "require",
]

INSTALL_HINT = 'pip install -e ".[bench]"'
_API = "$JS.API"
_WRONG_LAST_SEQUENCE = 10071
_NO_MESSAGE_FOUND = 10037
_NS = 1_000_000_000


def make_event(actor_id: str, version: int) -> Event:
    """The event used everywhere: a small, typical domain event (~200 bytes of JSON)."""
    return Event(
        event_type="Deposited",
        actor_id=actor_id,
        version=version,
        data={"amount": version, "currency": "EUR", "note": "benchmark deposit"},
    )


def require(module: str, purpose: str) -> ModuleType:
    """Import *module* or raise BenchDependencyError naming the ``bench`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BenchDependencyError(
            f"{purpose} needs the {module.split('.')[0]!r} package: {INSTALL_HINT} ({exc})"
        ) from None


def load_eventsourcing() -> ModuleType:
    """The peer module, after checking that the eventsourcing library is installed."""
    require("eventsourcing.application", "the eventsourcing baseline")
    return importlib.import_module("benchmarks._eventsourcing")


# -- raw nats-py ---------------------------------------------------------------------------


@dataclass
class _Chain:
    """A raw writer's view of one actor: next version and the subject's last sequence."""

    subject: str
    version: int = 0
    seq: int = 0


class RawNats:
    """The raw nats-py side of every workload, on the same connection and stream."""

    def __init__(self, nc: Client, js: JetStreamContext, stream: str) -> None:
        self.nc = nc
        self.js = js
        self.stream = stream
        self._chains: dict[str, _Chain] = {}

    def chain(self, actor_id: str, subject: str) -> _Chain:
        chain = self._chains.get(actor_id)
        if chain is None:
            chain = self._chains[actor_id] = _Chain(subject)
        return chain

    @staticmethod
    def prepare(actor_id: str, chain: _Chain, count: int) -> list[tuple[str, bytes]]:
        """The next *count* events of an actor, pre-encoded: (message id, payload)."""
        first = chain.version + 1
        chain.version += count
        events = [make_event(actor_id, v) for v in range(first, first + count)]
        return [(ev.id, ev.to_json()) for ev in events]

    async def publish(self, chain: _Chain, msg_id: str, payload: bytes) -> None:
        """One ``js.publish`` (a request; waits for the ack) chained on the actor's tail."""
        headers = {
            "Nats-Msg-Id": msg_id,
            "Nats-Expected-Last-Subject-Sequence": str(chain.seq),
        }
        ack = await self.js.publish(chain.subject, payload, headers=headers)
        chain.seq = ack.seq

    async def publish_async_chain(
        self, chain: _Chain, prepared: Sequence[tuple[str, bytes]]
    ) -> None:
        """One writer: ``js.publish_async`` of each message, awaiting its ack before the
        next (the next expected sequence is only known from the ack)."""
        for msg_id, payload in prepared:
            headers = {
                "Nats-Msg-Id": msg_id,
                "Nats-Expected-Last-Subject-Sequence": str(chain.seq),
            }
            future = await self.js.publish_async(chain.subject, payload, headers=headers)
            chain.seq = (await future).seq

    async def publish_async_window(self, messages: Sequence[tuple[str, str, bytes]]) -> None:
        """Every message published at once (``publish_async``), then all acks awaited.

        Each message is the first on its own subject (expected sequence 0 is known in
        advance), so nothing has to wait for an ack: the client's pipelining ceiling.
        """
        futures = []
        for subject, msg_id, payload in messages:
            headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Last-Subject-Sequence": "0"}
            futures.append(await self.js.publish_async(subject, payload, headers=headers))
        await asyncio.gather(*futures)

    async def last_msg(self, subject: str) -> tuple[int, dict[str, Any] | None]:
        """``STREAM.MSG.GET`` of the subject's last message: (its sequence, its JSON)."""
        body = json.dumps({"last_by_subj": subject}).encode()
        msg = await self.nc.request(f"{_API}.STREAM.MSG.GET.{self.stream}", body, timeout=5)
        answer = json.loads(msg.data)
        error = answer.get("error")
        if error is not None:
            if error.get("err_code") == _NO_MESSAGE_FOUND:
                return 0, None
            raise RuntimeError(f"STREAM.MSG.GET failed: {error}")
        message = answer["message"]
        return int(message["seq"]), json.loads(base64.b64decode(message["data"]))

    async def latest_version(self, subject: str) -> int:
        _, data = await self.last_msg(subject)
        return 0 if data is None else int(data["version"])

    async def hot_attempt(self, actor_id: str, subject: str) -> bool:
        """Read the tail, then publish version + 1 expecting that tail. False on conflict."""
        seq, data = await self.last_msg(subject)
        event = make_event(actor_id, 1 if data is None else int(data["version"]) + 1)
        headers = {"Nats-Msg-Id": event.id, "Nats-Expected-Last-Subject-Sequence": str(seq)}
        try:
            await self.js.publish(subject, event.to_json(), headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def replay_ordered(self, subject: str, length: int) -> float:
        """The naive nats-py replay: ordered push consumer, ``next_msg`` + ``json.loads``."""
        t0 = time.perf_counter()
        sub = await self.js.subscribe(subject, ordered_consumer=True, stream=self.stream)
        last: dict[str, Any] = {}
        for _ in range(length):
            msg = await sub.next_msg(timeout=5)
            last = json.loads(msg.data)
        await sub.unsubscribe()
        elapsed = time.perf_counter() - t0
        if last.get("version") != length:
            raise RuntimeError("ordered-consumer replay ended on the wrong message")
        return length / elapsed

    async def replay_pull(self, subject: str, length: int, batch: int = 500) -> float:
        """The client ceiling of replay: a pull consumer (no acks, two pull requests in
        flight) whose messages are counted but not decoded. Events/s."""
        t0 = time.perf_counter()
        config = {
            "filter_subject": subject,
            "ack_policy": "none",
            "mem_storage": True,
            "num_replicas": 1,
            "inactive_threshold": 300 * _NS,
        }
        body = json.dumps({"stream_name": self.stream, "config": config}).encode()
        reply = await self.nc.request(f"{_API}.CONSUMER.CREATE.{self.stream}", body, timeout=5)
        info = json.loads(reply.data)
        if "error" in info:
            raise RuntimeError(f"CONSUMER.CREATE failed: {info['error']}")
        name, pending = info["name"], int(info["num_pending"])
        next_subject = f"{_API}.CONSUMER.MSG.NEXT.{self.stream}.{name}"
        pull = json.dumps({"batch": batch, "no_wait": True}).encode()
        inbox = self.nc.new_inbox()
        done = asyncio.Event()
        received = requested = 0

        async def on_msg(msg: Msg) -> None:
            nonlocal received, requested
            if not msg.reply:  # a status message: nothing more to deliver
                done.set()
                return
            received += 1
            if received >= pending:
                done.set()
            elif requested - received < batch and requested < pending:
                requested += batch
                await self.nc.publish(next_subject, pull, reply=inbox)

        sub = await self.nc.subscribe(inbox, cb=on_msg)
        try:
            while requested < min(pending, 2 * batch):
                requested += batch
                await self.nc.publish(next_subject, pull, reply=inbox)
            await asyncio.wait_for(done.wait(), 30)
        finally:
            await sub.unsubscribe()
            await self.nc.publish(f"{_API}.CONSUMER.DELETE.{self.stream}.{name}", b"")
        elapsed = time.perf_counter() - t0
        if received != length:
            raise RuntimeError(f"pull replay received {received} messages, expected {length}")
        return length / elapsed


# -- eventsourcing -------------------------------------------------------------------------


def open_sqlite_peer(directory: Path) -> EsPeer:
    module = load_eventsourcing()
    peer: EsPeer = module.EsPeer(
        "es_sqlite",
        "eventsourcing SQLite",
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(directory / "es.db")},
    )
    return peer


@dataclass
class PostgresSetup:
    """The PostgreSQL peer and the throwaway schema it writes into (dropped on close)."""

    peer: EsPeer
    dsn: str
    schema: str
    server_version: str

    def close(self) -> None:
        self.peer.close()
        psycopg = importlib.import_module("psycopg")
        with contextlib.suppress(Exception), psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def open_postgres_peer(dsn: str) -> PostgresSetup:
    """The eventsourcing PostgreSQL peer in a fresh schema. Raises with a reason if the
    DSN is unusable or psycopg is missing (the suite then reports PostgreSQL as skipped).
    """
    load_eventsourcing()
    psycopg = require("psycopg", "the eventsourcing PostgreSQL baseline")
    conninfo = importlib.import_module("psycopg.conninfo")
    params: dict[str, Any] = conninfo.conninfo_to_dict(dsn)
    schema = f"aether_bench_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0])
        conn.execute(f'CREATE SCHEMA "{schema}"')
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname") or params.get("user") or "postgres"),
        "POSTGRES_HOST": str(params.get("host") or "localhost"),
        "POSTGRES_PORT": str(params.get("port") or "5432"),
        "POSTGRES_USER": str(params.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(params.get("password") or ""),
        "POSTGRES_SCHEMA": schema,
    }
    module = load_eventsourcing()
    try:
        peer: EsPeer = module.EsPeer("es_postgres", "eventsourcing PostgreSQL", env)
    except BaseException:
        with contextlib.suppress(Exception), psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        raise
    return PostgresSetup(peer, dsn, schema, version)
