"""Shard placement (``aether.cluster._placement``): pure, so property-tested.

- the target placement moves only what it must: on a leave only the leaving node's shards,
  on a join only shards that go to the new node; every shard goes to a member;
- the stored steps (``next_assignment``) never let two nodes hold a shard at once, whatever
  order nodes apply versions in, and reach the target once nodes have applied them;
- the wire form round-trips.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aether.cluster._placement import (
    Assignment,
    Revocation,
    moves,
    next_assignment,
    place,
)

node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=8)
member_sets = st.frozensets(node_ids, min_size=1, max_size=8)
shard_counts = st.integers(min_value=1, max_value=256)


def never(_: Revocation) -> bool:
    return False


def always(_: Revocation) -> bool:
    return True


@given(members=member_sets, num_shards=shard_counts)
def test_every_shard_goes_to_a_member(members: frozenset[str], num_shards: int) -> None:
    owners = place(members, num_shards)
    assert len(owners) == num_shards
    assert all(owner in members for owner in owners)


def test_no_members_no_owners() -> None:
    assert place([], 4) == (None, None, None, None)
    with pytest.raises(ValueError):
        place(["a"], 0)


@given(members=member_sets, num_shards=shard_counts, data=st.data())
def test_on_leave_only_the_leaving_nodes_shards_move(
    members: frozenset[str], num_shards: int, data: st.DataObject
) -> None:
    leaving = data.draw(st.sampled_from(sorted(members)))
    before = place(members, num_shards)
    after = place(members - {leaving}, num_shards)
    moved = moves(before, after)
    assert {shard for shard, (old, _) in moved.items()} == {
        shard for shard, owner in enumerate(before) if owner == leaving
    }
    assert all(old == leaving for old, _ in moved.values())


@given(members=member_sets, joining=node_ids, num_shards=shard_counts)
def test_on_join_only_shards_moving_to_the_new_node_move(
    members: frozenset[str], joining: str, num_shards: int
) -> None:
    before = place(members - {joining}, num_shards)
    after = place(members | {joining}, num_shards)
    assert all(new == joining for _, new in moves(before, after).values())


def test_the_target_is_the_same_in_every_order() -> None:
    assert place(["a", "b", "c"], 64) == place(["c", "a", "b", "a"], 64)


@given(members=member_sets, num_shards=shard_counts, data=st.data())
def test_a_step_moves_only_shards_whose_owner_must_change(
    members: frozenset[str], num_shards: int, data: st.DataObject
) -> None:
    leaving = data.draw(st.sampled_from(sorted(members)))
    settled = next_assignment(
        Assignment.empty(num_shards), place(members, num_shards), released=never
    )
    assert settled.version == 1 and not settled.releasing  # free shards are granted at once
    target = place(members - {leaving}, num_shards)
    revoked = next_assignment(settled, target, released=never, term=3, leader="x")
    if not settled.shards_of(leaving):
        assert revoked is settled  # nothing to move: no new version
        return
    assert (revoked.version, revoked.term, revoked.leader) == (2, 3, "x")
    # The first step only revokes, and only the leaving node's shards.
    assert moves(settled.owners, revoked.owners) == {
        shard: (leaving, None) for shard in settled.shards_of(leaving)
    }
    assert set(revoked.releasing) == set(settled.shards_of(leaving))
    # Nothing is granted while the release is unconfirmed...
    assert next_assignment(revoked, target, released=never) is revoked
    # ...then everything at once, and the target is reached.
    granted = next_assignment(revoked, target, released=always)
    assert granted.is_settled(target)
    assert granted.version == 3
    assert next_assignment(granted, target, released=always) is granted


def test_a_shard_released_by_its_target_owner_goes_straight_back() -> None:
    current = Assignment(5, ("a", None), {1: Revocation("b", 5)})
    back = next_assignment(current, ("a", "b"), released=never)
    assert back.owners == ("a", "b") and not back.releasing and back.version == 6


@given(members=member_sets, num_shards=shard_counts, data=st.data())
def test_the_wire_form_round_trips(
    members: frozenset[str], num_shards: int, data: st.DataObject
) -> None:
    leaving = data.draw(st.sampled_from(sorted(members)))
    first = next_assignment(
        Assignment.empty(num_shards), place(members, num_shards), released=never
    )
    second = next_assignment(
        first, place(members - {leaving}, num_shards), released=never, term=7, leader="lead"
    )
    for assignment in (Assignment.empty(num_shards), first, second):
        assert Assignment.from_json(assignment.to_json()) == assignment


def test_a_bad_wire_form_is_a_value_error() -> None:
    for data in (b"", b"{}", b'{"version": 1}', b"[1]"):
        with pytest.raises(ValueError):
            Assignment.from_json(data)


# -- the protocol, simulated -----------------------------------------------------------------


class Model:
    """The leader's steps and the nodes' applications, as ClusterManager runs them.

    A node holds the shards that the version it last applied gives it; it applies
    versions in increasing order, possibly skipping some. A revocation counts as released
    once its node has applied that version or has crashed (a crashed node holds nothing:
    the manager's lease and fence give that).
    """

    def __init__(self, num_shards: int) -> None:
        self.history = [Assignment.empty(num_shards)]
        self.applied: dict[str, int] = {}
        self.members: set[str] = set()
        self.alive: set[str] = set()  # every node started and not crashed, member or not
        self.crashed: set[str] = set()

    @property
    def current(self) -> Assignment:
        return self.history[-1]

    def released(self, revocation: Revocation) -> bool:
        node = revocation.node
        return node in self.crashed or self.applied.get(node, 0) >= revocation.version

    def leader_step(self) -> None:
        target = place(self.members, self.current.num_shards)
        step = next_assignment(self.current, target, released=self.released)
        if step is not self.current:
            assert step.version == self.current.version + 1
            self.history.append(step)

    def apply(self, node: str, version: int) -> None:
        if node not in self.crashed:
            self.applied[node] = max(self.applied.get(node, 0), version)

    def holders(self) -> dict[int, set[str]]:
        held: dict[int, set[str]] = {}
        for node, version in self.applied.items():
            if node in self.crashed:
                continue
            for shard in self.history[version].shards_of(node):
                held.setdefault(shard, set()).add(node)
        return held

    def check(self) -> None:
        doubles = {shard: nodes for shard, nodes in self.holders().items() if len(nodes) > 1}
        assert not doubles, doubles


@settings(max_examples=150)
@given(num_shards=st.integers(min_value=1, max_value=48), data=st.data())
def test_no_shard_is_ever_held_twice_and_the_target_is_reached(
    num_shards: int, data: st.DataObject
) -> None:
    model = Model(num_shards)
    names = [f"n{i}" for i in range(6)]
    operations = st.sampled_from(["join", "leave", "crash", "step", "apply", "apply"])
    for _ in range(data.draw(st.integers(min_value=1, max_value=40))):
        op = data.draw(operations)
        if op == "join":
            fresh = [n for n in names if n not in model.members and n not in model.crashed]
            if fresh:
                node = data.draw(st.sampled_from(fresh))
                model.members.add(node)
                model.alive.add(node)
        elif op in ("leave", "crash") and model.members:
            node = data.draw(st.sampled_from(sorted(model.members)))
            model.members.discard(node)  # a leaving node still applies what it reads
            if op == "crash":
                model.crashed.add(node)
                model.alive.discard(node)
        elif op == "step":
            model.leader_step()
        elif op == "apply" and model.alive:
            node = data.draw(st.sampled_from(sorted(model.alive)))
            version = data.draw(st.integers(model.applied.get(node, 0), model.current.version))
            model.apply(node, version)
        model.check()
    # Quiet: every node applies the latest version between the leader's steps.
    for _ in range(3):
        for node in sorted(model.alive):
            model.apply(node, model.current.version)
        model.leader_step()
        model.check()
    target = place(model.members, num_shards)
    assert model.current.is_settled(target)
    if model.members:
        assert all(owner in model.members for owner in model.current.owners)
