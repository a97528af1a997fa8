"""LeaderElection on real nats-servers: one leader at a time, fencing terms, failover.

In-process tests use one connection per candidate. The fault tests run each candidate
as its own OS process (``tests/_election_process.py``) that records, on the machine's
shared monotonic clock, when it was elected, each lease deadline it believed in
(``claim``), each moment it read ``is_leader == True`` (``act``) and when it was deposed.
:func:`check` then asserts over all records that

- no two leaderships overlap: each one's last claimed deadline (or last act) precedes
  the next one's election, whoever holds them;
- terms strictly increase from one leadership to the next;
- no node acted as leader after the deadline it had last been granted.

and each fault test asserts that a new leader came within ``FAILOVER_BOUND`` of the
fault: three leases, where the protocol promises about ``ceil(lease) + lease / 2``
(generous, since CI shares two cores). Leases are 1 s so the tests run quickly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from aether.cluster import LeaderElection
from aether.testing import NatsCluster, NatsServer

LEASE = 1.0
FAILOVER_BOUND = 3 * LEASE
#: How long a test waits for a condition before failing (never a synchronisation).
PATIENCE = 30.0
ROOT = Path(__file__).resolve().parent.parent


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def eventually(condition: Callable[[], Any], what: str, within: float = PATIENCE) -> Any:
    """Poll *condition* until it returns something truthy, and return that."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------- the checker


@dataclass
class Leadership:
    node: str
    term: int
    elected: float
    claims: list[float] = field(default_factory=list)
    acts: list[float] = field(default_factory=list)
    deposed: float | None = None

    @property
    def end(self) -> float:
        """The last instant this node could have acted on this leadership."""
        return max([*self.claims, *self.acts, self.elected])


def leaderships(records: list[dict[str, Any]]) -> list[Leadership]:
    by_key: dict[tuple[str, int], Leadership] = {}
    for r in records:
        if r["ev"] == "elected":
            by_key[(r["node"], r["term"])] = Leadership(r["node"], r["term"], r["t"])
    for r in records:
        key = (r["node"], r.get("term"))
        if r["ev"] in ("claim", "act", "deposed"):
            assert key in by_key, f"{r} outside any recorded election"
            lead = by_key[key]
            if r["ev"] == "claim":
                lead.claims.append(r["until"])
            elif r["ev"] == "act":
                lead.acts.append(r["t"])
            else:
                lead.deposed = r["t"]
    return sorted(by_key.values(), key=lambda lead: lead.elected)


def check(records: list[dict[str, Any]]) -> list[Leadership]:
    """Assert the safety properties over every candidate's records; the leaderships."""
    leads = leaderships(records)
    for lead in leads:
        # (a process killed right after its election may have recorded no deadline)
        granted = max(lead.claims, default=lead.elected)
        stale = [t for t in lead.acts if t >= granted]
        assert not stale, f"{lead.node} acted on term {lead.term} after its lease: {stale}"
    for before, after in itertools.pairwise(leads):
        assert before.end < after.elected, f"overlapping leaderships: {before} and {after}"
        assert before.term < after.term, f"terms not increasing: {before} then {after}"
    return leads


def test_checker_catches_overlap_and_stale_terms() -> None:
    a = [
        {"ev": "elected", "node": "a", "term": 5, "t": 1.0},
        {"ev": "claim", "node": "a", "term": 5, "until": 2.0},
    ]
    check([*a, {"ev": "elected", "node": "b", "term": 9, "t": 2.5}])
    with pytest.raises(AssertionError, match="overlapping"):
        check([*a, {"ev": "elected", "node": "b", "term": 9, "t": 1.5}])
    with pytest.raises(AssertionError, match="terms not increasing"):
        check([*a, {"ev": "elected", "node": "b", "term": 4, "t": 2.5}])
    with pytest.raises(AssertionError, match="after its lease"):
        check([*a, {"ev": "act", "node": "a", "term": 5, "t": 2.1}])


