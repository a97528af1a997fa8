"""Live notifications between components: the event bus, and the filters and patterns
that the bus and the stores' subscriptions share."""

from aether.bus.filter import SubscriptionFilter, match_actor_pattern, match_namespace_pattern

__all__ = ["SubscriptionFilter", "match_actor_pattern", "match_namespace_pattern"]
