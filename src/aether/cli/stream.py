"""``aether stream info|create|delete``: one event stream's settings, made or removed.

Built on :class:`aether.admin.StreamAdmin`. ``create`` makes the events stream and its
snapshot stream as ``JetStreamEventStore.open`` would, with the retention, replicas,
storage and duplicate window given here (``open`` and ``append --create`` always keep
events forever); an existing stream is never changed (exit code 4). ``delete`` removes
the events and snapshot streams, every event and snapshot of the store, after a
confirmation (``--yes`` skips it).

Durations are written as numbers with units: ``30d``, ``12h``, ``90m``, ``45s``,
``1d12h``, ``2w``; ``--retention forever`` (the default) keeps events forever.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from aether.admin import StreamInfo
from aether.errors import StreamNotFoundError
from aether.store import JetStreamConfig

from ._connect import ConnectionSettings, connection_options, session
from ._errors import CliError
from ._output import echo_json, format_time, human_bytes
from ._stream import StreamRef, admin, not_found, stream_options

__all__ = ["format_duration", "parse_duration", "stream"]

FOREVER = "forever"
_UNITS = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_DURATION = re.compile(rf"(?:{_PART.pattern})+")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``1d12h``, ``90s``, ``500ms`` ... as a timedelta; ValueError if
    it is not one or is not positive."""
    compact = text.strip().lower().replace(" ", "")
    if not _DURATION.fullmatch(compact):
        raise ValueError(
            f"{text!r} is not a duration: a number and a unit (w, d, h, m, s, ms), "
            "e.g. 30d, 12h, 1d12h"
        )
    total = sum(
        (float(number) * _UNITS[unit] for number, unit in _PART.findall(compact)), timedelta()
    )
    if total <= timedelta(0):
        raise ValueError(f"{text!r} is not a positive duration")
    return total


def format_duration(value: timedelta | None) -> str:
    """``forever`` for None, else the largest units: ``30d``, ``1d12h``, ``2m``, ``1.5s``."""
    if value is None:
        return FOREVER
    rest = value
    parts: list[str] = []
    for unit in ("d", "h", "m"):
        count, rest = divmod(rest, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    if rest or not parts:
        seconds = rest.total_seconds()
        parts.append(f"{seconds:g}s" if seconds >= 1 or not seconds else f"{seconds * 1000:g}ms")
    return "".join(parts)


if TYPE_CHECKING:
    _ParamType = click.ParamType[timedelta | None]
else:  # click < 8.2: ParamType is not generic
    _ParamType = click.ParamType


class _Duration(_ParamType):
    """A duration option (``30d``); with *forever*, also ``forever`` (None)."""

    name = "duration"

    def __init__(self, *, forever: bool = False) -> None:
        self.forever = forever

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta | None:
        if isinstance(value, timedelta) or value is None:
            return value
        if self.forever and str(value).strip().lower() == FOREVER:
            return None
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc) + (" or 'forever'" if self.forever else ""), param, ctx)


@click.group()
def stream() -> None:
    """Inspect, create or delete one event stream (-s NAME, -N NAMESPACE)."""


@stream.command()
@stream_options()
@click.option("--json", "as_json", is_flag=True, help="The stream as one JSON object.")
@connection_options
def info(conn: ConnectionSettings, ref: StreamRef, as_json: bool) -> None:
    """Show a stream's settings and size: retention, storage, replicas, duplicate window,
    actors, events, bytes, positions and snapshots."""
    found = asyncio.run(_info(conn, ref))
    _print(found, as_json)


@stream.command()
@stream_options(required=True)
@click.option(
    "--retention",
    type=_Duration(forever=True),
    default=FOREVER,
    show_default=True,
    metavar="DURATION",
    help="Delete events older than this (30d, 12h, ...), or keep them forever.",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Copies kept in a cluster.",
)
@click.option(
    "--storage",
    type=click.Choice(["file", "memory"]),
    default="file",
    show_default=True,
    help="Where the server keeps the messages.",
)
@click.option(
    "--duplicate-window",
    type=_Duration(),
    default="2m",
    show_default=True,
    metavar="DURATION",
    help="How long the server drops a re-sent append (at least the stores' retry "
    "deadline + request timeout).",
)
@click.option("--json", "as_json", is_flag=True, help="The new stream as one JSON object.")
@connection_options
def create(
    conn: ConnectionSettings,
    ref: StreamRef,
    retention: timedelta | None,
    replicas: int,
    storage: str,
    duplicate_window: timedelta,
    as_json: bool,
) -> None:
    """Create an event stream (and its snapshot stream) for stores to open.

    Fails with exit code 4 if the stream exists (its settings are not changed), 5 if
    the settings are refused (e.g. a retention not longer than the duplicate window).
    """
    config = JetStreamConfig(
        namespace=ref.namespace,
        stream_retention=retention,
        replica_count=replicas,
        storage="memory" if storage == "memory" else "file",
        duplicate_window=duplicate_window,
    )
    created = asyncio.run(_create(conn, ref, config))
    if not as_json:
        click.echo(f"created stream {ref.describe(created.stream_name)}")
    _print(created, as_json)


