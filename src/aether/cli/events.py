"""``aether events``: one actor's history, as a table or as JSON lines.

Read through the store, so what is shown is what an application replaying the actor
would get. ``--json`` streams the events (bounded memory, any history length; messages
that are not valid events are skipped, as ``iter_events`` does); the table reads the
history with ``get_events_with_errors`` and notes malformed messages on stderr.
"""

from __future__ import annotations

import asyncio

import click
from rich.text import Text

from ._connect import ConnectionSettings, connection_options, session
from ._errors import NotFoundError
from ._output import (
    compact_json,
    echo_json,
    format_time,
    make_table,
    note,
    print_table,
)
from ._stream import OpenStream, StreamRef, attach, stream_options

__all__ = ["events"]


@click.command()
@click.argument("actor")
@stream_options()
@click.option(
    "--from",
    "from_version",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Only events with version >= N.",
)
@click.option("--json", "as_json", is_flag=True, help="One event per line, in aether's wire form.")
@connection_options
def events(
    conn: ConnectionSettings, actor: str, ref: StreamRef, from_version: int, as_json: bool
) -> None:
    """Show ACTOR's events in version order.

    Fails with exit code 3 if the stream does not exist or the actor has no events at
    all (an actor with no events from --from on shows an empty history).
    """
    asyncio.run(_show(conn, actor, ref, from_version, as_json))


async def _show(
    conn: ConnectionSettings, actor: str, ref: StreamRef, from_version: int, as_json: bool
) -> None:
    async with session(conn, name="aether-events") as nc:
        opened = await attach(nc, ref)
        store = opened.store
        if as_json:
            shown = 0
            async for event in store.iter_events(actor, from_version):
                echo_json(event.to_json())
                shown += 1
            if not shown:
                await _check_known(opened, actor)
            return
        result = await store.get_events_with_errors(actor, from_version)
        if not result.events and not result.errors:
            await _check_known(opened, actor)
    if result.events:
        print_table(
            make_table("version", "type", "time", "data", right=("version",)),
            (
                (
                    str(event.version),
                    Text(event.event_type, style="bold"),
                    format_time(event.timestamp),
                    compact_json(event.data),
                )
                for event in result.events
            ),
        )
    else:
        note(f"actor {actor!r} has no events from version {from_version}")
    for error in result.errors:
        note(f"skipped malformed message at stream sequence {error.sequence_number}: {error.error}")


async def _check_known(opened: OpenStream, actor: str) -> None:
    """Raise NotFoundError if *actor* has nothing stored at all."""
    if await opened.store.get_latest_version(actor) == 0:
        raise NotFoundError(f"actor {actor!r} has no events in stream {opened.describe()}")
