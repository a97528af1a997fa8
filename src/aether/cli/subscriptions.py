"""``aether subscriptions``: a stream's durable subscriptions, their backlog and parked events.

Listed by :meth:`JetStreamEventStore.durable_subscriptions
<aether.store.JetStreamEventStore.durable_subscriptions>` (the consumers aether made on
the stream, as the server holds them); with ``--parked NAME``, the events subscription
*NAME* gave up on (:meth:`~aether.store.JetStreamEventStore.parked`), oldest first.
"""

from __future__ import annotations

import asyncio

import click

from aether.store import DurableSubscriptionInfo, ParkedEvent

from ._connect import ConnectionSettings, connection_options, session
from ._output import echo_json, format_time, make_table, note, print_table
from ._stream import StreamRef, attach, stream_options

__all__ = ["subscriptions"]


@click.command()
@stream_options()
@click.option(
    "--parked",
    "parked_of",
    metavar="NAME",
    help="List the events durable subscription NAME parked instead.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@connection_options
def subscriptions(
    conn: ConnectionSettings, ref: StreamRef, parked_of: str | None, as_json: bool
) -> None:
    """List a stream's durable subscriptions (-s, default: events).

    PENDING: events stored after the last one delivered; UNACKED: delivered, not yet
    settled; REDELIVERED: of those, delivered more than once; PARKED: events given up on
    (see --parked NAME); ACKED TO: every event up to this position is settled.
    """
    if parked_of is not None:
        _show_parked(asyncio.run(_parked(conn, ref, parked_of)), parked_of, as_json)
        return
    infos = asyncio.run(_infos(conn, ref))
    if not infos:
        note(f"no durable subscriptions on stream {ref.describe()}")
        return
    if as_json:
        for info in infos:
            echo_json(
                {
                    "name": info.name,
                    "eventTypes": sorted(info.filter.event_types) if info.filter else [],
                    "actorPattern": info.filter.actor_pattern if info.filter else None,
                    "pending": info.pending,
                    "ackPending": info.ack_pending,
                    "redelivered": info.redelivered,
                    "parked": info.parked,
                    "ackedPosition": info.acked_position,
                    "deliveredPosition": info.delivered_position,
                    "maxDeliver": info.max_deliver,
                    "ackWaitSeconds": info.ack_wait.total_seconds(),
                }
            )
        return
    counts = ("pending", "unacked", "redelivered", "parked", "acked to")
    print_table(
        make_table("name", "filter", *counts, right=counts),
        (
            (
                info.name,
                _describe_filter(info),
                f"{info.pending:,}",
                f"{info.ack_pending:,}",
                f"{info.redelivered:,}",
                f"{info.parked:,}",
                f"{info.acked_position:,}",
            )
            for info in infos
        ),
    )


def _describe_filter(info: DurableSubscriptionInfo) -> str:
    if info.filter is None:
        return "-"
    parts = []
    if info.filter.event_types:
        parts.append("types " + ",".join(sorted(info.filter.event_types)))
    if info.filter.actor_pattern is not None:
        parts.append(f"actors {info.filter.actor_pattern}")
    return "; ".join(parts) or "-"


def _show_parked(parked: list[ParkedEvent], name: str, as_json: bool) -> None:
    if not parked:
        note(f"no parked events for durable subscription {name!r}")
        return
    if as_json:
        for p in parked:
            echo_json(
                {
                    "position": p.position,
                    "actorId": p.actor_id,
                    "version": p.version,
                    "eventId": p.event_id,
                    "eventType": p.event_type,
                    "reason": p.reason,
                    "attempts": p.attempts,
                    "parkedAt": format_time(p.parked_at),
                    "detail": p.detail,
                }
            )
        return
    print_table(
        make_table(
            "position",
            "actor",
            "version",
            "type",
            "reason",
            "attempts",
            "parked at",
            right=("position", "version", "attempts"),
        ),
        (
            (
                f"{p.position:,}",
                p.actor_id or "-",
                "-" if p.version is None else f"{p.version:,}",
                p.event_type or "-",
                p.reason + (f": {p.detail}" if p.detail else ""),
                str(p.attempts),
                format_time(p.parked_at),
            )
            for p in parked
        ),
    )


async def _infos(conn: ConnectionSettings, ref: StreamRef) -> list[DurableSubscriptionInfo]:
    async with session(conn, name="aether-subscriptions") as nc:
        opened = await attach(nc, ref)
        try:
            return await opened.store.durable_subscriptions()
        finally:
            await opened.store.close()


async def _parked(conn: ConnectionSettings, ref: StreamRef, name: str) -> list[ParkedEvent]:
    async with session(conn, name="aether-subscriptions") as nc:
        opened = await attach(nc, ref)
        try:
            return await opened.store.parked(name)
        finally:
            await opened.store.close()