# ---------------------------------------------------------------------- in process


@asynccontextmanager
async def candidates(
    urls: list[str],
    count: int,
    *,
    lease: float = LEASE,
    kwargs_for: Callable[[str], dict[str, Any]] = lambda node: {},
    group: str | None = None,
    bucket: str | None = None,
) -> AsyncIterator[list[LeaderElection]]:
    """*count* candidates ``n0``, ``n1``... of one group and bucket (new ones unless
    given), each on its own connection; ``kwargs_for(node)``: more arguments for a
    node's LeaderElection."""
    group, bucket = group or unique("g"), bucket or unique("leases")
    clients: list[Client] = []
    elections: list[LeaderElection] = []
    try:
        for i in range(count):
            nc = await nats.connect(servers=urls, max_reconnect_attempts=-1)
            clients.append(nc)
            node = f"n{i}"
            election = LeaderElection(
                nc,
                node,
                group=group,
                bucket=bucket,
                lease=timedelta(seconds=lease),
                **kwargs_for(node),
            )
            elections.append(await election.__aenter__())
        yield elections
    finally:
        for election in elections:
            await election.close()
        for nc in clients:
            await nc.close()


def leaders(elections: list[LeaderElection]) -> list[LeaderElection]:
    return [e for e in elections if e.is_leader]


async def test_one_leader_and_followers_see_it(nats_url: str) -> None:
    async with candidates([nats_url], 3) as elections:
        waits = [asyncio.create_task(e.wait_until_leader()) for e in elections]
        done, pending = await asyncio.wait(
            waits, timeout=PATIENCE, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        assert len(done) == 1
        (leader,) = leaders(elections)
        assert done.pop().result() == leader.term
        assert leader.leader_id == leader.node_id
        assert leader.term > 0
        assert 0 < leader.lease_remaining <= LEASE
        followers = [e for e in elections if e is not leader]
        await eventually(
            lambda: all(f.leader_id == leader.node_id for f in followers), "followers see it"
        )
        assert all(f.term == leader.term and not f.is_leader for f in followers)
        assert all(f.valid_until is None and f.lease_remaining == 0.0 for f in followers)


async def test_resign_hands_over_at_once_with_a_greater_term(nats_url: str) -> None:
    """A 60 s lease: only the resign (a revision-checked delete seen by the watch), not an
    expiry, can hand over within the test; terms increase at each hand-over."""
    events: list[tuple[str, str, int]] = []

    def record(node: str) -> dict[str, Any]:
        return {
            "on_elected": lambda term: events.append(("elected", node, term)),
            "on_deposed": lambda term: events.append(("deposed", node, term)),
        }

    async with candidates([nats_url], 3, lease=60.0, kwargs_for=record) as elections:
        remaining = list(elections)
        terms = []
        while remaining:
            (leader,) = await eventually(lambda: leaders(remaining), "a leader")
            terms.append(leader.term)
            await leader.close()
            assert not leader.is_leader and not leader.running
            remaining.remove(leader)
        assert terms == sorted(set(terms)), terms
        # every leadership ended with its own on_deposed, before the next began
        assert [ev for ev, _, _ in events] == ["elected", "deposed"] * 3, events


async def test_wait_for_change_and_callbacks(nats_url: str) -> None:
    async with candidates([nats_url], 2) as elections:
        await eventually(lambda: leaders(elections), "a leader")
        (leader,) = leaders(elections)
        (follower,) = [e for e in elections if e is not leader]
        woke = asyncio.create_task(follower.wait_for_change())
        await leader.close()
        await asyncio.wait_for(woke, PATIENCE)
        term = await asyncio.wait_for(follower.wait_until_leader(), PATIENCE)
        assert term == follower.term > leader.term
    with pytest.raises(RuntimeError):
        await follower.wait_for_change()
    with pytest.raises(RuntimeError):
        await follower.wait_until_leader()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_id": ""},
        {"node_id": "a.b"},
        {"group": "a b"},
        {"group": "a.b"},
        {"group": "é"},
        {"lease": timedelta(0)},
        {"margin": timedelta(seconds=2)},
    ],
)
async def test_bad_arguments(nats_url: str, kwargs: dict[str, Any]) -> None:
    nc = await nats.connect(nats_url)
    try:
        args: dict[str, Any] = {"node_id": "n", **kwargs}
        with pytest.raises(ValueError):
            LeaderElection(nc, args.pop("node_id"), **args)
    finally:
        await nc.close()


