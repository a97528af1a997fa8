"""``aether events``: one actor's history, streamed as aligned text rows or JSON lines.

Read through the store's ``iter_events_with_errors``, so what is shown is what an
application replaying the actor would get (a message that is not a valid event is
skipped, with a note on stderr giving its stream sequence), and each row is printed as
it arrives: the first line of a long
history appears at once and memory stays bounded whatever its length. ``--limit N``
stops after the first N events; ``--last N`` shows the newest N, reading only them
(from ``get_latest_version``: versions may have gaps, so the window is widened until
it holds N events or reaches the start) and holding at most N events in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

import click

from aether import Event, ReplayError
from aether.store import JetStreamEventStore

from ._connect import ConnectionSettings, connection_options, session
from ._errors import NotFoundError
from ._output import compact_json, echo_json, format_time, note
from ._stream import StreamRef, attach, stream_options

__all__ = ["events", "format_row"]

#: Types shorter than this are padded, so the data column usually lines up.
_TYPE_WIDTH = 12


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
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Show the first N events only.",
)
@click.option(
    "--last",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Show the newest N events only (reads only those).",
)
@click.option("--json", "as_json", is_flag=True, help="One event per line, in aether's wire form.")
@connection_options
def events(
    conn: ConnectionSettings,
    actor: str,
    ref: StreamRef,
    from_version: int,
    limit: int | None,
    last: int | None,
    as_json: bool,
) -> None:
    """Show ACTOR's events in version order, one line each, as they are read.

    Columns: version, time (UTC), type, data (compact JSON). Messages on the actor's
    subject that are not valid events are skipped. Fails with exit code 3 if the stream
    does not exist or the actor has no events at all (an actor with no events from
    --from on shows an empty history).
    """
    if limit is not None and last is not None:
        raise click.UsageError("use either --limit or --last, not both")
    asyncio.run(_show(conn, actor, ref, from_version, limit, last, as_json))


async def _show(
    conn: ConnectionSettings,
    actor: str,
    ref: StreamRef,
    from_version: int,
    limit: int | None,
    last: int | None,
    as_json: bool,
) -> None:
    async with session(conn, name="aether-events") as nc:
        opened = await attach(nc, ref)
        store = opened.store
        latest = await store.get_latest_version(actor)
        if latest == 0:
            raise NotFoundError(f"actor {actor!r} has no events in stream {opened.describe()}")
        width = len(str(latest))
        rows: AsyncIterator[Event | ReplayError]
        if last is not None:
            rows = _newest(store, actor, from_version, last, latest)
        else:
            rows = store.iter_events_with_errors(actor, from_version)
        shown = 0
        async with _closing(rows):
            async for event in rows:
                if isinstance(event, ReplayError):
                    note(
                        f"skipped malformed message at stream sequence "
                        f"{event.sequence_number}: {event.error}"
                    )
                    continue
                if as_json:
                    echo_json(event.to_json())
                else:
                    click.echo(format_row(event, width))
                shown += 1
                if shown == limit:
                    break
    if not shown:
        note(f"actor {actor!r} has no events from version {from_version}")


async def _newest(
    store: JetStreamEventStore, actor: str, from_version: int, count: int, latest: int
) -> AsyncIterator[Event]:
    """The newest *count* events with ``version >= from_version``, oldest first.

    Reads from version ``latest - count + 1``: exactly the newest *count* when the
    versions have no gaps. With gaps that window holds fewer, so it is doubled (and read
    again) until it holds *count* events or starts at *from_version*. At most *count*
    events are held.
    """
    window = count
    while True:
        start = max(from_version, latest - window + 1, 0)
        newest: deque[Event] = deque(maxlen=count)
        seen = 0
        async for event in store.iter_events(actor, start):
            newest.append(event)
            seen += 1
        if seen >= count or start <= max(from_version, 1):
            break
        window *= 2
    for event in newest:
        yield event


@contextlib.asynccontextmanager
async def _closing(items: AsyncIterator[Event | ReplayError]) -> AsyncIterator[None]:
    """Close *items* on leaving (an early ``break`` releases the store's consumer)."""
    try:
        yield
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def format_row(event: Event, width: int = 1) -> str:
    """``<version>  <time>  <type>  <data>``: the version right-aligned to *width*."""
    return (
        f"{event.version:>{width}}  {format_time(event.timestamp)}  "
        f"{event.event_type:<{_TYPE_WIDTH}}  {compact_json(event.data)}"
    )
