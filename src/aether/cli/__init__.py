"""The ``aether`` command line.

``aether demo`` races writer processes on shared accounts and audits the result; more
subcommands (inspection, bench) plug into the same :data:`cli` group. Commands that talk
to NATS take ``--url``/``$NATS_URL`` (see :mod:`aether.cli._connect`).
"""

from __future__ import annotations

import click

from aether import __version__
from aether.cli.demo import demo

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aether")
def cli() -> None:
    """aether: event sourcing on NATS JetStream, correct with any number of writers."""


cli.add_command(demo)


def main() -> None:
    """Console-script entry point (``aether = "aether.cli:main"``)."""
    cli.main(prog_name="aether")
