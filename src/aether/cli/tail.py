"""``aether tail``: events as they are stored, live, until Ctrl-C (or ``--count`` events).

Tail reads through the store's ``subscribe(after=position)``: without ``--from-start``
after the stream's last message when it starts (it says so on stderr: ``listening
...``), with it from the beginning. The subscription resumes by itself after a
reconnect, a server restart or a lost consumer, right after the last position it read:
nothing is shown twice and nothing stored meanwhile is missed. Messages that are not
valid aether events are noted on stderr as the subscription skips them.

``--type`` is the subscription's filter; ``--actor`` and ``--actor-prefix`` are applied
here (a prefix is not a pattern: any characters). If the connection is lost and not
regained (``--reconnect-attempts``), tail fails with a one-line error and exit code 7
instead of waiting forever.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import click
from nats.aio.client import Client
from nats.errors import NoServersError
from rich.text import Text

from aether import Event, ReplayError
from aether.bus import SubscriptionFilter

from ._connect import (
    DEFAULT_RECONNECT_ATTEMPTS,
    ConnectionSettings,
    Reconnects,
    connection_options,
    describe_failure,
    session,
)
from ._errors import ServerUnreachableError
from ._output import compact_json, echo_json, format_time, note, stdout_console
from ._signals import run_until_signalled
from ._stream import OpenStream, StreamRef, admin, attach, stream_options

__all__ = ["tail"]


@click.command()
@stream_options()
@click.option("--actor", "-a", metavar="ID", help="Only this actor's events.")
@click.option(
    "--actor-prefix", "-p", default="", metavar="P", help="Only actors whose id starts with P."
)
@click.option(
    "--type",
    "-t",
    "event_types",
    multiple=True,
    metavar="TYPE",
    help="Only events of this type (repeat for several).",
)
@click.option(
    "--count",
    "--limit",
    "-n",
    "count",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Stop after N events [default: run until Ctrl-C].",
)
@click.option(
    "--from-start",
    is_flag=True,
    help="Start with the events already stored (oldest first), then follow.",
)
@click.option(
    "--reconnect-attempts",
    type=click.IntRange(min=-1),
    default=DEFAULT_RECONNECT_ATTEMPTS,
    show_default=True,
    metavar="N",
    help="Once the connection is lost, try to reconnect N times (about a second apart) "
    "before giving up with exit code 7 (-1: forever).",
)
@click.option("--json", "as_json", is_flag=True, help="One event per line, in aether's wire form.")
@connection_options
def tail(
    conn: ConnectionSettings,
    ref: StreamRef,
    actor: str | None,
    actor_prefix: str,
    event_types: tuple[str, ...],
    count: int | None,
    from_start: bool,
    reconnect_attempts: int,
    as_json: bool,
) -> None:
    """Follow a stream's events as they are stored.

    Prints one line per event (time, actor, version, type, data), or JSON lines with
    --json. Runs until Ctrl-C or SIGTERM (exit code 0), or until --count events have
    been shown. After a reconnect it resumes right after the last event shown. Messages
    that are not valid aether events are noted on stderr.
    """
    follow = _Follow(ref, actor, actor_prefix, frozenset(event_types), count, from_start, as_json)
    asyncio.run(run_until_signalled(_run(conn, follow, reconnect_attempts)))


@dataclass
class _Follow:
    """What to follow, how to print it, and how far it got."""

    ref: StreamRef
    actor: str | None
    prefix: str
    types: frozenset[str]
    count: int | None
    from_start: bool
    as_json: bool
    shown: int = 0
    #: The stream sequence of the last message shown or passed over (0: none yet).
    position: int = 0

    def wanted(self, event: Event) -> bool:
        # The types are the subscription's filter already.
        if self.actor is not None and event.actor_id != self.actor:
            return False
        return event.actor_id.startswith(self.prefix)

    def show(self, event: Event) -> None:
        self.shown += 1
        if self.as_json:
            echo_json(event.to_json())
            return
        line = Text.assemble(
            (format_time(event.timestamp), "dim"),
            "  ",
            (event.actor_id, "cyan"),
            f"  v{event.version}  ",
            (event.event_type, "bold"),
            "  ",
            compact_json(event.data),
        )
        stdout_console().print(line, soft_wrap=True)

    @property
    def done(self) -> bool:
        return self.count is not None and self.shown >= self.count


@dataclass
class _Connection:
    """What the connection's callbacks saw."""

    up: bool = True
    ending: bool = False  # our own close: not a loss
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_disconnect(self) -> None:
        if self.up and not self.ending:
            note("lost the connection to NATS; reconnecting ...")
        self.up = False

    async def on_reconnect(self) -> None:
        self.up = True
        note("reconnected to NATS")

    async def on_close(self) -> None:
        if not self.ending:
            self.closed.set()


async def _run(conn: ConnectionSettings, follow: _Follow, attempts: int) -> None:
    watch = _Connection()
    reconnects = Reconnects(attempts, watch.on_disconnect, watch.on_reconnect, watch.on_close)
    async with session(conn, name="aether-tail", reconnects=reconnects) as nc:
        try:
            opened = await attach(nc, follow.ref)
            reader = asyncio.ensure_future(_read(nc, opened, follow))
            lost = asyncio.ensure_future(watch.closed.wait())
            try:
                await asyncio.wait({reader, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, lost):
                    task.cancel()
                await asyncio.gather(reader, lost, return_exceptions=True)
            if not reader.cancelled() and reader.exception() is None:
                return
            if watch.closed.is_set():
                raise ServerUnreachableError(_lost_message(nc, conn, attempts, follow))
            reader.result()  # its error
        finally:
            watch.ending = True


def _lost_message(nc: Client, conn: ConnectionSettings, attempts: int, follow: _Follow) -> str:
    gave_up = f" and gave up after {attempts} reconnect attempt(s)" if attempts >= 0 else ""
    last = nc.last_error
    # "no servers available" only repeats that the attempts are used up.
    reason = (
        "" if last is None or isinstance(last, NoServersError) else f": {describe_failure(last)}"
    )
    return (
        f"lost the connection to NATS at {conn.server_url}{gave_up}{reason} (the last "
        f"message read was at stream sequence {follow.position})"
    )


async def _read(nc: Client, opened: OpenStream, follow: _Follow) -> None:
    """Show events until --count is reached (or forever)."""
    after = 0
    if not follow.from_start:
        after = (await admin(nc).stream_info(follow.ref)).last_position
    follow.position = after
    types = SubscriptionFilter(event_types=follow.types) if follow.types else None
    subscription = opened.store.subscribe(after=after, filter=types, on_malformed=_note)
    async with subscription as events:
        note(
            f"listening for {'all' if follow.from_start else 'new'} events on stream "
            f"{opened.describe()}; Ctrl-C to stop"
        )
        async for event in events:
            follow.position = events.position
            if follow.wanted(event):
                follow.show(event)
                if follow.done:
                    return


def _note(skipped: ReplayError) -> None:
    where = skipped.sequence_number
    note(f"skipped malformed message at stream sequence {where}: {skipped.error}")
