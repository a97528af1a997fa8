"""``aether tail``: events as they are stored, live, until Ctrl-C (or ``--count`` events).

Tail remembers the position (stream sequence) of the last message it has shown or passed
over, and reads with an ephemeral pull consumer (in memory, no acks) that starts right
after it. Whenever that consumer may be gone (the connection came back after a server
restart or a network failure, the server forgot it, it was deleted), a new one is made
starting after the same position: nothing is shown twice and nothing stored meanwhile is
missed. Without ``--from-start`` the first consumer delivers only what is stored after
it was made; tail says so on stderr (``listening ...``) once it exists.

``--actor`` narrows the consumer's subject on the server; the prefix and type filters
are applied here. If the connection is lost and not regained (``--reconnect-attempts``),
tail fails with a one-line error and exit code 7 instead of waiting forever.

The consumer is made with nats-py's public JetStream API; the store has no
subscription yet. A later version of the store gives it ``subscribe(after=position)``,
and tail will then read through the store alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import click
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from rich.text import Text

from aether.errors import InvalidEventError, StreamNotFoundError
from aether.event import Event

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
from ._stream import OpenStream, StreamRef, attach, stream_options

__all__ = ["tail"]

#: Messages asked for per pull request.
_BATCH = 256
#: How long one pull request waits on the server for new messages (then another is sent).
_PULL_WAIT = 5.0
#: The server deletes a consumer nobody has pulled from for this long (seconds).
_INACTIVE_THRESHOLD = 60.0
#: Pause before making a consumer again after a failed attempt (seconds).
_RETRY_PAUSE = 1.0


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
    reconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_disconnect(self) -> None:
        if self.up and not self.ending:
            note("lost the connection to NATS; reconnecting ...")
        self.up = False

    async def on_reconnect(self) -> None:
        self.up = True
        note("reconnected to NATS")
        self.reconnected.set()

    async def on_close(self) -> None:
        if not self.ending:
            self.closed.set()


async def _run(conn: ConnectionSettings, follow: _Follow, attempts: int) -> None:
    watch = _Connection()
    reconnects = Reconnects(attempts, watch.on_disconnect, watch.on_reconnect, watch.on_close)
    async with session(conn, name="aether-tail", reconnects=reconnects) as nc:
        try:
            opened = await attach(nc, follow.ref)
            reader = asyncio.ensure_future(_read(nc, opened, follow, watch))
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


#: A consumer could not be made or read just now (reconnecting, a leader election).
_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.ServiceUnavailableError,
)


async def _read(nc: Client, opened: OpenStream, follow: _Follow, watch: _Connection) -> None:
    """Show events until --count is reached, making a consumer again whenever needed."""
    js = nc.jetstream()
    subject = opened.store.subject_for(follow.actor) if follow.actor else opened.event_subjects
    first = True
    while not follow.done:
        watch.reconnected.clear()
        try:
            sub, consumer = await _consumer(js, opened.stream_name, subject, follow, first=first)
        except _TRANSIENT:
            await _pause_or_reconnect(watch)
            continue
        if first:
            note(
                f"listening for {'all' if follow.from_start else 'new'} events on stream "
                f"{opened.describe()} ({subject}); Ctrl-C to stop"
            )
            first = False
        try:
            await _pull(sub, opened, follow, watch)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if not follow.done and not nc.is_closed:
                # Replaced: do not leave it to the server's inactivity timer.
                with contextlib.suppress(Exception):
                    await js.delete_consumer(opened.stream_name, consumer)


async def _consumer(
    js: JetStreamContext, stream: str, subject: str, follow: _Follow, *, first: bool
) -> tuple[JetStreamContext.PullSubscription, str]:
    """A consumer starting right after ``follow.position`` (the first one: at the start
    or after the stream's last message, as asked), and its name."""
    if first:
        policy = DeliverPolicy.ALL if follow.from_start else DeliverPolicy.NEW
        start = None
    else:
        policy, start = DeliverPolicy.BY_START_SEQUENCE, follow.position + 1
    config = ConsumerConfig(
        deliver_policy=policy,
        opt_start_seq=start,
        ack_policy=AckPolicy.NONE,
        num_replicas=1,
        mem_storage=True,
        inactive_threshold=_INACTIVE_THRESHOLD,
    )
    try:
        sub = await js.pull_subscribe(subject, stream=stream, config=config)
    except nats.js.errors.NotFoundError:
        raise StreamNotFoundError(stream) from None
    try:
        info = await sub.consumer_info()
    except BaseException:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        raise
    if first and info.delivered is not None:
        # Where the first consumer starts: after the stream's last message ("new") or
        # before its first one.
        follow.position = info.delivered.stream_seq
    return sub, info.name


async def _pull(
    sub: JetStreamContext.PullSubscription, opened: OpenStream, follow: _Follow, watch: _Connection
) -> None:
    """Show what *sub* delivers until --count is reached, or until it may be gone."""
    while not follow.done:
        fetching = asyncio.ensure_future(sub.fetch(_BATCH, timeout=_PULL_WAIT))
        reconnect = asyncio.ensure_future(watch.reconnected.wait())
        try:
            await asyncio.wait({fetching, reconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reconnect.cancel()
            if not fetching.done():
                fetching.cancel()
            await asyncio.gather(fetching, reconnect, return_exceptions=True)
        if fetching.cancelled():
            return  # reconnected: the consumer may be gone; make another after position
        try:
            messages = fetching.result()
        except TimeoutError:
            continue  # nothing new (or the request was lost in a reconnect)
        except _TRANSIENT:
            return  # the consumer is gone (server restart, inactivity): make another
        except nats.js.errors.NotFoundError:
            return  # the consumer was deleted: make another (or find the stream gone)
        for msg in messages:
            _handle(msg, opened, follow)
            if follow.done:
                return


def _handle(msg: Msg, opened: OpenStream, follow: _Follow) -> None:
    sequence = msg.metadata.sequence.stream
    if sequence <= follow.position:
        return  # already shown (cannot happen with one consumer at a time; cheap to check)
    follow.position = sequence
    event = _decode(msg, opened, sequence)
    if event is not None and follow.wanted(event):
        follow.show(event)


async def _pause_or_reconnect(watch: _Connection) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watch.reconnected.wait(), _RETRY_PAUSE)


def _decode(msg: Msg, opened: OpenStream, sequence: int) -> Event | None:
    """The event in *msg*, or None (noted on stderr) if it is not a valid aether event."""
    try:
        event = Event.from_json(msg.data)
    except ValueError as exc:
        note(f"skipped malformed message at stream sequence {sequence}: {exc}")
        return None
    try:
        matches = opened.store.subject_for(event.actor_id) == msg.subject
    except InvalidEventError:
        matches = False
    if not matches:
        note(
            f"skipped message at stream sequence {sequence}: its actor "
            f"{event.actor_id!r} does not match its subject {msg.subject}"
        )
        return None
    return event
