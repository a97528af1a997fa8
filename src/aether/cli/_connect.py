"""How CLI commands find, authenticate to and connect to a NATS server.

Every command that talks to NATS is decorated with :func:`connection_options`, which adds
``--url``, ``--creds``, ``--user``/``--password``, ``--token`` and ``--tls-ca``/
``--tls-cert``/``--tls-key`` (each with an environment fallback, as the ``nats`` CLI
names them) and passes the command ONE keyword argument, ``conn``: a frozen
:class:`ConnectionSettings`. :func:`connect` turns the settings into a connected client.

Connecting fails fast with :class:`ServerUnreachableError` (exit code 7, one line, no
traceback) instead of nats-py's default of retrying the first connect for minutes, so a
typo in a URL or a wrong password is reported at once; a URL whose scheme NATS does not
speak (``http://...``) is a usage error (exit code 2) before any attempt. Once connected,
the client reconnects as usual (:class:`Reconnects` says how long, and whom to tell).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import click
import nats.errors
from nats.aio.client import Client

from aether.testing import NatsServer, NatsServerNotFoundError, NatsServerStartupError

from ._errors import ConnectionConfigError, ServerUnreachableError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RECONNECT_ATTEMPTS",
    "DEFAULT_URL",
    "URL_SCHEMES",
    "ConnectionConfigError",
    "ConnectionSettings",
    "Reconnects",
    "ServerTarget",
    "ServerUnreachableError",
    "check_url",
    "connect",
    "connection_options",
    "embedded_or_url",
    "session",
]

DEFAULT_CONNECT_TIMEOUT = 5.0
#: Reconnect attempts per server once connected (nats-py's default), _RECONNECT_WAIT apart.
DEFAULT_RECONNECT_ATTEMPTS = 60
_RECONNECT_WAIT = 1
#: Where commands connect when neither ``--url`` nor ``$NATS_URL`` is given (``aether
#: server``'s default port).
DEFAULT_URL = "nats://127.0.0.1:4222"
#: The URL schemes nats-py connects with (a URL without a scheme means ``nats://``).
URL_SCHEMES = ("nats", "tls", "ws", "wss")
_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]*)://")
_log = logging.getLogger("aether.cli")
_F = TypeVar("_F", bound=Callable[..., object])
_R = TypeVar("_R")


@dataclass(frozen=True)
class ConnectionSettings:
    """Where and how to connect: what ``--url``, ``--creds``, ``--user`` ... said.

    ``url`` is None when neither ``--url`` nor ``$NATS_URL`` was given; :func:`connect`
    then uses :data:`DEFAULT_URL` (``aether demo`` starts an embedded server instead).
    Secrets are kept out of ``repr``. Files are read only by :meth:`connect_kwargs`.
    """

    url: str | None = None
    creds: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def server_url(self) -> str:
        """The URL (comma-separated for several servers) to connect to."""
        return self.url or DEFAULT_URL

    def with_url(self, url: str) -> ConnectionSettings:
        """The same credentials and TLS files for another URL."""
        return ConnectionSettings(
            url, self.creds, self.user, self.password, self.token, **self._tls_files()
        )

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (auth and TLS; not the servers).

        Raises ConnectionConfigError (exit 7) if a credentials or TLS file is unusable.
        """
        kwargs: dict[str, Any] = {}
        if self.creds:
            if not os.path.isfile(self.creds) or not os.access(self.creds, os.R_OK):
                raise ConnectionConfigError(
                    f"cannot read credentials file {self.creds!r}: no such readable file"
                )
            kwargs["user_credentials"] = self.creds
        if self.user is not None:
            kwargs["user"] = self.user
            kwargs["password"] = self.password or ""
        if self.token:
            kwargs["token"] = self.token
        tls = self.ssl_context()
        if tls is not None:
            kwargs["tls"] = tls
        return kwargs

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context (server certificate and host name verified), or None.

        ``tls_ca`` replaces the system's trusted CAs; ``tls_cert``/``tls_key`` are the client
        certificate for mutual TLS (the key may also be inside the certificate file).
        """
        if not (self.tls_ca or self.tls_cert or self.tls_key):
            return None
        if self.tls_key and not self.tls_cert:
            raise ConnectionConfigError("--tls-key needs --tls-cert (the client certificate)")
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionConfigError(
                f"cannot load TLS CA file {self.tls_ca!r}: {_ssl_reason(exc)}"
            ) from None
        if self.tls_cert:
            try:
                context.load_cert_chain(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as exc:
                files = repr(self.tls_cert) + (f" / {self.tls_key!r}" if self.tls_key else "")
                raise ConnectionConfigError(
                    f"cannot load TLS client certificate {files}: {_ssl_reason(exc)}"
                ) from None
        return context

    def _tls_files(self) -> dict[str, str | None]:
        return {"tls_ca": self.tls_ca, "tls_cert": self.tls_cert, "tls_key": self.tls_key}


_DEFAULT_URL_HELP = (
    f"NATS server URL(s), comma-separated: nats://, tls://, ws:// or wss:// [env NATS_URL; "
    f"default {DEFAULT_URL}]."
)


@overload
def connection_options(f: Callable[..., _R], /) -> Callable[..., _R]: ...


@overload
def connection_options(
    *, url_help: str | None = None
) -> Callable[[Callable[..., _R]], Callable[..., _R]]: ...


def connection_options(
    f: Callable[..., _R] | None = None, /, *, url_help: str | None = None
) -> Callable[..., _R] | Callable[[Callable[..., _R]], Callable[..., _R]]:
    """Add the connection options to a click command; it gets ``conn: ConnectionSettings``.

    Use it bare (``@connection_options``) or with another ``--url`` help text
    (``@connection_options(url_help=...)``). Put it below ``@click.command()``.
    """

    def decorate(func: Callable[..., _R]) -> Callable[..., _R]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> _R:
            conn = ConnectionSettings(
                url=kwargs.pop("url"),
                creds=kwargs.pop("creds"),
                user=kwargs.pop("user"),
                password=kwargs.pop("password"),
                token=kwargs.pop("token"),
                tls_ca=kwargs.pop("tls_ca"),
                tls_cert=kwargs.pop("tls_cert"),
                tls_key=kwargs.pop("tls_key"),
            )
            _check_combination(conn)
            return func(*args, conn=conn, **kwargs)

        for option in reversed(_options(url_help or _DEFAULT_URL_HELP)):
            wrapper = option(wrapper)
        return wrapper

    return decorate if f is None else decorate(f)


def _options(url_help: str) -> list[Callable[[_F], _F]]:
    def opt(name: str, envvar: str, metavar: str, help_text: str) -> Callable[[_F], _F]:
        return click.option(name, envvar=envvar, default=None, metavar=metavar, help=help_text)

    return [
        opt("--url", "NATS_URL", "URL", url_help),
        opt(
            "--creds", "NATS_CREDS", "FILE", "NATS credentials file (JWT + NKey) [env NATS_CREDS]."
        ),
        opt("--user", "NATS_USER", "NAME", "User name [env NATS_USER]."),
        opt(
            "--password",
            "NATS_PASSWORD",
            "SECRET",
            "Password for --user [env NATS_PASSWORD; prefer the env var: argv is visible].",
        ),
        opt("--token", "NATS_TOKEN", "SECRET", "Authentication token [env NATS_TOKEN]."),
        opt(
            "--tls-ca",
            "NATS_CA",
            "FILE",
            "CA certificate(s) to verify the server with, instead of the system's [env NATS_CA].",
        ),
        opt(
            "--tls-cert", "NATS_CERT", "FILE", "Client certificate for mutual TLS [env NATS_CERT]."
        ),
        opt("--tls-key", "NATS_KEY", "FILE", "Private key of --tls-cert [env NATS_KEY]."),
    ]


def check_url(url: str) -> None:
    """Raise ValueError if a server in *url* (comma-separated) has a scheme NATS does not
    speak: nats-py would take ``http`` for a host name and report a failed DNS lookup."""
    for server in url.split(","):
        match = _SCHEME.match(server)
        if match and match[1].lower() not in URL_SCHEMES:
            valid = ", ".join(f"{scheme}://" for scheme in URL_SCHEMES)
            raise ValueError(
                f"{server.strip()!r}: {match[1]}:// is not a NATS URL scheme (use {valid})"
            )


def _check_combination(conn: ConnectionSettings) -> None:
    if conn.url:
        try:
            check_url(conn.url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--url' / $NATS_URL") from None
    if conn.password is not None and conn.user is None:
        raise click.UsageError("--password needs --user")
    if conn.token and conn.user is not None:
        raise click.UsageError("use either --token or --user/--password, not both")


@dataclass(frozen=True)
class ServerTarget:
    """The server a command talks to: its URL, whether we started it ourselves, and how
    to connect to it (``conn``: the user's settings, or plain ones for an embedded server)."""

    url: str
    embedded: bool
    conn: ConnectionSettings | None = None

    @property
    def settings(self) -> ConnectionSettings:
        return self.conn if self.conn is not None else ConnectionSettings(url=self.url)


@contextlib.contextmanager
def embedded_or_url(target: ConnectionSettings | str | None) -> Iterator[ServerTarget]:
    """Yield the server *target* names, or start an embedded ``nats-server`` (stopped on
    exit) if it names none (no URL). The user's auth and TLS settings are not used with
    the embedded server, which has neither.

    Raises ServerUnreachableError if no embedded server can be started.
    """
    settings = (
        ConnectionSettings(url=target) if not isinstance(target, ConnectionSettings) else target
    )
    if settings.url:
        yield ServerTarget(settings.url, embedded=False, conn=settings)
        return
    try:
        server = NatsServer()
    except NatsServerNotFoundError as exc:
        raise ServerUnreachableError(f"{exc} (or pass --url to use a running server)") from None
    try:
        server.start()
    except NatsServerStartupError as exc:
        server.close()
        first_line = str(exc).splitlines()[0]
        raise ServerUnreachableError(f"could not start nats-server: {first_line}") from None
    except BaseException:
        server.close()
        raise
    try:
        yield ServerTarget(server.url, embedded=True)
    finally:
        server.close()


_Callback = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Reconnects:
    """What happens once a connection is up and then lost.

    The client tries to reconnect *attempts* times per server, about a second apart
    (nats-py's default is 60; -1: forever), then closes the connection for good. The
    callbacks (coroutine functions without arguments) are awaited when the connection
    is lost, when it is back, and when it is closed (for good, or by :func:`session`'s
    end: tell them apart yourself).
    """

    attempts: int = DEFAULT_RECONNECT_ATTEMPTS
    on_disconnect: _Callback = _nothing
    on_reconnect: _Callback = _nothing
    on_close: _Callback = _nothing


async def connect(
    target: ConnectionSettings | str,
    *,
    name: str,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    reconnects: Reconnects | None = None,
) -> Client:
    """Connect with *target*'s URL, auth and TLS, or raise ServerUnreachableError (exit 7).

    A plain string is a URL (comma-separated for several servers) without auth. Gives up
    as soon as every listed server has failed once (like Go's default, without
    ``RetryOnFailedConnect``), or after *connect_timeout* seconds. Raises
    ConnectionConfigError for unusable TLS or credentials files or a URL scheme NATS does
    not speak. Asynchronous errors after the connection is up are logged at debug level
    only: the store has its own retry policy. *reconnects*: see :class:`Reconnects`.
    """
    settings = ConnectionSettings(url=target) if isinstance(target, str) else target
    url = settings.server_url
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ServerUnreachableError("no NATS server URL given")
    try:
        check_url(url)
    except ValueError as exc:
        raise ConnectionConfigError(str(exc)) from None
    options = settings.connect_kwargs()
    after = reconnects or Reconnects()
    if "tls" in options:
        _quiet_tls_close_warning()
    failures: list[BaseException] = []
    all_failed = asyncio.Event()
    nc = Client()
    up = False  # the callbacks are about a connection that was up, not a failed attempt

    def once_up(callback: _Callback) -> _Callback:
        async def call() -> None:
            if up:
                await callback()

        return call

    async def on_error(exc: Exception) -> None:
        if nc.is_connected:
            _log.debug("nats error: %s", exc)
            return
        failures.append(exc)
        if len(failures) >= len(servers):
            all_failed.set()

    connecting = asyncio.create_task(
        nc.connect(
            servers=servers,
            name=name,
            error_cb=on_error,
            reconnect_time_wait=_RECONNECT_WAIT,
            max_reconnect_attempts=after.attempts,
            disconnected_cb=once_up(after.on_disconnect),
            reconnected_cb=once_up(after.on_reconnect),
            closed_cb=once_up(after.on_close),
            **options,
        )
    )
    failing = asyncio.create_task(all_failed.wait())
    try:
        await asyncio.wait(
            {connecting, failing}, timeout=connect_timeout, return_when="FIRST_COMPLETED"
        )
    finally:
        failing.cancel()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        up = True
        return nc
    connecting.cancel()
    await asyncio.wait([connecting])  # unlike ``await connecting``, keeps our own cancellation
    if not connecting.cancelled() and connecting.exception() is not None:
        # e.g. a malformed URL, raised before any attempt
        failures.append(connecting.exception())  # type: ignore[arg-type]
    with contextlib.suppress(Exception):
        await nc.close()
    if failures and isinstance(failures[-1], ConnectionResetError | BrokenPipeError):
        refusal = await _probe_refusal(servers, name, options, connect_timeout)
        if refusal is not None:
            failures.append(refusal)
    reason = (
        describe_failure(failures[-1]) if failures else f"no answer within {connect_timeout:g}s"
    )
    raise ServerUnreachableError(f"cannot connect to NATS at {url}: {reason}")


async def _probe_refusal(
    servers: list[str], name: str, options: dict[str, Any], within: float
) -> BaseException | None:
    """Why a server reset the connection during the handshake, if it says so.

    A server that refuses a client (wrong credentials) sends ``-ERR`` and closes; nats-py
    has already written its PING by then, so the kernel may report a reset and drop the
    ``-ERR`` unread. One more attempt in verbose mode reads the answer to CONNECT before
    writing anything else, so the refusal cannot be lost. Returns its error (None if the
    probe connected or failed the same way).
    """
    probe = Client()

    async def ignore(exc: Exception) -> None:
        pass

    try:
        await asyncio.wait_for(
            probe.connect(
                servers=servers,
                name=name,
                verbose=True,
                allow_reconnect=False,
                connect_timeout=max(1, round(within)),
                error_cb=ignore,
                **options,
            ),
            within,
        )
    except Exception as exc:
        # Only the server's own answer (-ERR ...) says more than the reset did.
        refused = isinstance(exc, nats.errors.Error) and not isinstance(exc, TimeoutError)
        return exc if refused else None
    finally:
        with contextlib.suppress(Exception):
            await probe.close()
    return None


class _TlsCloseWarningFilter(logging.Filter):
    """Drops asyncio's "returning true from eof_received() has no effect when using ssl",
    which nats-py's transport triggers on every close of a TLS connection: noise to a user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


_TLS_CLOSE_FILTER = _TlsCloseWarningFilter()


def _quiet_tls_close_warning() -> None:
    logging.getLogger("asyncio").addFilter(_TLS_CLOSE_FILTER)  # a no-op the second time


@contextlib.asynccontextmanager
async def session(
    conn: ConnectionSettings, *, name: str, reconnects: Reconnects | None = None
) -> AsyncIterator[Client]:
    """A connected client for the duration of a command; closed (quietly) at the end."""
    nc = await connect(conn, name=name, reconnects=reconnects)
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


_AUTH_HINT = "check --user/--password, --token or --creds"
_SSL_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def describe_failure(exc: BaseException) -> str:
    """Why connecting failed, in a few lower-case words (no exception class names)."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {_ssl_reason(exc)}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        # socket.gaierror has its own text; ConnectionRefusedError's is "Connect call failed".
        text = exc.strerror if isinstance(exc, socket.gaierror) else os.strerror(exc.errno)
        return (text or str(exc)).lower()
    text = str(exc).strip().removeprefix("nats: ").strip("'")
    lowered = text.lower()
    if "authorization violation" in lowered or "authentication" in lowered:
        return f"{lowered} ({_AUTH_HINT})"
    return text or type(exc).__name__


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        text = exc.reason or str(exc)
        return _SSL_LOCATION.sub("", str(text)).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)
