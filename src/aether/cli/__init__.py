"""The ``aether`` command line (the ``cli`` extra: ``pip install 'aether-eventsourcing[cli]'``).

``aether demo`` races writer processes on shared accounts and audits the result;
``server`` runs a development nats-server; ``streams``, ``actors``, ``events``,
``snapshot`` and ``tail`` inspect what is stored; ``append`` stores one event. Commands
that talk to NATS share the connection options of :mod:`aether.cli._connect`; every error
a user can cause is one line with an exit code from :mod:`aether.cli._errors`, translated
in one place (:class:`aether.cli._app.AetherGroup`).

The library never imports this package: click and rich are needed only by the command
line, so they live in the ``cli`` extra and :func:`main` says so when they are missing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click

__all__ = ["CLI_EXTRA_HINT", "cli", "main"]

CLI_EXTRA_HINT = "pip install 'aether-eventsourcing[cli]'"

# The modules only the command line needs; a missing one means the extra is not installed.
_CLI_DEPENDENCIES = frozenset({"click", "rich"})


def main() -> None:
    """Console-script entry point (``aether = "aether.cli:main"``, and ``python -m aether``).

    Exits 1 with a one-line hint, not a traceback, when the ``cli`` extra is not installed.
    """
    try:
        from aether.cli._app import cli as group
    except ModuleNotFoundError as exc:
        if exc.name not in _CLI_DEPENDENCIES:
            raise
        sys.stderr.write(
            f"Error: the aether command line needs the 'cli' extra ({exc.name} is not"
            f" installed): {CLI_EXTRA_HINT}\n"
        )
        raise SystemExit(1) from None
    group.main(prog_name="aether")


def __getattr__(name: str) -> Any:
    # ``aether.cli.cli`` (the click group, to embed or test it) without importing click
    # for a plain ``import aether.cli``.
    if name == "cli":
        from aether.cli._app import cli as group

        return group
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    cli: click.Group
