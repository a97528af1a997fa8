"""Actors to shards: a fixed number of shards, each actor in one of them for good.

Placing shards rather than actors on nodes keeps the placement small (``num_shards``
entries whatever the number of actors) and lets a node take or release many actors at
once. ``shard_of`` is the 64-bit BLAKE2b hash of the actor id's UTF-8 bytes
(:func:`~aether.cluster._ring.stable_hash64`) modulo ``num_shards``, so it is the same in
every process, machine and Python version; the bias of the modulo is below
``num_shards / 2**64``, nothing.

Changing ``num_shards`` moves almost every actor to another shard: choose it once per
deployment, well above the number of nodes you expect (the default, 1024, suits up to
about a hundred nodes).
"""

from __future__ import annotations

from aether.cluster._ring import stable_hash64

__all__ = ["ShardManager"]


class ShardManager:
    """Maps actor ids to shards ``0 .. num_shards - 1``.

    Args:
        num_shards: number of shards (at least 1).

    Raises:
        ValueError: if ``num_shards < 1``.
    """

    def __init__(self, num_shards: int = 1024) -> None:
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._num_shards = num_shards

    @property
    def num_shards(self) -> int:
        """Number of shards."""
        return self._num_shards

    @property
    def shards(self) -> range:
        """Every shard number: ``range(num_shards)``."""
        return range(self._num_shards)

    def shard_of(self, actor_id: str) -> int:
        """The shard of *actor_id*, in ``range(num_shards)``; the same everywhere."""
        return stable_hash64(actor_id) % self._num_shards

    def __repr__(self) -> str:
        return f"ShardManager(num_shards={self._num_shards})"
