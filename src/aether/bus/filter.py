"""Which events a subscriber wants: event types and an actor-id pattern; NATS-style patterns.

Shared by the event bus and by the stores' ``subscribe``. Patterns follow NATS subject
wildcards, on tokens separated by ``.``: ``*`` matches exactly one token, ``>`` (as the
last token) one or more; any other token matches itself. Actor patterns add one rule: a
token ending in ``*`` matches any token starting with what precedes the ``*``
(``order-*`` matches ``order-123``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from aether.event import Event

__all__ = ["SubscriptionFilter", "match_actor_pattern", "match_namespace_pattern"]


def match_namespace_pattern(pattern: str, namespace: str) -> bool:
    """Whether *namespace* matches *pattern*: ``prod.*`` matches ``prod.orders`` but not
    ``prod.a.b``; ``prod.>`` matches both; ``*`` any one-token namespace. A ``>`` that is
    not the last token matches only itself."""
    return _match(pattern.split("."), namespace.split("."), prefixes=False)


def match_actor_pattern(pattern: str, actor_id: str) -> bool:
    """Whether *actor_id* matches *pattern*: the rules of :func:`match_namespace_pattern`,
    and a token ending in ``*`` matches any token that starts with the rest of it
    (``order-*`` matches ``order-123``, not ``customer-1``; ``tenant-a.*`` matches
    ``tenant-a.order-1``)."""
    return _match(pattern.split("."), actor_id.split("."), prefixes=True)


def _match(pattern: list[str], tokens: list[str], *, prefixes: bool) -> bool:
    last = len(pattern) - 1
    for i, wanted in enumerate(pattern):
        if wanted == ">" and i == last:
            return len(tokens) > i  # one or more tokens left
        if i >= len(tokens):
            return False
        token = tokens[i]
        if wanted == "*":
            continue
        if prefixes and wanted.endswith("*"):
            if not token.startswith(wanted[:-1]):
                return False
        elif token != wanted:
            return False
    return len(tokens) == len(pattern)


@dataclass(frozen=True)
class SubscriptionFilter:
    """An event passes if its type is one of ``event_types`` (any type when empty) **and**
    its actor id matches ``actor_pattern`` (:func:`match_actor_pattern`; any actor when
    None).

    ``event_types`` is any collection of str, kept as a frozenset; a single str is refused
    (TypeError), since ``"Opened"`` would otherwise mean the types ``O``, ``p``, ....
    """

    event_types: frozenset[str] = field(default_factory=frozenset)
    actor_pattern: str | None = None

    def __init__(self, event_types: Iterable[str] = (), actor_pattern: str | None = None) -> None:
        if isinstance(event_types, str | bytes):
            raise TypeError(
                "event_types must be a collection of str, not a single "
                f"{type(event_types).__name__} (write event_types=[{event_types!r}])"
            )
        types = frozenset(event_types)
        if not all(isinstance(t, str) for t in types):
            raise TypeError(f"event_types must hold str only, got {sorted(map(repr, types))}")
        if actor_pattern is not None and not isinstance(actor_pattern, str):
            raise TypeError(
                f"actor_pattern must be a str or None, not {type(actor_pattern).__name__}"
            )
        object.__setattr__(self, "event_types", types)
        object.__setattr__(self, "actor_pattern", actor_pattern)

    def matches(self, event: Event) -> bool:
        """Whether *event* passes the filter."""
        if self.event_types and event.event_type not in self.event_types:
            return False
        return self.actor_pattern is None or match_actor_pattern(self.actor_pattern, event.actor_id)
