"""Which event stream a command works on, and the public APIs it works through.

``--stream`` (default ``events``, the store's default) and ``--namespace`` name a store's
stream exactly as ``JetStreamEventStore.open(nc, stream, JetStreamConfig(namespace=...))``
does: an :class:`aether.admin.StreamRef`. A stream listed by ``aether streams`` can also
be named by its JetStream name alone, without ``--namespace``: ``tenant-a__bank`` is
stream ``bank`` in namespace ``tenant-a`` (:meth:`StreamRef.parse`). A store may use a
stream made by an older aether (``<sanitised namespace>_<name>``), so commands take the
stream's real name and subjects from the attached store, never from the namespace.

Inspection commands must not create or reconfigure streams (``open()`` creates missing
streams; an operator's read-only user may not even be allowed to), and a typo in
``--stream`` must say "not found" rather than create an empty stream. :func:`attach`
therefore uses ``JetStreamEventStore.attach``, which creates and changes nothing.
Streams themselves are listed, inspected, created and deleted through
:class:`aether.admin.StreamAdmin` (:func:`admin`).

The command line uses aether's public API only: no private module, no JetStream error
codes (``tests/test_cli_public_api.py`` checks the imports).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import click
from nats.aio.client import Client

from aether.admin import StreamAdmin, StreamRef
from aether.errors import StreamNotFoundError
from aether.store import InvalidConfigError, JetStreamConfig, JetStreamEventStore

from ._errors import NotFoundError

__all__ = [
    "DEFAULT_STREAM",
    "REQUEST_TIMEOUT",
    "RETRY_DEADLINE",
    "OpenStream",
    "StreamRef",
    "admin",
    "attach",
    "not_found",
    "stream_options",
]

DEFAULT_STREAM = "events"
#: A command gives up on an unanswered request after 10s (the library's default is 30s).
REQUEST_TIMEOUT = timedelta(seconds=2)
RETRY_DEADLINE = timedelta(seconds=10)
_F = TypeVar("_F", bound=Callable[..., object])


def _check_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            StreamRef.parse(value)  # a store's stream name, or a namespaced JetStream name
        except InvalidConfigError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def _stream_ref(stream: str, namespace: str) -> StreamRef:
    """The store named by ``--stream``/``--namespace``; without a namespace, the stream may
    be a namespaced store's JetStream name (``<escaped namespace>__<name>``)."""
    try:
        return StreamRef.parse(stream, namespace)
    except InvalidConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--stream' / '--namespace'") from None


def stream_options(*, required: bool = False) -> Callable[[_F], _F]:
    """Add ``--stream``/``-s`` and ``--namespace``/``-N``; pass ``ref: StreamRef``.

    The command's function receives ``ref`` instead of ``stream`` and ``namespace``.
    *required*: no default stream (for commands that create or delete one).
    """

    def decorate(func: _F) -> _F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> object:
            ref = _stream_ref(kwargs.pop("stream"), kwargs.pop("namespace"))
            return func(*args, ref=ref, **kwargs)

        namespace = click.option(
            "--namespace",
            "-N",
            default="",
            metavar="NS",
            help="Namespace of the store (JetStreamConfig.namespace) [default: none].",
        )
        # No default at all when required (click >= 8.3 takes default=None as a value).
        default: dict[str, Any] = (
            {"required": True} if required else {"default": DEFAULT_STREAM, "show_default": True}
        )
        stream = click.option(
            "--stream",
            "-s",
            metavar="NAME",
            callback=_check_name,
            help="Stream name the store is opened with (see `aether streams`).",
            **default,
        )
        return stream(namespace(wrapper))  # type: ignore[return-value]

    return decorate


def not_found(ref: StreamRef, stream_name: str | None = None) -> NotFoundError:
    """The error for a stream that does not exist (exit 3)."""
    return NotFoundError(
        f"stream {ref.describe(stream_name)} not found (`aether streams` lists the event streams)"
    )


def admin(nc: Client) -> StreamAdmin:
    """The admin API with the command line's timeouts."""
    return StreamAdmin(nc, request_timeout=REQUEST_TIMEOUT, retry_deadline=RETRY_DEADLINE)


@dataclass(frozen=True)
class OpenStream:
    """A store on an existing stream and how the user named it.

    The stream name and subjects come from the store, never rebuilt from the namespace:
    a stream made by an older aether has another name."""

    store: JetStreamEventStore
    ref: StreamRef

    @property
    def stream_name(self) -> str:
        """The JetStream stream holding the events."""
        return self.store.stream_name

    @property
    def event_subjects(self) -> str:
        """The subject filter of every actor's events: the events stream's one subject
        (``attach`` refuses a stream with other subjects)."""
        return self.store.stream_settings.subjects[0]

    def describe(self) -> str:
        """The stream for messages (see :meth:`StreamRef.describe`)."""
        return self.ref.describe(self.store.stream_name)


async def attach(nc: Client, ref: StreamRef, *, create: bool = False) -> OpenStream:
    """A store on *ref*'s existing event stream, without creating or changing anything
    (:meth:`JetStreamEventStore.attach`).

    Raises NotFoundError (exit 3) if the stream does not exist, unless *create* is set:
    then the store is opened normally, which creates it. A stream aether cannot use
    (UnsuitableStreamError) is left to :func:`~._errors.translate_errors`.
    """
    config = JetStreamConfig(
        namespace=ref.namespace, request_timeout=REQUEST_TIMEOUT, retry_deadline=RETRY_DEADLINE
    )
    try:
        store = await JetStreamEventStore.attach(nc, ref.name, config)
    except StreamNotFoundError:
        if not create:
            raise not_found(ref) from None
        store = await JetStreamEventStore.open(nc, ref.name, config)
    return OpenStream(store, ref)
