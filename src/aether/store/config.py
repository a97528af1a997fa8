"""How a :class:`~aether.store.JetStreamEventStore` lays out and talks to its streams.

Everything is checked when the config is made, so a config that the server would refuse,
or under which the store could not keep its promises, fails here with the field's name
rather than later in ``open()``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, Literal

from aether.errors import AetherError
from aether.store._subjects import (
    MAX_REAL_NAME_LENGTH,
    NAMESPACE_SEPARATOR,
    encode_namespace,
    real_stream_name,
)

__all__ = ["InvalidConfigError", "JetStreamConfig"]

#: nats-server refuses a duplicate window (and a max age) in (0, 100 ms).
MIN_SERVER_WINDOW = timedelta(milliseconds=100)
#: nats-server's limit on a stream's replicas.
MAX_REPLICAS = 5
MAX_REPLAY_BATCH = 10_000


class InvalidConfigError(AetherError, ValueError, TypeError):
    """A :class:`JetStreamConfig` field, or the stream name a store is opened with
    (``field == "stream_name"``), has a wrong type or value; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{_qualified(field)} {message}")

    def __reduce__(self) -> tuple[type[InvalidConfigError], tuple[str, str]]:
        prefix = f"{_qualified(self.field)} "
        return (type(self), (self.field, str(self).removeprefix(prefix)))


def _qualified(field: str) -> str:
    return f"JetStreamConfig.{field}" if field in _KINDS else field


