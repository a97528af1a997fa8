"""``aether snapshot``: an actor's latest snapshot, next to its latest event version.

Read through the store's ``get_latest_snapshot``. Showing the actor's latest version too
tells how many events a replay from the snapshot would apply.
"""

from __future__ import annotations

import asyncio
import json

import click
from rich.table import Table

from aether.errors import StreamNotFoundError
from aether.event import ActorSnapshot

from ._connect import ConnectionSettings, connection_options, session
from ._errors import NotFoundError
from ._output import echo_json, format_time, stdout_console
from ._stream import StreamRef, attach, stream_options

__all__ = ["snapshot"]


@click.command()
@click.argument("actor")
@stream_options()
@click.option("--json", "as_json", is_flag=True, help="The snapshot in its JSON wire form.")
@connection_options
def snapshot(conn: ConnectionSettings, actor: str, ref: StreamRef, as_json: bool) -> None:
    """Show ACTOR's latest snapshot: version, time and state.

    Fails with exit code 3 if the stream does not exist or the actor has no snapshot.
    """
    found, latest = asyncio.run(_read(conn, actor, ref))
    if as_json:
        echo_json(found.to_json())
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("actor", found.actor_id)
    behind = latest - found.version
    table.add_row(
        "version",
        f"{found.version} (actor at version {latest}"
        + (f", {behind} event(s) after the snapshot)" if behind > 0 else ")"),
    )
    table.add_row("time", format_time(found.timestamp))
    table.add_row("state", json.dumps(found.state, ensure_ascii=False, indent=2))
    stdout_console().print(table)


async def _read(conn: ConnectionSettings, actor: str, ref: StreamRef) -> tuple[ActorSnapshot, int]:
    async with session(conn, name="aether-snapshot") as nc:
        opened = await attach(nc, ref)
        store = opened.store
        try:
            found = await store.get_latest_snapshot(actor)
        except StreamNotFoundError as exc:
            if exc.stream_name == store.stream_name:
                raise
            found = None  # a stream created without aether's snapshot stream
        if found is None:
            raise NotFoundError(f"actor {actor!r} has no snapshot in stream {opened.describe()}")
        return found, await store.get_latest_version(actor)
