"""``aether streams``: the aether event streams on a server, with their size.

A stream is aether's if its metadata says ``aether.kind = events`` (every stream aether
has created since it writes metadata); a stream without aether metadata counts if its
only subjects are ``<name>.events.>`` (older aether, Go Aether). Snapshot streams are not
listed on their own: their snapshot count is shown next to their event stream.

The namespace and name shown are the metadata's: the pair a store was opened with (its
JetStream name is ``<escaped namespace>__<name>``, or ``<sanitised namespace>_<name>`` for
a stream made by an older aether, whose metadata holds the sanitised namespace), which
the other commands take as ``--namespace`` and ``--stream``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import click

from aether.store._jsapi import JsApi
from aether.store._subjects import META_KIND, META_NAMESPACE, META_STREAM, SNAPSHOTS_SUFFIX

from ._connect import ConnectionSettings, connection_options, session
from ._output import echo_json, human_bytes, make_table, note, print_table
from ._stream import check_jetstream, cli_api

__all__ = ["StreamRow", "classify", "streams"]


@dataclass(frozen=True)
class StreamRow:
    """One event stream as listed. ``namespace``/``name`` are what a store was opened with
    (from the metadata; without metadata: no namespace and the JetStream name)."""

    stream: str
    namespace: str
    name: str
    actors: int
    events: int
    bytes: int
    snapshots: int = 0
    metadata: bool = True


@click.command()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per stream.")
def streams(conn: ConnectionSettings, as_json: bool) -> None:
    """List aether's event streams: namespace, name, actors, events, bytes.

    Streams are recognised by aether's stream metadata (aether.kind = events), or for
    streams created without it by their subjects (<name>.events.>). NAMESPACE and NAME
    are what to pass to --namespace and --stream of the other commands.
    """
    rows = asyncio.run(_list(conn))
    if not rows:
        note(f"no aether event streams on {conn.server_url}")
        return
    if as_json:
        for row in rows:
            echo_json(asdict(row))
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
                row.namespace or "-",
                row.name,
                row.stream,
                f"{row.actors:,}",
                f"{row.events:,}",
                human_bytes(row.bytes),
                f"{row.snapshots:,}",
            )
            for row in rows
        ),
    )


async def _list(conn: ConnectionSettings) -> list[StreamRow]:
    async with session(conn, name="aether-streams") as nc:
        await check_jetstream(nc)
        api = cli_api(nc)
        infos = await _all_stream_infos(api)
    return classify(infos)


async def _all_stream_infos(api: JsApi) -> list[dict[str, Any]]:
    """Every stream's info, following the server's pages."""
    infos: list[dict[str, Any]] = []
    while True:
        answer = await api.call("STREAM.LIST", {"offset": len(infos)})
        page = answer.get("streams") or []
        infos.extend(page)
        if not page or len(infos) >= int(answer.get("total", 0)):
            return infos


def classify(infos: list[dict[str, Any]]) -> list[StreamRow]:
    """The aether event streams among *infos* (STREAM.INFO answers), sorted by namespace
    and name, with the message counts of their snapshot streams."""
    snapshots: dict[str, int] = {}
    rows: list[StreamRow] = []
    for info in infos:
        config: Mapping[str, Any] = info.get("config") or {}
        state: Mapping[str, Any] = info.get("state") or {}
        name = str(config.get("name", ""))
        metadata: Mapping[str, str] = config.get("metadata") or {}
        subjects = list(config.get("subjects") or [])
        kind = metadata.get(META_KIND)
        base = name.removesuffix(SNAPSHOTS_SUFFIX)
        if kind == "snapshots" or (
            kind is None and name.endswith(SNAPSHOTS_SUFFIX) and subjects == [f"{base}.snapshots.>"]
        ):
            snapshots[base] = int(state.get("messages", 0))
            continue
        if kind == "events":
            namespace = metadata.get(META_NAMESPACE, "")
            given = metadata.get(META_STREAM) or name
            from_metadata = True
        elif kind is None and subjects == [f"{name}.events.>"]:
            namespace, given, from_metadata = "", name, False
        else:
            continue
        rows.append(
            StreamRow(
                stream=name,
                namespace=namespace,
                name=given,
                actors=int(state.get("num_subjects", 0)),
                events=int(state.get("messages", 0)),
                bytes=int(state.get("bytes", 0)),
                metadata=from_metadata,
            )
        )
    rows = [replace(row, snapshots=snapshots.get(row.stream, 0)) for row in rows]
    rows.sort(key=lambda row: (row.namespace, row.name, row.stream))
    return rows