@dataclass(frozen=True)
class JetStreamConfig:
    """How the store lays out and talks to its streams. Zero/empty values (and None) mean
    the default.

    - ``namespace``: any str; stores in different namespaces use different streams (see
      :func:`~aether.store._subjects.real_stream_name`).
    - ``stream_retention``: None (the default) keeps events **forever**: events are the
      source of truth, and a store that silently deletes history loses data. A timedelta
      makes the events stream delete events older than that (its ``max_age``); it must
      exceed ``duplicate_window``, which nats-server requires.
    - ``replica_count`` (1 to 5) and ``storage`` (``"file"`` or ``"memory"``) of the
      streams the store creates. An existing stream keeps its settings.
    - ``version_cache_size``: actors whose latest version the store caches.
    - ``request_timeout`` bounds one request; ``retry_deadline`` bounds how long a request
      whose outcome is unknown (timeout, no responders, reconnect) is re-sent before
      :class:`~aether.errors.StoreUnavailableError`.
    - ``replay_batch_size`` (1 to 10000): messages fetched per request during a replay.
    - ``direct_get`` (default True) and ``direct_batch_size`` (1 to 10000): a replay
      starts with one batched direct get (ADR-31) of that many messages. A history with
      at most that many events left to read loads with one request and no consumer; a
      longer one goes on with a consumer, and one the version cache already knows to be
      longer starts with it. A direct answer costs the client about twice as much per
      message as a consumer's (nats-py parses its extra headers), so the default, 48,
      is where the two cost the same on the benchmark machine. With
      ``direct_get=False`` every replay uses a consumer (e.g. for a user not permitted
      ``$JS.API.DIRECT.GET``). Used only on streams with ``allow_direct``, which
      ``open()`` turns on.
    - ``duplicate_window``: the window the store asks for on the events stream it creates,
      during which the server drops a second message with the same ``Nats-Msg-Id``.

      It must be at least ``retry_deadline + request_timeout``
      (:attr:`min_duplicate_window`). An append whose outcome is unknown is re-sent with
      the same message id until an answer comes: the first copy may have been stored at
      once, and the last retry can be sent up to ``request_timeout`` (the first attempt's
      wait) plus ``retry_deadline`` later. Only while that first copy is inside the window
      does the server recognise the retry as a duplicate; after it, the retry would be
      stored a second time. ``open()`` refuses an existing stream whose window is shorter
      than this minimum for the same reason.

    Raises :class:`InvalidConfigError` (a ValueError and TypeError) naming the field.
    """

    namespace: str = ""
    stream_retention: timedelta | None = None
    replica_count: int = 1
    storage: Literal["file", "memory"] = "file"
    version_cache_size: int = 100_000
    request_timeout: timedelta = timedelta(seconds=2)
    retry_deadline: timedelta = timedelta(seconds=30)
    replay_batch_size: int = 500
    direct_get: bool = True
    direct_batch_size: int = 48
    duplicate_window: timedelta = timedelta(minutes=2)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                object.__setattr__(self, f.name, f.default)
                continue
            kind, kind_name = _KINDS[f.name]
            if kind is bool:
                if not isinstance(value, bool):
                    raise InvalidConfigError(
                        f.name, f"must be {kind_name}, got {type(value).__name__} {value!r}"
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, kind):
                raise InvalidConfigError(
                    f.name, f"must be {kind_name}, got {type(value).__name__} {value!r}"
                )
            if not value:  # zero, empty string or timedelta(0): the default
                object.__setattr__(self, f.name, f.default)
            elif (isinstance(value, int) and value < 0) or (
                isinstance(value, timedelta) and value < timedelta(0)
            ):
                raise InvalidConfigError(f.name, f"must not be negative, got {value!r}")
        self._check_values()

    def _check_values(self) -> None:
        if self.storage not in ("file", "memory"):
            raise InvalidConfigError("storage", f"must be 'file' or 'memory', got {self.storage!r}")
        if not 1 <= self.replica_count <= MAX_REPLICAS:
            raise InvalidConfigError(
                "replica_count", f"must be between 1 and {MAX_REPLICAS}, got {self.replica_count}"
            )
        if not 1 <= self.replay_batch_size <= MAX_REPLAY_BATCH:
            raise InvalidConfigError(
                "replay_batch_size",
                f"must be between 1 and {MAX_REPLAY_BATCH}, got {self.replay_batch_size}",
            )
        if not 1 <= self.direct_batch_size <= MAX_REPLAY_BATCH:
            raise InvalidConfigError(
                "direct_batch_size",
                f"must be between 1 and {MAX_REPLAY_BATCH}, got {self.direct_batch_size}",
            )
        if self.namespace:
            try:
                encoded = encode_namespace(self.namespace)
            except ValueError as exc:
                raise InvalidConfigError("namespace", f"is invalid: {exc}") from None
            # Room for the separator and a one-character stream name, at least.
            room = MAX_REAL_NAME_LENGTH - len(NAMESPACE_SEPARATOR) - 1
            if len(encoded) > room:
                raise InvalidConfigError(
                    "namespace",
                    f"is too long: {len(encoded)} characters once escaped for stream "
                    f"names, at most {room}",
                )
        if self.duplicate_window < MIN_SERVER_WINDOW:
            raise InvalidConfigError(
                "duplicate_window",
                f"must be at least {_show(MIN_SERVER_WINDOW)} (nats-server's minimum), "
                f"got {_show(self.duplicate_window)}",
            )
        if self.duplicate_window < self.min_duplicate_window:
            raise InvalidConfigError(
                "duplicate_window",
                f"({_show(self.duplicate_window)}) must be at least retry_deadline + "
                f"request_timeout ({_show(self.min_duplicate_window)}): a publish retried "
                "after that long would no longer be recognised as a duplicate and would be "
                "stored twice. Raise duplicate_window or lower retry_deadline",
            )
        if self.stream_retention is not None and self.stream_retention <= self.duplicate_window:
            raise InvalidConfigError(
                "stream_retention",
                f"({_show(self.stream_retention)}) must exceed duplicate_window "
                f"({_show(self.duplicate_window)}): nats-server refuses a stream whose max "
                "age is shorter than its duplicate window. Use None to keep events forever",
            )

    def events_stream_for(self, stream_name: str) -> str:
        """The JetStream events stream of the store *stream_name* in this namespace (see
        :func:`~aether.store._subjects.real_stream_name`). Raises InvalidConfigError
        (``field == "stream_name"``) for a name no store can have."""
        try:
            return real_stream_name(self.namespace, stream_name)
        except (TypeError, ValueError) as exc:
            message = str(exc).removeprefix("stream_name ").removeprefix("stream name ")
            raise InvalidConfigError("stream_name", message) from None

    @property
    def min_duplicate_window(self) -> timedelta:
        """The shortest duplicate window under which retried appends stay exactly-once:
        ``retry_deadline + request_timeout`` (see the class docstring)."""
        return self.retry_deadline + self.request_timeout


_KINDS: dict[str, tuple[type[Any], str]] = {
    "namespace": (str, "a str"),
    "stream_retention": (timedelta, "a timedelta or None"),
    "replica_count": (int, "an int"),
    "storage": (str, "'file' or 'memory'"),
    "version_cache_size": (int, "an int"),
    "request_timeout": (timedelta, "a timedelta"),
    "retry_deadline": (timedelta, "a timedelta"),
    "replay_batch_size": (int, "an int"),
    "direct_get": (bool, "a bool"),
    "direct_batch_size": (int, "an int"),
    "duplicate_window": (timedelta, "a timedelta"),
}


def _show(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"