@pytest.mark.fault
async def test_leader_without_server_steps_down_and_terms_go_on(
    fresh_nats_server: NatsServer,
) -> None:
    """The only server dies: the leader cannot renew and reads is_leader False (and gets
    on_deposed) from the clock alone; when the server is back a leader is elected with a
    greater term."""
    deposed: list[int] = []
    url = fresh_nats_server.url
    async with candidates(
        [url], 2, kwargs_for=lambda _: {"on_deposed": deposed.append}
    ) as elections:
        (leader,) = await eventually(lambda: leaders(elections), "a leader")
        first = leader.term
        await asyncio.to_thread(fresh_nats_server.kill)
        await eventually(lambda: deposed == [first], "the leader deposed")
        assert not leaders(elections)
        await asyncio.to_thread(fresh_nats_server.restart)
        (leader,) = await eventually(lambda: leaders(elections), "a leader after restart")
        assert leader.term > first


# ---------------------------------------------------------------------- foreign records


async def write_foreign(
    url: str, bucket: str, group: str, payload: bytes, headers: dict[str, str] | None = None
) -> int:
    """Create *bucket* as LeaderElection does and put *payload* in *group*'s key with a
    plain JetStream publish (no TTL unless *headers* give one); its revision."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, limit_marker_ttl=60))
        ack = await js.publish(f"$KV.{bucket}.{group}", payload, headers=headers)
        return int(ack.seq)
    finally:
        await nc.close()


FOREIGN_VALUES = {
    "no-ttl": (b'{"node": "ops", "token": "by-hand"}', None),
    "malformed": (b"\x00 not a lease record", None),
    "ttl-far-beyond-the-lease": (b'{"node": "ops", "token": "by-hand"}', {"Nats-TTL": "1h"}),
}


@pytest.mark.parametrize("kind", FOREIGN_VALUES)
async def test_a_record_never_renewed_is_taken_over(nats_url: str, kind: str) -> None:
    """A value nobody renews and the server does not expire (soon) does not lock the
    group out: a candidate takes it over (after 1.25 leases unchanged) with a greater
    term, and its followers see it."""
    group, bucket = unique("g"), unique("leases")
    payload, headers = FOREIGN_VALUES[kind]
    foreign = await write_foreign(nats_url, bucket, group, payload, headers)
    async with candidates([nats_url], 2, group=group, bucket=bucket) as elections:
        (leader,) = await eventually(lambda: leaders(elections), "a leader over the record")
        assert leader.term > foreign
        (follower,) = [e for e in elections if e is not leader]
        await eventually(lambda: follower.leader_id == leader.node_id, "the follower sees it")


async def test_a_slow_renewer_with_a_longer_lease_is_not_taken_over(nats_url: str) -> None:
    """Candidates with different leases: a leader with a 6 s lease renews every 2 s,
    longer than 1.25 leases of a 1 s candidate. Its record declares its lease (capped by
    its TTL), so the short-lease candidate does not take it over while it leads."""
    group, bucket = unique("g"), unique("leases")
    clients = [await nats.connect(nats_url) for _ in range(2)]
    elected: list[str] = []
    try:
        slow = LeaderElection(
            clients[0], "slow", group=group, bucket=bucket, lease=timedelta(seconds=6)
        )
        quick = LeaderElection(
            clients[1],
            "quick",
            group=group,
            bucket=bucket,
            lease=timedelta(seconds=LEASE),
            on_elected=lambda term: elected.append("quick"),
        )
        async with slow:
            await asyncio.wait_for(slow.wait_until_leader(), PATIENCE)
            async with quick:
                deadlines = {slow.valid_until}

                def renewed_three_times() -> bool:  # about 6 s: 4.8 quick leases
                    assert slow.is_leader and not quick.is_leader and not elected
                    deadlines.add(slow.valid_until)
                    return len(deadlines) >= 4

                await eventually(renewed_three_times, "three renewals")
                assert quick.leader_id == "slow"
    finally:
        for nc in clients:
            await nc.close()


# ---------------------------------------------------------------------- OS processes


class Candidates:
    """Candidate processes of one group, each recording to its own file."""

    def __init__(self, tmp: Path, urls: list[str], *, replicas: int = 1) -> None:
        self.tmp = tmp
        self.urls = urls
        self.replicas = replicas
        self.group = unique("g")
        self.bucket = unique("leases")
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    def path(self, node: str) -> Path:
        return self.tmp / f"{node}.jsonl"

    async def start(self, count: int) -> None:
        async def spawn(node: str) -> None:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests._election_process",
                str(self.path(node)),
                node,
                self.group,
                self.bucket,
                str(LEASE),
                str(self.replicas),
                *self.urls,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            self.procs[node] = proc
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), PATIENCE)
            assert line.strip() == b"ready", line

        await asyncio.gather(*(spawn(f"p{i}") for i in range(count)))

    def records(self) -> list[dict[str, Any]]:
        out = []
        for node in self.procs:
            path = self.path(node)
            if path.exists():
                for line in path.read_text().splitlines():
                    with suppress(ValueError):  # a line being written right now
                        out.append(json.loads(line))
        return out

    def current_leader(self) -> Leadership | None:
        """The latest leadership whose node is still acting on it."""
        leads = leaderships(self.records())
        if leads and leads[-1].acts and leads[-1].deposed is None:
            return leads[-1]
        return None

    def elected_after(self, t: float) -> Leadership | None:
        later = [lead for lead in leaderships(self.records()) if lead.elected > t]
        return later[0] if later else None

    def signal(self, node: str, sig: int) -> float:
        """Send *sig* to *node*'s process; the monotonic time just before."""
        t = time.monotonic()
        os.kill(self.procs[node].pid, sig)
        return t

    async def close(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), PATIENCE)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def procs(tmp_path: Path, nats_url: str) -> AsyncIterator[Candidates]:
    group = Candidates(tmp_path, [nats_url])
    try:
        yield group
    finally:
        await group.close()


