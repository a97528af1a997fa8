"""``aether streams``: the aether event streams on a server, with their size.

Listed by :meth:`aether.admin.StreamAdmin.list_streams`: a stream is aether's if its
metadata says so, or, without aether metadata, if its only subjects are
``<name>.events.>`` (older aether, Go Aether). Snapshot streams are not listed on their
own: their snapshot count is shown next to their event stream.

The namespace and name shown are the pair a store was opened with, which the other
commands take as ``--namespace`` and ``--stream``; ``stream`` is the JetStream name
(``<escaped namespace>__<name>``, or another one for a stream made by an older aether).
"""

from __future__ import annotations

import asyncio

import click

from aether.admin import StreamInfo

from ._connect import ConnectionSettings, connection_options, session
from ._output import echo_json, human_bytes, make_table, note, print_table
from ._stream import admin

__all__ = ["streams"]


@click.command()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per stream.")
def streams(conn: ConnectionSettings, as_json: bool) -> None:
    """List aether's event streams: namespace, name, actors, events, bytes.

    NAMESPACE and NAME are what to pass to --namespace and --stream of the other
    commands; `aether stream info` shows one stream's settings. JSON objects have the
    keys stream, namespace, name, actors, events, bytes, snapshots and metadata (false:
    recognised by its subjects only).
    """
    found = asyncio.run(_list(conn))
    if not found:
        note(f"no aether event streams on {conn.server_url}")
        return
    if as_json:
        for info in found:
            echo_json(
                {
                    "stream": info.stream_name,
                    "namespace": info.namespace,
                    "name": info.name,
                    "actors": info.actors,
                    "events": info.events,
                    "bytes": info.bytes,
                    "snapshots": info.snapshots,
                    "metadata": info.has_metadata,
                }
            )
        return
    table = make_table(
        "namespace",
        "name",
        "stream",
        "actors",
        "events",
        "bytes",
        "snapshots",
        right=("actors", "events", "bytes", "snapshots"),
    )
    print_table(
        table,
        (
            (
                info.namespace or "-",
                info.name,
                info.stream_name,
                f"{info.actors:,}",
                f"{info.events:,}",
                human_bytes(info.bytes),
                f"{info.snapshots:,}",
            )
            for info in found
        ),
    )


async def _list(conn: ConnectionSettings) -> list[StreamInfo]:
    async with session(conn, name="aether-streams") as nc:
        return await admin(nc).list_streams()
