"""The exceptions aether raises.

Every exception derives from :class:`AetherError`, so ``except AetherError`` catches all of
them. Input errors are also :class:`ValueError` (and :class:`TypeError`), so code written
against the standard library's conventions keeps working.
"""

from __future__ import annotations


class AetherError(Exception):
    """Base class of every error aether raises."""


class VersionConflictError(AetherError):
    """The event's version is not greater than the actor's latest version.

    Raised by ``save_event``/``save_events`` when optimistic concurrency fails. Nothing
    was written. ``current_version`` is the actor's true latest version as read from the
    store, so a caller can reload and retry.
    """

    def __init__(self, actor_id: str, attempted_version: int, current_version: int) -> None:
        self.actor_id = actor_id
        self.attempted_version = attempted_version
        self.current_version = current_version
        super().__init__(
            f"version conflict: actor {actor_id!r} has version {current_version}, "
            f"cannot save version {attempted_version}"
        )

    def __reduce__(self) -> tuple[type[VersionConflictError], tuple[str, int, int]]:
        # Keep the attributes when the error crosses a process boundary (multiprocessing).
        return (type(self), (self.actor_id, self.attempted_version, self.current_version))


class InvalidEventError(AetherError, ValueError, TypeError):
    """The event (or snapshot) is malformed: nothing was written.

    Examples: empty actor id, a version that is not an ``int``, data that is not
    JSON-serialisable, a naive timestamp.
    """


class EventTooLargeError(InvalidEventError):
    """The encoded event is larger than the server accepts (its ``max_payload``)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"event is {size} bytes encoded, the server accepts at most {limit}")

    def __reduce__(self) -> tuple[type[EventTooLargeError], tuple[int, int]]:
        return (type(self), (self.size, self.limit))


class StoreUnavailableError(AetherError):
    """The store could not get a definite answer from the server before the deadline.

    For a write this means the outcome is **unknown**: the event may or may not be
    stored. Saving the same :class:`~aether.Event` again (same ``id``) is safe: it is
    stored at most once. If it had landed and is still the actor's latest event, the
    save returns normally; if others have appended after it, you get
    :class:`VersionConflictError` (reload the actor to see whether it is there).
    """


class StoreClosedError(AetherError, RuntimeError):
    """An append on a store after its ``close()``: nothing was written."""


class StreamNotFoundError(AetherError, LookupError):
    """The stream does not exist: it was deleted under a live store (raised at once by
    its reads and writes, nothing written), or :meth:`JetStreamEventStore.attach
    <aether.store.JetStreamEventStore.attach>` found no such stream (``open`` would have
    created it)."""

    def __init__(self, stream_name: str) -> None:
        self.stream_name = stream_name
        super().__init__(f"stream {stream_name!r} not found")

    def __reduce__(self) -> tuple[type[StreamNotFoundError], tuple[str]]:
        return (type(self), (self.stream_name,))


class StreamExistsError(AetherError):
    """:meth:`StreamAdmin.create_stream <aether.admin.StreamAdmin.create_stream>` found
    the stream already there: nothing was created or changed."""

    def __init__(self, stream_name: str) -> None:
        self.stream_name = stream_name
        super().__init__(f"stream {stream_name!r} already exists")

    def __reduce__(self) -> tuple[type[StreamExistsError], tuple[str]]:
        return (type(self), (self.stream_name,))


class UnsupportedServerError(AetherError):
    """The connected nats-server lacks a feature the call needs (e.g. atomic batches)."""


class JetStreamNotEnabledError(UnsupportedServerError):
    """The server (or the connection's account) has no JetStream: nothing can be stored.

    Raised at once, not retried: a server started without ``-js``, or an account without
    JetStream limits, stays that way.
    """


class JetStreamError(AetherError):
    """The server answered a JetStream request with an error aether does not handle itself."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description
        super().__init__(f"jetstream error {code}/{err_code}: {description}")

    def __reduce__(self) -> tuple[type[JetStreamError], tuple[int, int, str]]:
        return (type(self), (self.code, self.err_code, self.description))


class UnsuitableStreamError(AetherError):
    """An existing stream has a setting under which the store cannot keep its contract.

    Raised by ``JetStreamEventStore.open``/``attach`` before anything is written or
    changed. ``stream_name`` is the JetStream stream, ``setting`` the stream setting at
    fault (``"retention"``, ``"max_msgs_per_subject"``, ``"discard"``,
    ``"duplicate_window"``, ``"subjects"``, ``"mirror"``, ``"sealed"``, ...); the message
    says what the store requires. Change the stream (or use another one) and open again.
    """

    def __init__(self, stream_name: str, setting: str, message: str) -> None:
        self.stream_name = stream_name
        self.setting = setting
        self.reason = message
        super().__init__(f"stream {stream_name!r} is unsuitable for aether: {setting}: {message}")

    def __reduce__(self) -> tuple[type[UnsuitableStreamError], tuple[str, str, str]]:
        return (type(self), (self.stream_name, self.setting, self.reason))
