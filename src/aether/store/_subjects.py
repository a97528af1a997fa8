"""Stream names and the reversible actor-id -> subject-token encoding.

Any non-empty actor id is allowed. Characters outside ``[A-Za-z0-9-]`` (including the
escape character ``_`` itself) become ``_XX`` per UTF-8 byte, so the encoding is
injective and reversible, and no id can produce ``.``, ``*``, ``>`` or white space:
a read or write can never touch another actor's subject. Common ids (``order-42``,
UUIDs) stay readable.

Stream names (:func:`real_stream_name`) are injective too: a namespace is escaped the same
way and joined to the stream name with ``__``, which an escaped namespace can never
contain, so no two (namespace, stream name) pairs share a stream.
"""

from __future__ import annotations

import re

from aether.errors import InvalidEventError

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPES = [chr(b) if b in _SAFE else f"_{b:02X}" for b in range(256)]
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")
_NAMESPACE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_ESCAPED = re.compile(r"_([0-9A-F]{2})")
_ESCAPED_TOKEN = re.compile(r"(?:[A-Za-z0-9-]|_[0-9A-F]{2})+")

#: The longest subject token an actor id may encode to, in characters. nats-server
#: refuses protocol lines over 4 KiB (max_control_line); a subject close to that would
#: make the server drop the connection, so longer ids are refused up front.
MAX_TOKEN_LENGTH = 2048

#: nats-server's limit on stream names (``JSMaxNameLen``; longer names are refused with
#: err 10052). It is also a file name on the server's disk, where 255 bytes is the limit.
MAX_STREAM_NAME_LENGTH = 255
#: Appended to the events stream's name to name the snapshot stream.
SNAPSHOTS_SUFFIX = "_snapshots"
#: Appended to the events stream's name to name the stream of parked-event records of
#: its durable subscriptions.
PARKED_SUFFIX = "_parked"
#: Joins the escaped namespace and the stream name. An escaped namespace never contains
#: it (every ``_`` in it is followed by two hex digits) nor ends with ``_``.
NAMESPACE_SEPARATOR = "__"
#: The longest events stream name: its snapshot stream must fit too.
MAX_REAL_NAME_LENGTH = MAX_STREAM_NAME_LENGTH - len(SNAPSHOTS_SUFFIX)


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
# can tell aether's streams from others, and ``open`` can tell whose stream it is.
META_KIND = "aether.kind"  # "events" or "snapshots"
#: The namespace exactly as given, "" for none. (Versions before the injective stream
#: names wrote the sanitised namespace here: see :func:`legacy_stream_name`.)
META_NAMESPACE = "aether.namespace"
META_STREAM = "aether.stream"  # the stream name the caller gave, without namespace
#: A token of the admin API's creation of the stream (tells concurrent creations apart).
META_CREATION = "aether.creation"


def stream_metadata(kind: str, namespace: str, stream_name: str) -> dict[str, str]:
    """The metadata of an aether stream (see :data:`META_KIND`): the raw pair."""
    return {META_KIND: kind, META_NAMESPACE: namespace, META_STREAM: stream_name}


def encode_namespace(namespace: str) -> str:
    """The namespace as it appears in stream names: ``[A-Za-z0-9-]`` kept, every other
    UTF-8 byte (``_`` included) as ``_XX``. Raises ValueError for a str that is not valid
    Unicode (lone surrogates), which no stream metadata could record."""
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
    try:
        data = namespace.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"namespace {namespace!r} is not valid Unicode") from None
    return "".join([_ESCAPES[b] for b in data])


def check_stream_name(stream_name: str) -> None:
    """Raise ValueError unless *stream_name* may name a store's stream.

    Letters, digits, ``-`` and ``_``, but not ``__`` (it marks a namespace), not ending
    with ``_`` (its snapshot stream would contain ``__``) nor with ``_snapshots`` or
    ``_parked`` (its events stream would be another store's snapshot or parked-event
    stream).
    """
    if not isinstance(stream_name, str) or not _STREAM_NAME.fullmatch(stream_name):
        raise ValueError(
            f"stream_name must be letters, digits, '-' or '_' only, got {stream_name!r}"
        )
    if NAMESPACE_SEPARATOR in stream_name or stream_name.endswith("_"):
        raise ValueError(
            f"stream_name must not contain '__' nor end with '_' (reserved to join a "
            f"namespace), got {stream_name!r}"
        )
    for suffix, streams in ((SNAPSHOTS_SUFFIX, "snapshot"), (PARKED_SUFFIX, "parked-event")):
        if stream_name.endswith(suffix):
            raise ValueError(
                f"stream_name must not end with {suffix!r} (the {streams} streams' "
                f"names), got {stream_name!r}"
            )


def real_stream_name(namespace: str, stream_name: str) -> str:
    """The JetStream events stream of a store: *stream_name* alone without a namespace,
    else ``<escaped namespace>__<stream_name>``.

    The namespace often comes from data such as a tenant name, so any str is allowed: it
    is escaped like an actor id (see :func:`encode_namespace`). The stream name is the
    caller's code and must already be valid (:func:`check_stream_name`). The mapping is
    injective (:func:`parse_stream_name` inverts it), no pair's events stream is another
    pair's snapshot stream, and a name without namespace is unchanged, so streams made
    without a namespace by any aether version keep their name. Raises ValueError if the
    name (and so its snapshot stream's) would exceed nats-server's name length limit.
    """
    check_stream_name(stream_name)
    if not namespace:
        real = stream_name
    else:
        real = f"{encode_namespace(namespace)}{NAMESPACE_SEPARATOR}{stream_name}"
    if len(real) > MAX_REAL_NAME_LENGTH:
        raise ValueError(
            f"stream name {real!r} is {len(real)} characters; with its snapshot stream's "
            f"suffix it must fit nats-server's limit of {MAX_STREAM_NAME_LENGTH}, so at "
            f"most {MAX_REAL_NAME_LENGTH} (shorten the namespace or the stream name)"
        )
    return real


def parse_stream_name(real: str) -> tuple[str, str]:
    """``(namespace, stream_name)`` of an events stream named by :func:`real_stream_name`.

    The exact inverse: raises ValueError for any name :func:`real_stream_name` cannot
    produce (a snapshot stream's, a non-canonical escape, a legacy name with ``__``).
    """
    not_ours = ValueError(
        f"{real!r} is not an aether stream name (a stream name, or "
        "<escaped namespace>__<stream name>)"
    )
    namespace_part, separator, stream_name = real.partition(NAMESPACE_SEPARATOR)
    if not separator:
        namespace, stream_name = "", real
    elif not _ESCAPED_TOKEN.fullmatch(namespace_part):
        raise not_ours
    else:
        raw = _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), namespace_part)
        try:
            namespace = raw.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            raise not_ours from None
    try:
        canonical = real_stream_name(namespace, stream_name)
    except ValueError:
        raise not_ours from None
    if canonical != real:  # e.g. an escaped letter: not what the encoding produces
        raise not_ours
    return namespace, stream_name


def legacy_stream_name(namespace: str, stream_name: str) -> str | None:
    """The events stream aether versions before the injective names used for a
    namespaced store (``<sanitised namespace>_<stream_name>``: every character but
    letters, digits, ``-`` and ``_`` became ``_``), or None without a namespace (the name
    never changed). Not injective, so only used when the stream's metadata names exactly
    the pair (see :func:`aether.store._provision.provision`)."""
    if not namespace:
        return None
    return f"{_NAMESPACE_UNSAFE.sub('_', namespace)}_{stream_name}"
