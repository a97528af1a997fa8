"""Placing actors on nodes so that each actor has one writer, on NATS alone.

- :class:`ConsistentHashRing`: which node owns a key, the same answer in every process.
- :class:`ShardManager`: actor ids to a fixed number of shards.
- :class:`NodeDiscovery`: the live members of a group, by heartbeats on core NATS.
- :class:`LeaderElection`: one leader per group, by a lease record in a JetStream KV
  bucket; ``term`` is a fencing token.
- :class:`ClusterManager`: discovery, election and shard placement together: the leader
  keeps the assignment of shards to live nodes, and a shard is never owned by two nodes
  at once as they see it; :class:`ShardRouter` and ``ClusterManager.request`` send a
  request to an actor's owner (errors: :class:`ClusterError` and its subclasses).
"""

from aether.cluster._discovery import NodeDiscovery
from aether.cluster._election import LeaderElection
from aether.cluster._manager import (
    Assignment,
    ClusterConfigError,
    ClusterError,
    ClusterManager,
    HandlerError,
    NotOwnerError,
    RequestTimeoutError,
    Revocation,
    RoutingError,
    ShardRouter,
    ShardsChanged,
)
from aether.cluster._ring import ConsistentHashRing
from aether.cluster._shards import ShardManager

__all__ = [
    "Assignment",
    "ClusterConfigError",
    "ClusterError",
    "ClusterManager",
    "ConsistentHashRing",
    "HandlerError",
    "LeaderElection",
    "NodeDiscovery",
    "NotOwnerError",
    "RequestTimeoutError",
    "Revocation",
    "RoutingError",
    "ShardManager",
    "ShardRouter",
    "ShardsChanged",
]
