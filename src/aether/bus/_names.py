"""The namespaces and patterns a bus accepts (the same rules for every bus, so that code
moves between :class:`~aether.bus.EventBus` and :class:`~aether.bus.NatsEventBus`)."""

from __future__ import annotations

from aether.bus.errors import InvalidNamespaceError
from aether.bus.stored import INTERNAL_NAMESPACE

__all__ = ["check_namespace", "check_pattern", "check_prefix"]


def _tokens(value: object, what: str) -> list[str]:
    if not isinstance(value, str):
        raise InvalidNamespaceError(f"{what} must be a str, not {type(value).__name__}")
    tokens = value.split(".")
    for token in tokens:
        if not token:
            raise InvalidNamespaceError(
                f"{what} {value!r} has an empty token (tokens are split by '.')"
            )
        if " " in token or not token.isprintable():
            raise InvalidNamespaceError(
                f"{what} {value!r} contains whitespace or a control character"
            )
    return tokens


def check_namespace(namespace: object) -> None:
    """Raise InvalidNamespaceError unless *namespace* is one a message can be published to:
    non-empty ``.``-separated tokens, no whitespace, no wildcard, and ``__internal__`` only
    by itself."""
    tokens = _tokens(namespace, "namespace")
    for token in tokens:
        if "*" in token or ">" in token:
            raise InvalidNamespaceError(
                f"namespace {namespace!r} contains a wildcard ('*' and '>' are for patterns)"
            )
    if tokens[0] == INTERNAL_NAMESPACE and len(tokens) > 1:
        raise InvalidNamespaceError(
            f"namespace {namespace!r}: {INTERNAL_NAMESPACE!r} is reserved and has no sub-namespaces"
        )


def check_pattern(pattern: object) -> None:
    """Raise InvalidNamespaceError unless *pattern* is a namespace pattern: tokens as in a
    namespace, or ``*`` (one token), or ``>`` (one or more, last token only)."""
    tokens = _tokens(pattern, "pattern")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if token == ">" and i != last:
            raise InvalidNamespaceError(f"pattern {pattern!r}: '>' may only be the last token")
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise InvalidNamespaceError(
                f"pattern {pattern!r}: a wildcard must be a whole token ('prod.*', not 'prod*')"
            )
    if tokens[0] == INTERNAL_NAMESPACE and len(tokens) > 1:
        raise InvalidNamespaceError(
            f"pattern {pattern!r}: subscribe to {INTERNAL_NAMESPACE!r} itself "
            "(it has no sub-namespaces)"
        )


def check_prefix(prefix: object) -> None:
    """Raise InvalidNamespaceError unless *prefix* is a literal NATS subject prefix."""
    tokens = _tokens(prefix, "prefix")
    for token in tokens:
        if "*" in token or ">" in token:
            raise InvalidNamespaceError(f"prefix {prefix!r} must not contain a wildcard")
