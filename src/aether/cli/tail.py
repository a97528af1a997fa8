"""``aether tail``: events as they are stored, live, until Ctrl-C (or ``--count`` events).

An ephemeral ordered push consumer (nats-py's ``ordered_consumer``: in memory, no acks,
flow control and heartbeats, re-created from the last seen sequence after a gap or a
reconnect) on the stream's event subjects, delivering new messages only (everything with
``--from-start``). ``--actor`` narrows the consumer's subject on the server; the prefix
and type filters are applied here. Once the consumer exists, tail says so on stderr
(``listening ...``): every event stored after that line is shown.
"""

from __future__ import annotations

import asyncio

import click
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from rich.text import Text

from aether.event import Event

from ._connect import ConnectionSettings, connection_options, session
from ._output import compact_json, echo_json, format_time, note, stdout_console
from ._signals import run_until_signalled
from ._stream import StreamRef, attach, stream_options
from .actors import actor_id_of

__all__ = ["tail"]

_QUEUE_SIZE = 1000


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
    as_json: bool,
) -> None:
    """Follow a stream's events as they are stored.

    Prints one line per event (time, actor, version, type, data), or JSON lines with
    --json. Runs until Ctrl-C or SIGTERM (exit code 0), or until --count events have
    been shown. Messages that are not valid aether events are noted on stderr.
    """
    follow = _Follow(ref, actor, actor_prefix, frozenset(event_types), count, from_start, as_json)
    asyncio.run(run_until_signalled(_run(conn, follow)))


class _Follow:
    """What to follow and how to print it."""

    def __init__(
        self,
        ref: StreamRef,
        actor: str | None,
        prefix: str,
        types: frozenset[str],
        count: int | None,
        from_start: bool,
        as_json: bool,
    ) -> None:
        self.ref = ref
        self.actor = actor
        self.prefix = prefix
        self.types = types
        self.count = count
        self.from_start = from_start
        self.as_json = as_json
        self.shown = 0
        self._console = stdout_console()

    def wanted(self, event: Event) -> bool:
        return event.actor_id.startswith(self.prefix) and (
            not self.types or event.event_type in self.types
        )

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
        self._console.print(line, soft_wrap=True)

    @property
    def done(self) -> bool:
        return self.count is not None and self.shown >= self.count


async def _run(conn: ConnectionSettings, follow: _Follow) -> None:
    async with session(conn, name="aether-tail") as nc:
        opened = await attach(nc, follow.ref)
        store = opened.store
        subject = store.subject_for(follow.actor) if follow.actor else opened.event_subjects
        token_start = len(opened.event_prefix)
        # Bounded: if printing falls behind, the subscription's own pending limit and the
        # consumer's flow control slow the server down (the ordered consumer fills gaps).
        queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=_QUEUE_SIZE)

        async def on_msg(msg: Msg) -> None:
            await queue.put(msg)

        sub = await nc.jetstream().subscribe(
            subject,
            stream=opened.stream_name,
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL if follow.from_start else DeliverPolicy.NEW,
        )
        await nc.flush()
        note(
            f"listening for {'all' if follow.from_start else 'new'} events on stream "
            f"{opened.describe()} ({subject}); Ctrl-C to stop"
        )

        try:
            while not follow.done:
                msg = await queue.get()
                event = _decode(msg, token_start)
                if event is not None and follow.wanted(event):
                    follow.show(event)
        finally:
            if not nc.is_closed:
                await sub.unsubscribe()


def _decode(msg: Msg, token_start: int) -> Event | None:
    """The event in *msg*, or None (noted on stderr) if it is not a valid aether event."""
    try:
        event = Event.from_json(msg.data)
    except ValueError as exc:
        note(f"skipped malformed message at stream sequence {_sequence(msg)}: {exc}")
        return None
    if actor_id_of(msg.subject[token_start:]) != event.actor_id:
        note(
            f"skipped message at stream sequence {_sequence(msg)}: its actor "
            f"{event.actor_id!r} does not match its subject {msg.subject}"
        )
        return None
    return event


def _sequence(msg: Msg) -> str:
    try:
        return str(msg.metadata.sequence.stream)
    except Exception:  # not a JetStream delivery: cannot happen on a consumer's subject
        return "?"