@stream.command()
@stream_options(required=True)
@click.option("--yes", "-y", is_flag=True, help="Delete without asking.")
@click.option("--json", "as_json", is_flag=True, help="The deleted stream as one JSON object.")
@connection_options
def delete(conn: ConnectionSettings, ref: StreamRef, yes: bool, as_json: bool) -> None:
    """Delete an event stream and its snapshot stream: every event and snapshot of the
    store, irrevocably.

    Shows the stream and asks for confirmation (on stderr) unless --yes is given. Live
    stores on the stream fail their next read or write with "stream not found".
    """
    asyncio.run(_delete(conn, ref, yes, as_json))


async def _info(conn: ConnectionSettings, ref: StreamRef) -> StreamInfo:
    async with session(conn, name="aether-stream-info") as nc:
        try:
            return await admin(nc).stream_info(ref)
        except StreamNotFoundError:
            raise not_found(ref) from None


async def _create(conn: ConnectionSettings, ref: StreamRef, config: JetStreamConfig) -> StreamInfo:
    async with session(conn, name="aether-stream-create") as nc:
        return await admin(nc).create_stream(ref, config)


async def _delete(conn: ConnectionSettings, ref: StreamRef, yes: bool, as_json: bool) -> None:
    async with session(conn, name="aether-stream-delete") as nc:
        streams = admin(nc)
        try:
            found = await streams.stream_info(ref)
            if not yes:
                _confirm_deletion(found)
            deleted = await streams.delete_stream(ref)
        except StreamNotFoundError:
            raise not_found(ref) from None
    if as_json:
        echo_json(_as_json(deleted))
        return
    snapshots = f" and {deleted.snapshot_stream!r}" if deleted.snapshot_stream else ""
    click.echo(
        f"deleted stream {ref.describe(deleted.stream_name)}{snapshots}: "
        f"{deleted.events:,} events of {deleted.actors:,} actors, "
        f"{deleted.snapshots:,} snapshots"
    )


def _confirm_deletion(found: StreamInfo) -> None:
    _print(found, as_json=False, err=True)
    prompt = (
        f"Delete stream {found.ref.describe(found.stream_name)} with {found.events:,} "
        f"events of {found.actors:,} actors and {found.snapshots:,} snapshots? "
        "This cannot be undone"
    )
    try:
        confirmed = click.confirm(prompt, default=False, err=True)
    except click.Abort:  # end of input, Ctrl-C
        confirmed = False
    if not confirmed:
        raise CliError("nothing deleted (answer y, or pass --yes)")


def _print(found: StreamInfo, as_json: bool, *, err: bool = False) -> None:
    if as_json:
        echo_json(_as_json(found))
        return
    settings = found.settings
    rows = [
        ("namespace", found.namespace or "-"),
        ("name", found.name),
        ("stream", found.stream_name + ("" if found.has_metadata else " (no aether metadata)")),
        ("retention", format_duration(settings.max_age)),
        ("storage", settings.storage),
        ("replicas", str(settings.replicas)),
        ("duplicate window", format_duration(settings.duplicate_window)),
        ("created", format_time(settings.created)),
        ("actors", f"{found.actors:,}"),
        ("events", f"{found.events:,}"),
        ("bytes", human_bytes(found.bytes)),
        ("positions", f"{found.first_position:,} to {found.last_position:,}"),
        (
            "snapshots",
            f"{found.snapshots:,} in {found.snapshot_stream}" if found.snapshot_stream else "-",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}", err=err)


def _as_json(found: StreamInfo) -> dict[str, Any]:
    """The stream as JSON: durations in seconds (retention null: forever)."""
    settings = found.settings
    return {
        "stream": found.stream_name,
        "namespace": found.namespace,
        "name": found.name,
        "retention": None if settings.max_age is None else settings.max_age.total_seconds(),
        "storage": settings.storage,
        "replicas": settings.replicas,
        "duplicate_window": settings.duplicate_window.total_seconds(),
        "created": format_time(settings.created),
        "actors": found.actors,
        "events": found.events,
        "bytes": found.bytes,
        "first_position": found.first_position,
        "last_position": found.last_position,
        "snapshot_stream": found.snapshot_stream,
        "snapshots": found.snapshots,
        "metadata": found.has_metadata,
    }