@pytest.mark.slow
@pytest.mark.fault
async def test_leader_process_killed(procs: Candidates) -> None:
    await procs.start(3)
    first = await eventually(procs.current_leader, "a first leader")
    t_kill = procs.signal(first.node, signal.SIGKILL)
    after = await eventually(lambda: procs.elected_after(t_kill), "a leader after the kill")
    assert after.node != first.node
    assert after.term > first.term
    assert after.elected - t_kill <= FAILOVER_BOUND, (after, t_kill)
    check(procs.records())


@pytest.mark.slow
@pytest.mark.fault
async def test_leader_process_paused_past_its_lease(procs: Candidates) -> None:
    """SIGSTOP the leader until another is elected (so its lease has expired), SIGCONT it:
    its first read of is_leader, before its event loop runs anything (no timer, no
    renewal), is False; it never acts on its old term again, and reports its end."""
    await procs.start(3)
    first = await eventually(procs.current_leader, "a first leader")
    t_stop = procs.signal(first.node, signal.SIGSTOP)
    after = await eventually(lambda: procs.elected_after(t_stop), "a leader during the pause")
    assert after.node != first.node and after.term > first.term
    assert after.elected - t_stop <= FAILOVER_BOUND, (after, t_stop)
    t_cont = procs.signal(first.node, signal.SIGCONT)

    def paused_one_deposed() -> bool:
        return any(
            lead.node == first.node and lead.term == first.term and lead.deposed is not None
            for lead in leaderships(procs.records())
        )

    await eventually(paused_one_deposed, "the paused leader reports its deposition")
    (woke,) = [r for r in procs.records() if r["ev"] == "woke" and r["node"] == first.node]
    assert woke["leading"] is False, woke  # its very first read after the pause
    leads = check(procs.records())
    (old,) = [lead for lead in leads if (lead.node, lead.term) == (first.node, first.term)]
    assert all(t < t_cont for t in old.acts), "acted on the old term after waking"
    assert max(old.claims) < after.elected


