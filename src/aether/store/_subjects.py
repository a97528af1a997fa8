"""Stream names and the reversible actor-id -> subject-token encoding.

Any non-empty actor id is allowed. Characters outside ``[A-Za-z0-9-]`` (including the
escape character ``_`` itself) become ``_XX`` per UTF-8 byte, so the encoding is
injective and reversible, and no id can produce ``.``, ``*``, ``>`` or white space:
a read or write can never touch another actor's subject. Common ids (``order-42``,
UUIDs) stay readable.
"""

from __future__ import annotations

import re

from aether.errors import InvalidEventError

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPES = [chr(b) if b in _SAFE else f"_{b:02X}" for b in range(256)]
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")
_NAMESPACE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_ESCAPED = re.compile(r"_([0-9A-F]{2})")

# nats-server refuses protocol lines over 4 KiB (max_control_line); a subject close to that
# would make the server drop the connection, so long ids are refused up front.
MAX_TOKEN_LENGTH = 2048


def encode_actor_id(actor_id: str) -> str:
    """The subject token for *actor_id*. Raises InvalidEventError if it is too long."""
    if actor_id.isascii() and actor_id.replace("-", "").isalnum():
        token = actor_id  # fast path: nothing to escape
    else:
        token = "".join([_ESCAPES[b] for b in actor_id.encode("utf-8", "surrogatepass")])
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidEventError(
            f"actor_id is too long: {len(token)} characters once encoded, at most "
            f"{MAX_TOKEN_LENGTH}"
        )
    return token


def decode_actor_token(token: str) -> str:
    """Inverse of :func:`encode_actor_id`."""
    raw = _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), token)
    return raw.encode("latin-1").decode("utf-8", "surrogatepass")


# Stream metadata aether writes on the streams it creates, so tools (``aether streams``)
# can tell aether's streams from others and show the namespace without guessing from names.
META_KIND = "aether.kind"  # "events" or "snapshots"
META_NAMESPACE = "aether.namespace"  # the sanitised namespace, "" for none
META_STREAM = "aether.stream"  # the stream name the caller gave, without namespace


def stream_metadata(kind: str, namespace: str, stream_name: str) -> dict[str, str]:
    """The metadata of an aether stream (see :data:`META_KIND`)."""
    return {
        META_KIND: kind,
        META_NAMESPACE: _NAMESPACE_UNSAFE.sub("_", namespace),
        META_STREAM: stream_name,
    }


def real_stream_name(namespace: str, stream_name: str) -> str:
    """``<namespace>_<stream_name>`` with the namespace sanitised, or *stream_name* alone.

    The namespace is sanitised (any character that is not a letter, digit, ``-`` or ``_``
    becomes ``_``: spaces, dots and wildcards included) because it often comes from data
    such as a tenant name; the stream name is the caller's code and must already be valid.
    """
    if not isinstance(stream_name, str) or not _STREAM_NAME.fullmatch(stream_name):
        raise ValueError(
            f"stream_name must be letters, digits, '-' or '_' only, got {stream_name!r}"
        )
    if not namespace:
        return stream_name
    return f"{_NAMESPACE_UNSAFE.sub('_', namespace)}_{stream_name}"
