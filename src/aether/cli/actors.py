"""``aether actors``: the actors of a stream with their latest version.

Listed by :meth:`aether.admin.StreamAdmin.list_actors`: the server lists the stream's
subjects (one per actor) with their message counts, and each shown actor's latest version
is read as ``get_latest_version`` reads it (one request each, many in flight), so
thousands of actors take well under a second on a local server. Subjects that are not
aether's encoding of an actor id (a foreign writer's) are skipped and counted.
"""

from __future__ import annotations

import asyncio

import click

from aether.admin import ActorListing
from aether.errors import StreamNotFoundError

from ._connect import ConnectionSettings, connection_options, session
from ._output import echo_json, make_table, note, print_table
from ._stream import StreamRef, admin, not_found, stream_options

__all__ = ["actors"]

DEFAULT_LIMIT = 1000


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
    rows = listing.actors
    if as_json:
        for row in rows:
            echo_json({"actor": row.actor_id, "version": row.version, "events": row.events})
    elif rows:
        print_table(
            make_table("actor", "version", "events", right=("version", "events")),
            ((row.actor_id, f"{row.version:,}", f"{row.events:,}") for row in rows),
        )
    if not listing.matching:
        matching = f" whose id starts with {prefix!r}" if prefix else ""
        note(f"no actors{matching} in stream {ref.describe(listing.stream_name)}")
    elif len(rows) < listing.matching:
        note(
            f"showing {len(rows):,} of {listing.matching:,} actors (sorted by id); "
            "raise --limit to see more"
        )
    if listing.skipped_subjects:
        note(f"skipped {listing.skipped_subjects:,} subject(s) that are not aether actor subjects")


async def _list(conn: ConnectionSettings, ref: StreamRef, prefix: str, limit: int) -> ActorListing:
    async with session(conn, name="aether-actors") as nc:
        try:
            return await admin(nc).list_actors(ref, prefix=prefix, limit=limit or None)
        except StreamNotFoundError:
            raise not_found(ref) from None
