"""The ``aether`` click group: its commands, options and the one place errors are translated."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from aether import __version__
from aether.cli._errors import EXIT_CODES_HELP, translate_errors
from aether.cli.actors import actors
from aether.cli.append import append
from aether.cli.demo import demo
from aether.cli.events import events
from aether.cli.server import server
from aether.cli.snapshot import snapshot
from aether.cli.stream import stream
from aether.cli.streams import streams
from aether.cli.subscriptions import subscriptions
from aether.cli.tail import tail

__all__ = ["AetherGroup", "cli"]


class AetherGroup(click.Group):
    """A click group whose subcommands' aether errors become one-line errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with translate_errors():
                return super().invoke(ctx)
        except BrokenPipeError:
            # The reader went away (``aether events --json | head``): stop quietly, and keep
            # Python from complaining about the unflushed stdout at exit.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)


@click.group(
    cls=AetherGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(__version__, prog_name="aether")
def cli() -> None:
    """aether: event sourcing on NATS JetStream, correct with any number of writers.

    Start with `aether demo`, or `aether server` and then the other commands (they
    connect to $NATS_URL, default nats://127.0.0.1:4222).
    """


for _command in (
    demo,
    server,
    streams,
    stream,
    actors,
    events,
    tail,
    subscriptions,
    append,
    snapshot,
):
    cli.add_command(_command)
