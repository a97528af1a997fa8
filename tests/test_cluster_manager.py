"""ClusterManager with real nodes: OS processes (``tests/_cluster_node.py``) on a real nats-server.

Each node logs when it acquires and releases shards (``time.monotonic()``, one clock for
every process of the machine). The checker rebuilds, for every shard, the intervals each
node held it and asserts that no two nodes' intervals overlap: an acquire is logged
before the node starts holding, a release after it stopped (for a lease expiry, at the
instant ``owns()`` turned false), a SIGKILLed node's holds end when the kill returned.

The tests wait on conditions (what the logs say), never on sleeps, and assert no timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import math
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from aether._tasks import stop as stop_tasks
from aether.cluster._manager import (
    ClusterManager,
    HandlerError,
    NotOwnerError,
    ShardRouter,
    ShardsChanged,
)
from aether.cluster._placement import Assignment, place
from aether.cluster._routing import ClusterConfigError
from aether.cluster._shards import ShardManager
from aether.testing import NatsCluster

ROOT = Path(__file__).resolve().parent.parent
NUM_SHARDS = 64
shard_of = ShardManager(NUM_SHARDS).shard_of
TIMEOUT = 60.0  # for any one condition: generous, a hang fails here

pytestmark = pytest.mark.slow


# -- the nodes ------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    log: Path
    proc: subprocess.Popen[bytes]
    killed_at: float | None = None

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def last_state(self) -> dict[str, Any] | None:
        states = [e for e in self.events() if e["ev"] == "state"]
        return states[-1] if states else None

    @property
    def alive(self) -> bool:
        return self.killed_at is None and self.proc.poll() is None


@dataclass
class Cluster:
    url: str
    group: str
    dir: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def start(self, name: str, *extra: str) -> Node:
        log = self.dir / f"{name}.jsonl"
        out = (self.dir / f"{name}.out").open("wb")
        cmd = [sys.executable, "-m", "tests._cluster_node", "--url", self.url]
        cmd += ["--group", self.group, "--node", name, "--log", str(log)]
        cmd += ["--shards", str(NUM_SHARDS), *extra]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        node = self.nodes[name] = Node(name, log, proc)
        return node

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        node.proc.kill()
        node.proc.wait()
        node.killed_at = time.monotonic()  # after the process is gone: no hold lasts longer

    def terminate(self, name: str) -> None:
        """A clean leave (SIGTERM): the node releases its shards and exits."""
        node = self.nodes[name]
        node.proc.terminate()
        assert node.proc.wait(timeout=TIMEOUT) == 0, self.output(name)

    def output(self, name: str) -> str:
        return (self.dir / f"{name}.out").read_text(errors="replace")

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.alive]

    def converged(self, members: set[str]) -> dict[str, set[int]] | None:
        """Each member's shards if every member has applied one version and they hold
        exactly the placement of *members*; else None."""
        states = {name: self.nodes[name].last_state() for name in members}
        if any(s is None for s in states.values()):
            return None
        versions = {s["version"] for s in states.values() if s is not None}
        target = place(members, NUM_SHARDS)
        owned = {name: set(s["owned"]) for name, s in states.items() if s is not None}
        expected = {name: {i for i, o in enumerate(target) if o == name} for name in members}
        return owned if len(versions) == 1 and owned == expected else None

    async def wait_converged(self, members: set[str]) -> dict[str, set[int]]:
        result = await wait_for(lambda: self.converged(members), self.describe)
        version = self.nodes[next(iter(members))].last_state()
        assert version is not None and version["version"] > 0
        return result

    def leader(self) -> str | None:
        leaders = [n.name for n in self.live() if (s := n.last_state()) and s["leader"]]
        return leaders[0] if len(leaders) == 1 else None

    def describe(self) -> str:
        lines = []
        for node in self.nodes.values():
            lines.append(f"{node.name} alive={node.alive} state={node.last_state()}")
            lines.append(self.output(node.name)[-2000:])
        return "\n".join(lines)

    # -- the checker --------------------------------------------------------------------

    def holds(self) -> dict[int, list[tuple[float, float, str]]]:
        """Every (start, end, node) interval in which a node held each shard."""
        intervals: dict[int, list[tuple[float, float, str]]] = {}
        for node in self.nodes.values():
            open_: dict[int, float] = {}
            for event in node.events():
                if event["ev"] == "acquire":
                    for shard in event["shards"]:
                        assert shard not in open_, f"{node.name} acquired {shard} twice"
                        open_[shard] = event["t"]
                elif event["ev"] == "release":
                    end = event["at"] if event["expired"] else event["t"]
                    for shard in event["shards"]:
                        start = open_.pop(shard)
                        intervals.setdefault(shard, []).append((start, end, node.name))
            end_of_run = node.killed_at if node.killed_at is not None else math.inf
            for shard, start in open_.items():
                intervals.setdefault(shard, []).append((start, end_of_run, node.name))
        return intervals

    def check_no_shard_held_twice(self) -> int:
        """Assert that no two nodes held a shard at the same instant; the number of holds."""
        count = 0
        for shard, spans in self.holds().items():
            spans.sort()
            count += len(spans)
            for (_, end, node), (start, _, other) in itertools.pairwise(spans):
                assert end <= start, (
                    f"shard {shard} held by {node} until {end} and by {other} from {start}"
                )
        return count

    def check_handled_inside_holds(self) -> int:
        holds = self.holds()
        handled = 0
        for node in self.nodes.values():
            for event in node.events():
                if event["ev"] == "handled":
                    handled += 1
                    spans = holds.get(event["shard"], [])
                    assert any(
                        n == node.name and start <= event["t"] <= end for start, end, n in spans
                    ), f"{node.name} handled {event['actor']} outside its hold of {event['shard']}"
        return handled

    def released_by(self, name: str) -> set[int]:
        return {s for e in self.nodes[name].events() if e["ev"] == "release" for s in e["shards"]}


async def wait_for(condition: Callable[[], Any], describe: Callable[[], str]) -> Any:
    """Poll *condition* until it returns something truthy (the condition is what we wait
    on; the poll interval only sets how soon we notice)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {TIMEOUT}s\n{describe()}")
        await asyncio.sleep(0.05)


