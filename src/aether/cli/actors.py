"""``aether actors``: the actors of a stream with their latest version.

The server lists the stream's subjects (``STREAM.INFO`` with ``subjects_filter``, paged),
one per actor, with their message counts; subject tokens are decoded back to actor ids.
Each shown actor's latest version is then read by the store's ``get_latest_version``
(the last message of its subject: one request, whatever its history), many requests in
flight at once, so thousands of actors take well under a second on a local server.
Subjects that are not aether's encoding of an actor id (a foreign writer's) are
skipped and counted.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

import click

from aether.store import JetStreamEventStore
from aether.store._subjects import decode_actor_token, encode_actor_id

from ._connect import ConnectionSettings, connection_options, session
from ._output import echo_json, make_table, note, print_table
from ._stream import OpenStream, StreamRef, attach, stream_options

__all__ = ["ActorRow", "actor_id_of", "actors"]

DEFAULT_LIMIT = 1000
_IN_FLIGHT = 64


@dataclass(frozen=True)
class ActorRow:
    actor: str
    version: int
    events: int


@dataclass(frozen=True)
class _Listing:
    rows: list[ActorRow]
    matching: int  # actors matching the prefix, before the limit
    foreign: int  # subjects that are not an encoded actor id
    stream: str  # the stream, described for messages


@click.command()
@stream_options()
@click.option("--prefix", "-p", default="", metavar="P", help="Only actors whose id starts with P.")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=0),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Show at most this many actors, by id (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per actor.")
@connection_options
def actors(
    conn: ConnectionSettings, ref: StreamRef, prefix: str, limit: int, as_json: bool
) -> None:
    """List the actors of a stream (-s, default: events) with their latest version.

    VERSION is the version of the newest event on the actor's subject; EVENTS the
    number of messages stored for it. Actors are sorted by id; when more match than
    --limit, the first ones are shown and a note on stderr says how many there are.
    """
    listing = asyncio.run(_list(conn, ref, prefix, limit))
    if as_json:
        for row in listing.rows:
            echo_json(asdict(row))
    elif listing.rows:
        print_table(
            make_table("actor", "version", "events", right=("version", "events")),
            ((row.actor, f"{row.version:,}", f"{row.events:,}") for row in listing.rows),
        )
    if not listing.matching:
        matching = f" whose id starts with {prefix!r}" if prefix else ""
        note(f"no actors{matching} in stream {listing.stream}")
    elif len(listing.rows) < listing.matching:
        note(
            f"showing {len(listing.rows):,} of {listing.matching:,} actors (sorted by id); "
            "raise --limit to see more"
        )
    if listing.foreign:
        note(f"skipped {listing.foreign:,} subject(s) that are not aether actor subjects")


async def _list(conn: ConnectionSettings, ref: StreamRef, prefix: str, limit: int) -> _Listing:
    async with session(conn, name="aether-actors") as nc:
        opened = await attach(nc, ref)
        counts = await _subject_counts(opened)
        token_start = len(opened.event_prefix)
        found: dict[str, int] = {}
        foreign = 0
        for subject, count in counts.items():
            actor = actor_id_of(subject[token_start:])
            if actor is None:
                foreign += 1
            elif actor.startswith(prefix):
                found[actor] = count
        shown = sorted(found)
        if limit:
            shown = shown[:limit]
        versions = await _latest_versions(opened.store, shown)
        rows = [ActorRow(a, v, found[a]) for a, v in zip(shown, versions, strict=True)]
        return _Listing(rows, len(found), foreign, opened.describe())


async def _subject_counts(opened: OpenStream) -> dict[str, int]:
    """Every event subject of the stream and its message count, following the pages."""
    counts: dict[str, int] = {}
    stream = opened.stream_name
    while True:
        answer = await opened.api.call(
            f"STREAM.INFO.{stream}",
            {"subjects_filter": opened.event_subjects, "offset": len(counts)},
            stream=stream,
        )
        page = (answer.get("state") or {}).get("subjects") or {}
        counts.update(page)
        if not page or len(counts) >= int(answer.get("total", 0)):
            return counts


async def _latest_versions(store: JetStreamEventStore, actor_ids: list[str]) -> list[int]:
    """Each actor's latest version, with at most _IN_FLIGHT requests outstanding."""
    limiter = asyncio.Semaphore(_IN_FLIGHT)

    async def latest(actor_id: str) -> int:
        async with limiter:
            return await store.get_latest_version(actor_id)

    return list(await asyncio.gather(*(latest(a) for a in actor_ids)))


def actor_id_of(token: str) -> str | None:
    """The actor id whose subject token is *token*, or None if aether never writes it."""
    try:
        actor_id = decode_actor_token(token)
        if actor_id and encode_actor_id(actor_id) == token:
            return actor_id
    except (UnicodeError, ValueError):
        pass
    return None
