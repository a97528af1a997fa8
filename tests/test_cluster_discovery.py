"""NodeDiscovery on a real nats-server: join, clean leave, failure detection.

Where a test must show that one mechanism (not another) did something, it makes the
other impossible within the test: a clean leave is tested with a failure timeout far
longer than the test's patience, so only the ``leave`` message can drop the node; a
join with a heartbeat interval that never elapses, so only the ``join`` exchange can
introduce the nodes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from aether.cluster import NodeDiscovery

#: How long a test waits for a condition before failing (never a synchronisation).
PATIENCE = 20.0
#: Far beyond PATIENCE: heartbeats or timeouts that cannot happen within a test.
NEVER = timedelta(seconds=300)
ROOT = Path(__file__).resolve().parent.parent


def unique_group() -> str:
    return f"g{uuid.uuid4().hex[:10]}"


async def until_members(discovery: NodeDiscovery, expected: set[str]) -> None:
    """Wait (through wait_for_change) until *discovery* sees exactly *expected*."""
    async with asyncio.timeout(PATIENCE):
        members = discovery.members
        while members != expected:
            members = await discovery.wait_for_change(members)


@asynccontextmanager
async def connections(url: str, count: int) -> AsyncIterator[list[Client]]:
    clients = [await nats.connect(url) for _ in range(count)]
    try:
        yield clients
    finally:
        for nc in clients:
            await nc.close()


def discovery(nc: Client, node: str, group: str, **kwargs: Any) -> NodeDiscovery:
    kwargs.setdefault("heartbeat_interval", timedelta(seconds=0.2))
    kwargs.setdefault("failure_timeout", timedelta(seconds=2))
    return NodeDiscovery(nc, node, group=group, **kwargs)


async def test_members_join_by_the_join_exchange(nats_url: str) -> None:
    group = unique_group()
    changes: list[frozenset[str]] = []
    async with connections(nats_url, 3) as (a, b, c):
        da = discovery(
            a,
            "a",
            group,
            heartbeat_interval=NEVER,
            failure_timeout=2 * NEVER,
            on_change=changes.append,
        )
        assert da.members == {"a"} and not da.running
        async with da:
            assert da.members == {"a"}
            async with (
                discovery(b, "b", group, heartbeat_interval=NEVER, failure_timeout=2 * NEVER) as db,
                discovery(c, "c", group, heartbeat_interval=NEVER, failure_timeout=2 * NEVER) as dc,
            ):
                for d in (da, db, dc):
                    await until_members(d, {"a", "b", "c"})
                assert changes[-1] == {"a", "b", "c"}
                assert all(m >= {"a"} for m in changes)
        assert da.members == {"a"} and not da.running


async def test_clean_leave_drops_the_node_at_once(nats_url: str) -> None:
    group = unique_group()
    async with connections(nats_url, 3) as (a, b, c):
        kw: dict[str, Any] = {"failure_timeout": NEVER}
        async with discovery(a, "a", group, **kw) as da, discovery(b, "b", group, **kw) as db:
            async with discovery(c, "c", group, **kw):
                await until_members(da, {"a", "b", "c"})
                await until_members(db, {"a", "b", "c"})
            await until_members(da, {"a", "b"})
            await until_members(db, {"a", "b"})


async def test_silent_node_leaves_within_the_failure_timeout(nats_url: str) -> None:
    """A node whose connection closes without a leave (no heartbeats any more) is dropped
    by the failure timeout, and the others stay."""
    group = unique_group()
    timeout = timedelta(seconds=1.5)
    async with (
        connections(nats_url, 3) as (a, b, c),
        discovery(a, "a", group, failure_timeout=timeout) as da,
        discovery(b, "b", group, failure_timeout=timeout) as db,
    ):
        dc = discovery(c, "c", group, failure_timeout=timeout)
        await dc.__aenter__()
        await until_members(da, {"a", "b", "c"})
        await c.close()  # heartbeats and the leave can no longer be sent
        await until_members(da, {"a", "b"})
        await until_members(db, {"a", "b"})
        await dc.close()


async def test_leave_of_an_older_incarnation_is_ignored(nats_url: str) -> None:
    group = unique_group()
    async with connections(nats_url, 2) as (a, b):
        kw: dict[str, Any] = {"failure_timeout": NEVER}
        async with discovery(a, "a", group, **kw) as da, discovery(b, "b", group, **kw):
            await until_members(da, {"a", "b"})
            stale = {"v": 1, "op": "leave", "node": "b", "inc": "an-older-incarnation"}
            await b.publish(da.subject, json.dumps(stale).encode())
            await b.publish(da.subject, b"not json")
            await b.publish(da.subject, b'{"op": "leave"}')
            # a join from a third node is answered by heartbeats: once it is seen, the
            # messages above (same connection, published before) have been handled
            await b.publish(
                da.subject, json.dumps({"v": 1, "op": "join", "node": "z", "inc": "i"}).encode()
            )
            await until_members(da, {"a", "b", "z"})


async def test_wait_for_change(nats_url: str) -> None:
    group = unique_group()
    async with connections(nats_url, 2) as (a, b):
        da = discovery(a, "a", group)
        with pytest.raises(RuntimeError):
            await da.wait_for_change()
        async with da:
            # known differs from the members already: no wait
            assert await da.wait_for_change({"x"}) == {"a"}
            waiting = asyncio.create_task(da.wait_for_change())
            async with discovery(b, "b", group):
                assert await asyncio.wait_for(waiting, PATIENCE) == {"a", "b"}
            waiting = asyncio.create_task(da.wait_for_change({"a"}))
        with pytest.raises(RuntimeError):
            await waiting


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_id": ""},
        {"node_id": "a.b"},
        {"node_id": "a*"},
        {"group": "a b"},
        {"heartbeat_interval": timedelta(0)},
        {"heartbeat_interval": timedelta(seconds=2), "failure_timeout": timedelta(seconds=2)},
    ],
)
async def test_bad_arguments(nats_url: str, kwargs: dict[str, Any]) -> None:
    async with connections(nats_url, 1) as (nc,):
        args: dict[str, Any] = {"node_id": "n", **kwargs}
        with pytest.raises(ValueError):
            NodeDiscovery(nc, args.pop("node_id"), **args)


async def read_until(
    stream: asyncio.StreamReader, condition: Callable[[str], bool], lines: list[str]
) -> None:
    async with asyncio.timeout(PATIENCE):
        while True:
            line = (await stream.readline()).decode().strip()
            assert line, "the process ended"
            lines.append(line)
            if condition(line):
                return


@pytest.mark.slow
@pytest.mark.fault
async def test_killed_process_leaves_within_the_failure_timeout(nats_url: str) -> None:
    """SIGKILL a member process: the others drop it within failure_timeout (bounded here
    by twice that, for a loaded machine), and never dropped it while it lived."""
    group = unique_group()
    interval, timeout = 0.2, 1.5
    seen: list[tuple[float, frozenset[str]]] = []
    async with connections(nats_url, 1) as (a,):
        observer = discovery(
            a,
            "a",
            group,
            heartbeat_interval=timedelta(seconds=interval),
            failure_timeout=timedelta(seconds=timeout),
            on_change=lambda members: seen.append((time.monotonic(), members)),
        )
        async with observer:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests._cluster_discovery_process",
                nats_url,
                group,
                "p",
                str(interval),
                str(timeout),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert proc.stdout is not None
                lines: list[str] = []
                await read_until(proc.stdout, lambda line: line == "members a,p", lines)
                await until_members(observer, {"a", "p"})
                t_kill = time.monotonic()
                os.kill(proc.pid, signal.SIGKILL)
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
            await until_members(observer, {"a"})
    (joined,) = [t for t, m in seen if m == {"a", "p"}]
    (dropped,) = [t for t, m in seen if m == {"a"}]
    assert joined < t_kill < dropped
    assert dropped - t_kill <= 2 * timeout, (dropped - t_kill, timeout)