@pytest.fixture
def cluster(nats_url: str, tmp_path: Path) -> Iterator[Cluster]:
    group = f"t{uuid.uuid4().hex[:10]}"
    result = Cluster(nats_url, group, tmp_path)
    try:
        yield result
    finally:
        for node in result.nodes.values():
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGCONT)
            if node.proc.poll() is None:
                node.proc.kill()
            node.proc.wait()


def test_the_checker_finds_a_shard_held_twice(tmp_path: Path) -> None:
    """The checker itself: overlapping holds fail it, a lease expiry ends a hold at ``at``,
    a killed node's hold ends at the kill."""
    cluster = Cluster("nats://unused", "g", tmp_path)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()

    def node(name: str, *events: dict[str, Any], killed_at: float | None = None) -> None:
        log = tmp_path / f"{name}.jsonl"
        log.write_text("".join(json.dumps(e) + "\n" for e in events))
        cluster.nodes[name] = Node(name, log, done, killed_at)

    def acquire(t: float, *shards: int) -> dict[str, Any]:
        return {"ev": "acquire", "t": t, "shards": list(shards), "version": 1}

    def release(t: float, *shards: int, at: float | None = None) -> dict[str, Any]:
        expired = at is not None
        at = t if at is None else at
        return {"ev": "release", "t": t, "at": at, "shards": list(shards), "expired": expired}

    node("a", acquire(1.0, 0, 1), release(5.0, 0, at=2.0), killed_at=6.0)
    node("b", acquire(3.0, 0), acquire(7.0, 1))
    assert cluster.check_no_shard_held_twice() == 4  # a: 1-2 and 1-6, b: 3-inf and 7-inf
    node("c", acquire(4.0, 1))  # a still held shard 1 until it was killed at 6
    with pytest.raises(AssertionError, match="shard 1"):
        cluster.check_no_shard_held_twice()


# -- membership changes ------------------------------------------------------------------------


