"""Placing actors on nodes so that each actor has one writer, on NATS alone.

- :class:`ConsistentHashRing`: which node owns a key, the same answer in every process.
- :class:`ShardManager`: actor ids to a fixed number of shards.
- :class:`NodeDiscovery`: the live members of a group, by heartbeats on core NATS.
- :class:`LeaderElection`: one leader per group, by a lease record in a JetStream KV
  bucket; ``term`` is a fencing token.
"""

from aether.cluster._discovery import NodeDiscovery
from aether.cluster._election import LeaderElection
from aether.cluster._ring import ConsistentHashRing
from aether.cluster._shards import ShardManager

__all__ = ["ConsistentHashRing", "LeaderElection", "NodeDiscovery", "ShardManager"]
