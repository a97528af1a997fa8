"""Which event stream a command works on, and a store on it that changes nothing.

``--stream`` (default ``events``, the store's default) and ``--namespace`` name a store's
stream exactly as ``JetStreamEventStore.open(nc, stream, JetStreamConfig(namespace=...))``
does (:func:`~aether.store._subjects.real_stream_name`). A stream listed by
``aether streams`` can also be named by its JetStream name alone, without
``--namespace``: ``tenant-a__bank`` is stream ``bank`` in namespace ``tenant-a``
(:func:`~aether.store._subjects.parse_stream_name`). A store may use a stream made by an
older aether (``<sanitised namespace>_<name>``, when its metadata names exactly this
pair), so commands take the stream name and subjects from the attached store
(:class:`OpenStream`), never from the namespace.

Inspection commands must not create or reconfigure streams (``open()`` creates missing
streams and may update an existing one; an operator's read-only user may not even be
allowed to), and a typo in ``--stream`` must say "not found" rather than create an empty
stream. :func:`attach` therefore uses ``JetStreamEventStore.attach``, which checks
that the stream exists and is usable by aether, and creates nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import click
import nats.errors
from nats.aio.client import Client

from aether import _json
from aether.errors import StreamNotFoundError, UnsuitableStreamError
from aether.store import JetStreamConfig, JetStreamEventStore
from aether.store._jsapi import API, JsApi
from aether.store._subjects import parse_stream_name, real_stream_name

from ._errors import CliError, NotFoundError

__all__ = [
    "CLI_STORE_CONFIG",
    "OpenStream",
    "StreamRef",
    "attach",
    "check_jetstream",
    "cli_api",
    "stream_options",
]

DEFAULT_STREAM = "events"
#: A command gives up on an unanswered request after 10s (the library's default is 30s).
CLI_STORE_CONFIG = JetStreamConfig(
    request_timeout=timedelta(seconds=2), retry_deadline=timedelta(seconds=10)
)
_JS_CHECK_TIMEOUT = 2.0
_F = TypeVar("_F", bound=Callable[..., object])


@dataclass(frozen=True)
class StreamRef:
    """A store's stream as its user names it: stream name and namespace."""

    name: str = DEFAULT_STREAM
    namespace: str = ""

    @property
    def real(self) -> str:
        """The JetStream stream ``open`` would create: *name* alone, or ``<escaped
        namespace>__<name>`` (:func:`~aether.store._subjects.real_stream_name`). A store on
        a stream made by an older aether (``<sanitised namespace>_<name>``) uses that one
        instead: once attached, use the store's ``stream_name``."""
        return real_stream_name(self.namespace, self.name)

    def describe(self, stream_name: str | None = None) -> str:
        """``'events'``, or ``'bank' in namespace 'ns' (JetStream stream 'ns__bank')``.

        *stream_name*: the attached store's real stream (default: :attr:`real`)."""
        real = stream_name or self.real
        if not self.namespace and real == self.name:
            return repr(self.name)
        where = f" in namespace {self.namespace!r}" if self.namespace else ""
        return f"{self.name!r}{where} (JetStream stream {real!r})"


def _check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_stream_name(value)  # a store's stream name, or a namespaced JetStream name
    except ValueError as exc:
        reason = exc
        if "__" not in value:  # not meant as a JetStream name: say what a name must be
            try:
                real_stream_name("", value)
            except ValueError as plain:
                reason = plain
        raise click.BadParameter(str(reason), ctx=ctx, param=param) from None
    return value


def _stream_ref(stream: str, namespace: str) -> StreamRef:
    """The store named by ``--stream``/``--namespace``; without a namespace, the stream may
    be a namespaced store's JetStream name (``<escaped namespace>__<name>``)."""
    if not namespace:
        namespace, stream = parse_stream_name(stream)  # checked by _check_name
    try:
        real_stream_name(namespace, stream)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--stream' / '--namespace'") from None
    return StreamRef(stream, namespace)