@pytest.mark.fault
async def test_join_leave_kill_and_pause_move_only_what_they_must(cluster: Cluster) -> None:
    for name in ("n1", "n2", "n3"):
        cluster.start(name)
    before = await cluster.wait_converged({"n1", "n2", "n3"})
    assert set().union(*before.values()) == set(range(NUM_SHARDS))

    # Join: only shards that go to n4 move.
    cluster.start("n4")
    after = await cluster.wait_converged({"n1", "n2", "n3", "n4"})
    for name in ("n1", "n2", "n3"):
        assert after[name] <= before[name]
        assert cluster.released_by(name) == before[name] - after[name]

    # Clean leave: only n4's shards move, and only to the others.
    cluster.terminate("n4")
    before, after = after, await cluster.wait_converged({"n1", "n2", "n3"})
    for name in ("n1", "n2", "n3"):
        assert before[name] <= after[name]
        assert after[name] - before[name] <= before["n4"]
    assert cluster.released_by("n4") == before["n4"]

    # SIGKILL: only n3's shards move, once it has left the membership and its lease ran out.
    cluster.kill("n3")
    before, after = after, await cluster.wait_converged({"n1", "n2"})
    for name in ("n1", "n2"):
        assert before[name] <= after[name]
    assert after["n1"] | after["n2"] == set(range(NUM_SHARDS))

    # SIGSTOP past the lease: n2's shards go to n1; n2 lets them go (lease expiry) before n1
    # takes them, and takes its share back once it runs again.
    cluster.nodes["n2"].proc.send_signal(signal.SIGSTOP)
    await cluster.wait_converged({"n1"})
    cluster.nodes["n2"].proc.send_signal(signal.SIGCONT)
    await cluster.wait_converged({"n1", "n2"})
    expired = [e for e in cluster.nodes["n2"].events() if e["ev"] == "release" and e["expired"]]
    assert expired and set(expired[0]["shards"]) == after["n2"]

    assert cluster.check_no_shard_held_twice() > NUM_SHARDS


@pytest.mark.fault
async def test_a_leader_killed_during_a_rebalance_is_taken_over(cluster: Cluster) -> None:
    # Every release takes a while, so the rebalance that n4's join starts is still
    # waiting for confirmations when its leader is killed.
    slow = ("--release-delay", "1.0")
    for name in ("n1", "n2", "n3"):
        cluster.start(name, *slow)
    before = await cluster.wait_converged({"n1", "n2", "n3"})
    leader = await wait_for(cluster.leader, cluster.describe)
    term = cluster.nodes[leader].last_state()["term"]  # type: ignore[index]

    cluster.start("n4", *slow)
    await wait_for(
        lambda: any(cluster.released_by(n) for n in ("n1", "n2", "n3")), cluster.describe
    )
    cluster.kill(leader)
    members = {"n1", "n2", "n3", "n4"} - {leader}
    after = await cluster.wait_converged(members)
    new_leader = await wait_for(cluster.leader, cluster.describe)
    assert new_leader != leader
    assert cluster.nodes[new_leader].last_state()["term"] > term  # type: ignore[index]
    for name in members - {"n4"}:
        # The survivors kept what they had, and took only some of the dead leader's shards
        # (n4 gets some from each: the slow releases it started were completed).
        assert after[name] - before[name] <= before[leader]
    assert cluster.check_no_shard_held_twice() > NUM_SHARDS


@pytest.mark.fault
async def test_a_deleted_record_of_a_paused_node_does_not_move_its_shards_early(
    cluster: Cluster, client: nats.NATS
) -> None:
    """An operator deletes a live node's record while the node is paused: that is no clean
    exit, so the leader waits for the node's lease to run out before it grants the node's
    shards elsewhere; the node, resumed, drops its shards (its record is gone) first."""
    # A long lease (and a failure timeout that keeps the paused node a member), so the
    # node resumes well inside its lease: an early grant would overlap its hold.
    slow = ("--lease", "3", "--heartbeat", "1", "--failure-timeout", "30")
    for name in ("n1", "n2"):
        cluster.start(name, *slow)
    before = await cluster.wait_converged({"n1", "n2"})
    leader = await wait_for(cluster.leader, cluster.describe)
    victim = "n2" if leader == "n1" else "n1"
    kv = await client.jetstream().key_value(f"aether_shards_{cluster.group}")

    cluster.nodes[victim].proc.send_signal(signal.SIGSTOP)
    await kv.delete(f"node.{victim}")

    async def revoked() -> bool:
        entry = await kv.get("assignment")
        assert entry.value is not None
        stored = Assignment.from_json(entry.value)
        return not stored.shards_of(victim)

    deadline = time.monotonic() + TIMEOUT
    while not await revoked():  # the leader has seen the delete and acted on it
        assert time.monotonic() < deadline, cluster.describe()
        await asyncio.sleep(0.05)
    cluster.nodes[victim].proc.send_signal(signal.SIGCONT)

    after = await cluster.wait_converged({"n1", "n2"})
    assert cluster.check_no_shard_held_twice() > NUM_SHARDS
    assert after == before
    # It let them go (the revocation or its lapse, whichever it saw first) and took them back.
    assert cluster.released_by(victim) == before[victim]