@pytest.mark.slow
async def test_candidates_racing_over_a_stale_record_elect_one_leader_who_stays(
    procs: Candidates, nats_url: str
) -> None:
    """Three processes start together over a record with no TTL: they all see it go
    stale at about the same time and race to take it over; exactly one wins. Then the
    stale-record rule never deposes that live leader: it keeps its term for several
    leases (many renewals) while the others keep watching."""
    foreign = await write_foreign(nats_url, procs.bucket, procs.group, b'{"node": "ops"}')
    await procs.start(3)
    first = await eventually(procs.current_leader, "a leader over the stale record")
    assert first.term > foreign

    def renewed_for_several_leases() -> bool:
        leads = leaderships(procs.records())
        # claims come a third of a lease apart: twelve of them span about four leases
        return len(leads) > 1 or len(leads[0].claims) >= 12

    await eventually(renewed_for_several_leases, "several leases of renewals")
    (lead,) = check(procs.records())  # one leadership only, safe throughout
    assert (lead.node, lead.term, lead.deposed) == (first.node, first.term, None)


@pytest.mark.slow
@pytest.mark.fault
async def test_successive_failovers_keep_one_leader_and_increasing_terms(
    procs: Candidates,
) -> None:
    """Kill three leaders in a row out of four candidates."""
    await procs.start(4)
    seen = []
    for _ in range(3):
        lead = await eventually(procs.current_leader, "a leader")
        seen.append(lead)
        t_kill = procs.signal(lead.node, signal.SIGKILL)
        after = await eventually(lambda t=t_kill: procs.elected_after(t), "a successor")
        assert after.elected - t_kill <= FAILOVER_BOUND
    leads = check(procs.records())
    assert len({lead.node for lead in seen}) == 3
    assert len(leads) >= 4


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.cluster
async def test_stream_leader_server_killed(tmp_path: Path, nats_cluster: NatsCluster) -> None:
    """R3 bucket on a 3-node cluster; the server leading the bucket's stream is killed.

    JetStream elects a new stream leader (seconds), during which no renewal can land: the
    leader steps down on its own clock rather than outlive its lease. Safety is checked
    over the whole run; liveness here is bounded by the stream's own failover, so the
    test only waits for a leader elected after the kill (within PATIENCE).
    """
    group = Candidates(tmp_path, nats_cluster.urls, replicas=3)
    killed: int | None = None
    try:
        await group.start(3)
        first = await eventually(group.current_leader, "a first leader")
        stream = f"KV_{group.bucket}"
        killed = await asyncio.to_thread(nats_cluster.wait_for_leader, stream)
        t_kill = time.monotonic()
        await asyncio.to_thread(nats_cluster.kill, killed)

        def leads_after_kill() -> bool:
            # an act later than any lease granted before the kill could last
            return any(
                t > t_kill + LEASE for lead in leaderships(group.records()) for t in lead.acts
            )

        await eventually(leads_after_kill, "a leader acting after the kill")
        leads = check(group.records())
        assert (first.node, first.term) in {(lead.node, lead.term) for lead in leads}
    finally:
        await group.close()
        if killed is not None:
            await asyncio.to_thread(nats_cluster.start, killed)