def stream_options() -> Callable[[_F], _F]:
    """Add ``--stream``/``-s`` and ``--namespace``/``-N``; pass ``ref: StreamRef``.

    The command's function receives ``ref`` instead of ``stream`` and ``namespace``.
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
        stream = click.option(
            "--stream",
            "-s",
            default=DEFAULT_STREAM,
            show_default=True,
            metavar="NAME",
            callback=_check_name,
            help="Stream name the store was opened with (see `aether streams`).",
        )
        return stream(namespace(wrapper))  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class OpenStream:
    """A store on an existing stream, and JetStream API calls for what the store lacks.

    Subjects and stream names come from the store (``stream_name``), never rebuilt from
    the namespace: a stream made by an older aether has another name."""

    store: JetStreamEventStore
    api: JsApi
    ref: StreamRef

    @property
    def stream_name(self) -> str:
        """The JetStream stream holding the events."""
        return self.store.stream_name

    @property
    def event_prefix(self) -> str:
        """``<stream>.events.``: an actor's subject is this and its encoded id."""
        return f"{self.store.stream_name}.events."

    @property
    def event_subjects(self) -> str:
        """The wildcard subject of every actor's events in the stream."""
        return f"{self.event_prefix}>"

    def describe(self) -> str:
        """The stream for messages (see :meth:`StreamRef.describe`)."""
        return self.ref.describe(self.store.stream_name)


def cli_api(nc: Client) -> JsApi:
    """JetStream API calls with the CLI's timeouts (:data:`CLI_STORE_CONFIG`)."""
    return JsApi(
        nc,
        request_timeout=CLI_STORE_CONFIG.request_timeout.total_seconds(),
        retry_deadline=CLI_STORE_CONFIG.retry_deadline.total_seconds(),
    )


async def check_jetstream(nc: Client) -> None:
    """Fail at once (CliError) if the server has no JetStream for us.

    The store retries "no responders" until its deadline, as it must for a stream whose
    leader is being elected; a server without JetStream would then cost the user ten
    seconds before a vague error. One ``$JS.API.INFO`` request tells the two apart.
    """
    try:
        msg = await nc.request(f"{API}.INFO", b"", timeout=_JS_CHECK_TIMEOUT)
    except nats.errors.NoRespondersError:
        raise CliError(
            "JetStream is not enabled on this server (run nats-server with -js, or use "
            "`aether server`)"
        ) from None
    except nats.errors.TimeoutError:
        return  # slow, not absent: the store's own retries decide
    error = (_json.loads(msg.data) or {}).get("error")
    if error:
        raise CliError(f"JetStream is not available: {error.get('description', error)}")


async def attach(nc: Client, ref: StreamRef, *, create: bool = False) -> OpenStream:
    """A store on *ref*'s existing event stream, without creating or changing anything
    (:meth:`JetStreamEventStore.attach`).

    Raises NotFoundError (exit 3) if the stream does not exist, unless *create* is set:
    then the store is opened normally, which creates it. Raises CliError if the stream
    is not an aether event stream (or another pair's); other refusals of an existing
    stream (UnsuitableStreamError) are left to :func:`~._errors.translate_errors`.
    """
    config = JetStreamConfig(namespace=ref.namespace, **_timeouts(CLI_STORE_CONFIG))
    await check_jetstream(nc)
    try:
        store = await JetStreamEventStore.attach(nc, ref.name, config)
    except StreamNotFoundError:
        if not create:
            raise NotFoundError(
                f"stream {ref.describe()} not found (`aether streams` lists the event streams)"
            ) from None
        store = await JetStreamEventStore.open(nc, ref.name, config)
    except UnsuitableStreamError as exc:
        if exc.setting == "subjects":
            raise CliError(
                f"stream {exc.stream_name!r} is not an aether event stream: {exc.reason}"
            ) from None
        if exc.setting == "metadata":
            raise CliError(
                f"stream {exc.stream_name!r} is another store's: {exc.reason} (name it "
                "with the --namespace and --stream `aether streams` shows)"
            ) from None
        raise
    return OpenStream(store, cli_api(nc), ref)


def _timeouts(config: JetStreamConfig) -> dict[str, Any]:
    return {"request_timeout": config.request_timeout, "retry_deadline": config.retry_deadline}