@pytest.mark.fault
async def test_a_recreated_bucket_is_a_new_incarnation_whose_versions_restart(
    cluster: Cluster, client: nats.NATS
) -> None:
    """The shards bucket is deleted under two paused nodes and a third node creates it
    again (its versions restart at 1): the resumed nodes drop what they held and start
    over from the new bucket's assignment, instead of keeping their own older view
    (higher versions, of a bucket that no longer exists) and holding its shards again."""
    for name in ("n1", "n2"):
        cluster.start(name)
    await cluster.wait_converged({"n1", "n2"})
    await client.jetstream().delete_key_value(f"aether_shards_{cluster.group}")
    for name in ("n1", "n2"):
        cluster.nodes[name].proc.send_signal(signal.SIGSTOP)
    # The deleted bucket is an operator's edit that loses the record leases: the paused
    # nodes' leases (1 s, their last renewal sent before the pause) must have run out
    # before n3 takes their shards. The condition is on the one clock of the machine.
    stopped = time.monotonic()
    await wait_for(lambda: time.monotonic() >= stopped + 1.0, cluster.describe)
    cluster.start("n3")
    await wait_for(
        lambda: len((cluster.nodes["n3"].last_state() or {}).get("owned", ())) == NUM_SHARDS,
        cluster.describe,
    )
    for name in ("n1", "n2"):
        cluster.nodes[name].proc.send_signal(signal.SIGCONT)

    after = await cluster.wait_converged({"n1", "n2", "n3"})
    assert cluster.check_no_shard_held_twice() > NUM_SHARDS
    assert set().union(*after.values()) == set(range(NUM_SHARDS))
    # One assignment, of the new bucket: the stored one, which every node applied.
    entry = await client.jetstream().key_value(f"aether_shards_{cluster.group}")
    stored = Assignment.from_json((await entry.get("assignment")).value or b"")
    versions = {cluster.nodes[n].last_state()["version"] for n in after}  # type: ignore[index]
    assert versions == {stored.version}
    assert list(stored.owners) == list(place(set(after), NUM_SHARDS))


