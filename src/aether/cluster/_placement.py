"""Shard placement: which node should own each shard, and the safe steps to get there.

Pure functions and values, no I/O: :class:`~aether.cluster.ClusterManager`'s leader
computes them and stores the result in JetStream KV.

**Target.** :func:`place` puts the member node ids on a
:class:`~aether.cluster.ConsistentHashRing` and gives shard ``i`` to the node owning the
key ``"shard-<i>"``. The ring's minimal movement carries over: when a node leaves only
its shards change owner, when one joins only shards that now belong to it change owner.

**Steps.** An :class:`Assignment` is versioned (``version`` 1, 2, 3, ... each stored
step one more). A shard never goes straight from one node to another:
:func:`next_assignment` first *revokes* it (owner ``None``, the old owner recorded in
:attr:`Assignment.releasing` with the version that revoked it), and only grants it to its
new owner in a later step, once the caller says the old owner has released it (its
``released`` callback). A free shard (no owner, nobody releasing it) is granted at once.
So at every version each shard has at most one node that may hold it: its owner, or the
node still releasing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from aether.cluster._ring import ConsistentHashRing

__all__ = [
    "Assignment",
    "Revocation",
    "moves",
    "next_assignment",
    "place",
    "shard_key",
]


def shard_key(shard: int) -> str:
    """The ring key of *shard*: ``"shard-<shard>"``."""
    return f"shard-{shard}"


def place(
    members: Iterable[str], num_shards: int, *, virtual_nodes: int = 150
) -> tuple[str | None, ...]:
    """The target owner of each shard ``0 .. num_shards - 1`` among *members*.

    Shard ``i`` goes to the node a :class:`~aether.cluster.ConsistentHashRing` over
    *members* (``virtual_nodes`` points each) names for the key ``"shard-<i>"``: the
    same answer in every process. Every shard is ``None`` when *members* is empty.

    Raises:
        ValueError: if ``num_shards < 1``.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    ring = ConsistentHashRing(virtual_nodes)
    for node in members:
        ring.add_node(node)
    if not ring.nodes:
        return (None,) * num_shards
    return tuple(ring.get_node(shard_key(i)) for i in range(num_shards))


def moves(
    before: Sequence[str | None], after: Sequence[str | None]
) -> dict[int, tuple[str | None, str | None]]:
    """The shards whose owner differs between two owner lists: ``{shard: (old, new)}``.

    Raises:
        ValueError: if the lists differ in length.
    """
    if len(before) != len(after):
        raise ValueError(f"{len(before)} shards before, {len(after)} after")
    return {i: (b, a) for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a}


@dataclass(frozen=True)
class Revocation:
    """A shard taken from *node* by the assignment of version *version*, not yet known
    to be released: *node* may hold it until it has applied that version (or its lease
    has run out)."""

    node: str
    version: int


@dataclass(frozen=True)
class Assignment:
    """Which node owns each shard, at one version of the placement.

    Attributes:
        version: 0 for the empty assignment nothing has stored yet, then 1, 2, 3, ...:
            each stored step is one more.
        owners: the owner of each shard (index = shard number); ``None`` for none.
        releasing: shards revoked from a node that has not yet confirmed their release
            (their owner is ``None``).
        term: the election term of the leader that wrote it (a fencing token).
        leader: the node id of that leader.
    """

    version: int
    owners: tuple[str | None, ...]
    releasing: Mapping[int, Revocation] = field(default_factory=dict)
    term: int = 0
    leader: str = ""

    @classmethod
    def empty(cls, num_shards: int) -> Assignment:
        """Version 0: no shard owned, nothing releasing."""
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        return cls(0, (None,) * num_shards)

    @property
    def num_shards(self) -> int:
        """The number of shards."""
        return len(self.owners)

    def owner(self, shard: int) -> str | None:
        """The owner of *shard*, ``None`` if it has none at this version."""
        return self.owners[shard]

    def shards_of(self, node: str) -> frozenset[int]:
        """The shards *node* owns at this version."""
        return frozenset(i for i, owner in enumerate(self.owners) if owner == node)

    def nodes(self) -> frozenset[str]:
        """The nodes owning at least one shard or releasing one."""
        owning = {o for o in self.owners if o is not None}
        return frozenset(owning | {r.node for r in self.releasing.values()})

    def is_settled(self, target: Sequence[str | None]) -> bool:
        """Whether this assignment is *target* with nothing left releasing."""
        return not self.releasing and tuple(target) == self.owners

    # -- wire form --------------------------------------------------------------------

    def to_json(self) -> bytes:
        """The stored form: node ids listed once, owners as indexes into that list."""
        names = sorted(self.nodes())
        index = {name: n for n, name in enumerate(names)}
        doc: dict[str, Any] = {
            "version": self.version,
            "term": self.term,
            "leader": self.leader,
            "nodes": names,
            "owners": [-1 if o is None else index[o] for o in self.owners],
            "releasing": {
                str(shard): [index[r.node], r.version]
                for shard, r in sorted(self.releasing.items())
            },
        }
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, data: bytes) -> Assignment:
        """Read :meth:`to_json`'s form back. Raises ValueError if *data* is not one."""
        try:
            doc = orjson.loads(data)
            names: list[str] = [str(n) for n in doc["nodes"]]
            owners = tuple(None if i < 0 else names[i] for i in doc["owners"])
            releasing = {
                int(shard): Revocation(names[node], int(version))
                for shard, (node, version) in doc["releasing"].items()
            }
            return cls(int(doc["version"]), owners, releasing, int(doc["term"]), str(doc["leader"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"not a stored shard assignment: {exc}") from exc


def next_assignment(
    current: Assignment,
    target: Sequence[str | None],
    *,
    released: Callable[[Revocation], bool],
    term: int = 0,
    leader: str = "",
) -> Assignment:
    """One safe step from *current* towards the owners *target*; *current* if none is due.

    - A shard owned by a node other than its target owner is revoked: its owner becomes
      ``None`` and it is recorded in ``releasing`` with the new version.
    - A revocation for which ``released(revocation)`` is true is dropped (the node has
      released the shard, or can no longer hold it).
    - A shard with no owner and nobody releasing it is granted to its target owner. A
      shard still being released by its target owner itself is given back to it (that
      node is the only one that may hold it).

    Only shards whose owner differs from *target* change; a shard is never granted in
    the step that revokes it.

    Raises:
        ValueError: if *target* and *current* differ in their number of shards.
    """
    if len(target) != current.num_shards:
        raise ValueError(f"target has {len(target)} shards, the assignment {current.num_shards}")
    version = current.version + 1
    releasing = {s: r for s, r in current.releasing.items() if not released(r)}
    owners = list(current.owners)
    for shard, (owner, wanted) in enumerate(zip(current.owners, target, strict=True)):
        if owner == wanted:
            continue
        if owner is not None:
            owners[shard] = None
            releasing[shard] = Revocation(owner, version)
            continue
        pending = releasing.get(shard)
        if pending is None:
            owners[shard] = wanted
        elif pending.node == wanted:
            owners[shard] = wanted
            del releasing[shard]
    if tuple(owners) == current.owners and releasing == current.releasing:
        return current
    return Assignment(version, tuple(owners), releasing, term, leader)
