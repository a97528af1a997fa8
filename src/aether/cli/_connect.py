"""How CLI commands find and connect to a NATS server.

Every command that talks to NATS takes ``--url`` (or ``$NATS_URL``). Connecting fails fast
with :class:`ServerUnreachableError` (exit code 2, one line, no traceback) instead of
nats-py's default of retrying the first connect for minutes, so a typo in a URL is
reported at once. Once connected, the client reconnects as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import click
from nats.aio.client import Client

from aether.testing import NatsServer, NatsServerNotFoundError, NatsServerStartupError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "ServerUnreachableError",
    "connect",
    "embedded_or_url",
    "url_option",
]

DEFAULT_CONNECT_TIMEOUT = 5.0
_log = logging.getLogger("aether.cli")
_F = TypeVar("_F", bound=Callable[..., object])


class ServerUnreachableError(click.ClickException):
    """No usable NATS server: click prints ``Error: <message>`` and exits with code 2."""

    exit_code = 2


def url_option(help_text: str) -> Callable[[_F], _F]:
    """The ``--url`` option shared by all commands (falls back to ``$NATS_URL``)."""
    return click.option(
        "--url",
        envvar="NATS_URL",
        default=None,
        metavar="URL",
        help=help_text,
    )


@dataclass(frozen=True)
class ServerTarget:
    """The server a command talks to: its URL and whether we started it ourselves."""

    url: str
    embedded: bool


@contextlib.contextmanager
def embedded_or_url(url: str | None) -> Iterator[ServerTarget]:
    """Yield *url*, or start an embedded ``nats-server`` (stopped on exit) if it is None.

    Raises ServerUnreachableError if no embedded server can be started.
    """
    if url:
        yield ServerTarget(url, embedded=False)
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


async def connect(
    url: str, *, name: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> Client:
    """Connect to *url* (comma-separated for several servers) or raise ServerUnreachableError.

    Gives up as soon as every listed server has failed once (like Go's default, without
    ``RetryOnFailedConnect``), or after *connect_timeout* seconds. Asynchronous errors after the
    connection is up are logged at debug level only: the store has its own retry policy.
    """
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ServerUnreachableError("no NATS server URL given")
    failures: list[BaseException] = []
    all_failed = asyncio.Event()
    nc = Client()

    async def on_error(exc: Exception) -> None:
        if nc.is_connected:
            _log.debug("nats error: %s", exc)
            return
        failures.append(exc)
        if len(failures) >= len(servers):
            all_failed.set()

    connecting = asyncio.create_task(
        nc.connect(servers=servers, name=name, error_cb=on_error, reconnect_time_wait=1)
    )
    failing = asyncio.create_task(all_failed.wait())
    try:
        await asyncio.wait(
            {connecting, failing}, timeout=connect_timeout, return_when="FIRST_COMPLETED"
        )
    finally:
        failing.cancel()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        return nc
    connecting.cancel()
    await asyncio.wait([connecting])  # unlike ``await connecting``, keeps our own cancellation
    if not connecting.cancelled() and connecting.exception() is not None:
        # e.g. a malformed URL, raised before any attempt
        failures.append(connecting.exception())  # type: ignore[arg-type]
    with contextlib.suppress(Exception):
        await nc.close()
    reason = _describe(failures[-1]) if failures else f"no answer within {connect_timeout:g}s"
    raise ServerUnreachableError(f"cannot connect to NATS at {url}: {reason}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        # socket.gaierror has its own text; ConnectionRefusedError's is "Connect call failed".
        text = exc.strerror if isinstance(exc, socket.gaierror) else os.strerror(exc.errno)
        return (text or str(exc)).lower()
    return str(exc).strip() or type(exc).__name__