@pytest.mark.cluster
@pytest.mark.fault
async def test_on_a_jetstream_cluster_with_replicated_buckets(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """Each node on its own server of a 3-node JetStream cluster, R3 buckets: a reader may
    be a replica, the placement's writes still go through the stream leader."""
    cluster = Cluster("", f"t{uuid.uuid4().hex[:10]}", tmp_path)
    try:
        for i, name in enumerate(("n1", "n2", "n3")):
            urls = nats_cluster.urls[i:] + nats_cluster.urls[:i]  # its own server first
            cluster.url = ",".join(urls)
            cluster.start(name, "--replicas", "3")
        before = await cluster.wait_converged({"n1", "n2", "n3"})
        cluster.kill("n2")
        after = await cluster.wait_converged({"n1", "n3"})
        assert before["n1"] <= after["n1"] and before["n3"] <= after["n3"]
        assert cluster.check_no_shard_held_twice() > NUM_SHARDS
    finally:
        for node in cluster.nodes.values():
            if node.proc.poll() is None:
                node.proc.kill()
            node.proc.wait()


# -- routing -------------------------------------------------------------------------------------


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[nats.NATS]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


async def test_requests_land_on_the_owner_and_continue_across_a_leave(
    cluster: Cluster, client: nats.NATS
) -> None:
    for name in ("n1", "n2", "n3"):
        cluster.start(name)
    await cluster.wait_converged({"n1", "n2", "n3"})
    actors = [f"actor-{i}" for i in range(300)]
    async with ShardRouter(client, group=cluster.group) as router:
        await wait_for(lambda: None not in (router.owner_of(a) for a in actors), cluster.describe)
        replies = await asyncio.gather(*(router.request(a, b"hello") for a in actors))
        target = place({"n1", "n2", "n3"}, NUM_SHARDS)
        for actor, reply in zip(actors, replies, strict=True):
            answer = json.loads(reply)
            assert answer == {"node": answer["node"], "actor": actor, "payload": "hello"}
            assert answer["node"] == router.owner_of(actor)
            assert answer["node"] == target[shard_of(actor)]

        # Requests keep flowing while n3 leaves: each is retried until its new owner
        # answers, and none fails.
        answered: list[str] = []
        stop = asyncio.Event()

        async def sender(offset: int) -> None:
            i = offset
            while not stop.is_set():
                actor = actors[i % len(actors)]
                answered.append(json.loads(await router.request(actor, b"x", timeout=30))["node"])
                i += 7

        senders = [asyncio.create_task(sender(k)) for k in range(4)]
        await wait_for(lambda: len(answered) > 50, cluster.describe)
        cluster.terminate("n3")
        await cluster.wait_converged({"n1", "n2"})
        count = len(answered)
        await wait_for(lambda: len(answered) > count + 50, cluster.describe)
        stop.set()
        await asyncio.gather(*senders)  # raises if any request failed
    assert "n3" in answered and answered[-1] != "n3"
    assert cluster.check_handled_inside_holds() > len(actors)
    cluster.check_no_shard_held_twice()


# -- in-process API -------------------------------------------------------------------------------


async def test_a_single_node_owns_everything_and_serves_itself(nats_url: str) -> None:
    changes: list[ShardsChanged] = []

    async def on_change(change: ShardsChanged) -> None:
        changes.append(change)

    async def echo(actor_id: str, payload: bytes) -> bytes:
        return actor_id.encode() + b":" + payload

    group = f"t{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(nats_url)
    try:
        manager = ClusterManager(
            nc,
            "solo",
            num_shards=8,
            group=group,
            lease=1.0,
            heartbeat_interval=0.25,
            failure_timeout=1.0,
            handler=echo,
            on_shards_changed=on_change,
        )
        async with manager:
            async with asyncio.timeout(TIMEOUT):
                assert await manager.wait_for_shards() == frozenset(range(8))
            assert manager.owns("a") and manager.owner_of("a") == "solo"
            assert manager.assignment_version >= 1
            assert await manager.request("a", b"x") == b"a:x"
            assert changes == [
                ShardsChanged(frozenset(range(8)), frozenset(), changes[0].version, changes[0].at)
            ]
            # Another node with another shard count is refused.
            with pytest.raises(ClusterConfigError):
                async with ClusterManager(nc, "other", num_shards=16, group=group):
                    pass
        assert not manager.owns("a")
        assert changes[-1].lost == frozenset(range(8)) and not changes[-1].expired
        # Nobody serves the group any more: a request gives up with NotOwnerError.
        async with ShardRouter(nc, group=group) as router:
            with pytest.raises(NotOwnerError):
                await router.request("a", b"x", timeout=0.5)
    finally:
        await nc.close()


@pytest.mark.fault
async def test_a_second_process_with_the_same_node_id_never_holds_a_shard_with_the_first(
    nats_url: str,
) -> None:
    """A node id started twice (a replacement started while the old process still runs):
    the newcomer replaces the live record, and takes no shard until the old process's lease
    must have run out, so the two never hold a shard at the same instant."""
    group = f"t{uuid.uuid4().hex[:10]}"
    holds: dict[str, list[tuple[float, float]]] = {"first": [], "second": []}
    started: dict[str, float] = {}
    first_expired = asyncio.Event()

    def on_change(label: str) -> Callable[[ShardsChanged], Any]:
        async def record(change: ShardsChanged) -> None:
            # One shard group throughout (a single node id owns every shard): a gain
            # opens the hold, a loss closes it.
            if change.gained:
                started[label] = change.at
            if change.lost:
                holds[label].append((started.pop(label), change.at))
                if label == "first" and change.expired:
                    first_expired.set()

        return record

    settings: dict[str, Any] = {
        "num_shards": 8,
        "group": group,
        "lease": 1.0,
        "heartbeat_interval": 0.25,
        "failure_timeout": 1.0,
    }
    nc1, nc2 = await nats.connect(nats_url), await nats.connect(nats_url)
    try:
        first = ClusterManager(nc1, "twin", on_shards_changed=on_change("first"), **settings)
        second = ClusterManager(nc2, "twin", on_shards_changed=on_change("second"), **settings)
        async with first:
            async with asyncio.timeout(TIMEOUT):
                assert await first.wait_for_shards() == frozenset(range(8))
            async with second:
                # The first loses its record (and so its shards) to the second.
                async with asyncio.timeout(TIMEOUT):
                    await first_expired.wait()
                await first.__aexit__(None, None, None)
                # Alone again: the second ends up with every shard.
                async with asyncio.timeout(TIMEOUT):
                    assert await second.wait_for_shards() == frozenset(range(8))
                for label in ("first", "second"):
                    if label in started:
                        holds[label].append((started[label], math.inf))
                for start_a, end_a in holds["first"]:
                    for start_b, end_b in holds["second"]:
                        assert end_a <= start_b or end_b <= start_a, (holds, "held twice")
    finally:
        await nc1.close()
        await nc2.close()


@pytest.mark.fault
async def test_a_handler_outliving_its_lease_in_a_handoff_is_cancelled_before_the_new_owner_runs(
    nats_url: str,
) -> None:
    """A handler still running one lease after its shard was revoked is cancelled; the old
    owner announces ``lost`` and confirms the release only once it has unwound, so the new
    owner runs its first request for the actor after that (recorded monotonic times)."""
    group = f"t{uuid.uuid4().hex[:10]}"
    settings: dict[str, Any] = {
        "num_shards": 8,
        "group": group,
        "lease": 2.0,  # the handler outlives it; long enough not to lapse on a busy machine
        "heartbeat_interval": 0.25,
        "failure_timeout": 1.0,
    }
    target = place({"a", "b"}, 8)
    actor = next(
        a for a in (f"actor-{i}" for i in range(1000)) if target[ShardManager(8).shard_of(a)] == "b"
    )
    shard = ShardManager(8).shard_of(actor)
    times: dict[str, float] = {}
    started, never = asyncio.Event(), asyncio.Event()

    async def blocking(actor_id: str, payload: bytes) -> bytes:
        times["a started"] = time.monotonic()
        started.set()
        try:
            await never.wait()  # never set: longer than any lease
        except asyncio.CancelledError:
            times["a cancelled"] = time.monotonic()
            raise
        return b"a"

    expired: list[bool] = []

    async def on_change_a(change: ShardsChanged) -> None:
        if shard in change.lost:
            times.setdefault("a lost", time.monotonic())
            expired.append(change.expired)

    b_gained = asyncio.Event()

    async def on_change_b(change: ShardsChanged) -> None:
        if shard in change.gained:
            b_gained.set()

    async def quick(actor_id: str, payload: bytes) -> bytes:
        if actor_id == actor:
            times.setdefault("b first ran", time.monotonic())
        return b"b"

    nc1, nc2 = await nats.connect(nats_url), await nats.connect(nats_url)
    try:
        a = ClusterManager(nc1, "a", handler=blocking, on_shards_changed=on_change_a, **settings)
        b = ClusterManager(nc2, "b", handler=quick, on_shards_changed=on_change_b, **settings)
        async with a:
            async with asyncio.timeout(TIMEOUT):
                assert await a.wait_for_shards() == frozenset(range(8))
            first = asyncio.create_task(a.request(actor, b"x", timeout=TIMEOUT))
            async with asyncio.timeout(TIMEOUT):
                await started.wait()
            async with b:
                async with asyncio.timeout(TIMEOUT):
                    await b_gained.wait()  # the handoff completed
                assert await b.request(actor, b"y", timeout=TIMEOUT) == b"b"
                with pytest.raises(HandlerError, match="HandlerCancelled"):
                    await first
                assert not never.is_set()
                assert times["a started"] < times["a cancelled"] < times["b first ran"], times
                assert times["a lost"] < times["b first ran"], times
                if not expired[0]:  # a revocation (not a lapse of a's lease on a busy machine)
                    assert times["a cancelled"] <= times["a lost"], times
    finally:
        await nc1.close()
        await nc2.close()


@pytest.mark.fault
@pytest.mark.parametrize("edit", ["delete", "garbage"])
async def test_a_deleted_or_malformed_assignment_is_refused_without_spinning(
    nats_url: str, edit: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The stored assignment deleted or overwritten by hand: the leader writes no new one
    over it (a blind version could repeat one a node applied), says so once, and backs
    off between looks however often it is woken (counted, not timed)."""
    group = f"t{uuid.uuid4().hex[:10]}"
    settings: dict[str, Any] = {
        "num_shards": 8,
        "group": group,
        "lease": 1.0,
        "heartbeat_interval": 0.25,
        "failure_timeout": 1.0,
    }
    nc1, nc2 = await nats.connect(nats_url), await nats.connect(nats_url)
    try:
        solo = ClusterManager(nc1, "solo", **settings)
        async with solo:
            async with asyncio.timeout(TIMEOUT):
                assert await solo.wait_for_shards() == frozenset(range(8))
            kv = await nc2.jetstream().key_value(f"aether_shards_{group}")
            if edit == "delete":
                await kv.delete("assignment")
            else:
                await kv.put("assignment", b"{not json")
            steps, attempts = 0, 0
            real_step, real_update = solo._lead_step, solo._kv.update  # type: ignore[union-attr]

            async def counted_step(*args: Any) -> float:
                nonlocal steps
                steps += 1
                return await real_step(*args)

            async def counted_update(key: str, *args: Any, **kwargs: Any) -> int:
                nonlocal attempts
                attempts += key == "assignment"
                return await real_update(key, *args, **kwargs)

            solo._lead_step = counted_step  # type: ignore[method-assign]
            solo._kv.update = counted_update  # type: ignore[union-attr, method-assign]
            caplog.clear()
            # A joining node needs a new placement: the leader must write, and cannot.
            async with ClusterManager(nc2, "b", **settings) as b:
                async with asyncio.timeout(TIMEOUT):
                    while solo._refusals < 4:
                        await solo._view.wait_newer(solo._view.version, 0.05)
                assert attempts == solo._refusals  # no write between the refused ones
                assert steps > attempts  # woken (records, discovery) more often than it wrote
                refusing = [r for r in caplog.records if "refusing" in r.getMessage()]
                assert len(refusing) == 1, refusing
                assert not b.owned_shards
                assert solo.owned_shards == frozenset(range(8))  # kept: safe, nothing moved
            if edit == "delete":
                with pytest.raises(nats.js.errors.KeyNotFoundError):
                    await kv.get("assignment")
            else:
                assert (await kv.get("assignment")).value == b"{not json"
    finally:
        await nc1.close()
        await nc2.close()


def test_bad_settings_are_refused() -> None:
    nc: Any = object()
    for kwargs in ({"group": "a.b"}, {"num_shards": 0}, {"lease": 0}, {"failure_timeout": 0.5}):
        with pytest.raises(ClusterConfigError):
            ClusterManager(nc, "n1", heartbeat_interval=1.0, **kwargs)
    with pytest.raises(ClusterConfigError):
        ClusterManager(nc, "bad id")


# -- examples/sharded_accounts.py ---------------------------------------------------------------


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"aether_example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.fault
async def test_sharded_accounts_keeps_exact_balances_when_a_worker_is_killed(
    nats_url: str,
) -> None:
    example = load_example("sharded_accounts")
    settings = example.Settings(
        num_shards=NUM_SHARDS, lease=1.0, heartbeat_interval=0.25, failure_timeout=1.0
    )
    report = await example.demo(
        nats_url, workers=3, accounts=30, commands=900, settings=settings, request_timeout=2.0
    )
    assert report.killed == "w1"
    assert not report.problems
    # Every deposit was acknowledged, and the stream holds each exactly once.
    assert report.stored == report.expected
    assert sum(report.expected.values()) == sum(
        c.amount for c in example.demo_commands(accounts=30, commands=900)
    )


async def test_stopping_ends_a_task_that_swallowed_its_cancellation() -> None:
    """The regression: a manager's exit hung forever when one of its loops had swallowed
    the cancellation meant to stop it (Python 3.11's wait_for inside a nats-py request
    drops one that comes with the answer). Such a task is cancelled again until it ends."""
    waiting, swallowed = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # dropped, as wait_for may
        await asyncio.Event().wait()  # and the loop goes on

    task = asyncio.create_task(stubborn())
    await waiting.wait()
    async with asyncio.timeout(TIMEOUT):
        await stop_tasks([task])
    assert swallowed.is_set() and task.cancelled()
