"""``aether append``: store one event through ``JetStreamEventStore.save_event``.

The version rules are the store's: the version must be greater than the actor's latest
(checked by the server), else exit code 4 with the actor's current version. Without
``--version`` the event gets the latest version + 1; if another writer appends in
between, it is retried with the new latest (a few times), as an application would.
The stream must exist unless ``--create`` is given, so a typo in ``--stream`` cannot
create a stream by accident.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from typing import Any

import click

from aether.errors import StoreUnavailableError, VersionConflictError
from aether.event import Event
from aether.store import JetStreamEventStore

from ._connect import ConnectionSettings, connection_options, session
from ._errors import InvalidInputError, UnavailableError
from ._output import echo_json, note
from ._stream import StreamRef, attach, stream_options

__all__ = ["append", "parse_data"]

_ATTEMPTS = 5


@click.command()
@click.argument("actor")
@click.argument("event_type", metavar="TYPE")
@click.option(
    "--data",
    "-d",
    default="{}",
    show_default=True,
    metavar="JSON",
    help="The event's data: a JSON object ('-' reads it from stdin).",
)
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="The event's version; must exceed the actor's latest [default: latest + 1].",
)
@click.option(
    "--metadata",
    "-m",
    multiple=True,
    metavar="KEY=VALUE",
    help="A metadata entry (repeat for several), e.g. correlationId=abc.",
)
@click.option("--command-id", metavar="ID", default=None, help="The triggering command's id.")
@stream_options()
@click.option("--create", is_flag=True, help="Create the stream if it does not exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored event as JSON.")
@connection_options
def append(
    conn: ConnectionSettings,
    actor: str,
    event_type: str,
    data: str,
    version: int | None,
    metadata: tuple[str, ...],
    command_id: str | None,
    ref: StreamRef,
    create: bool,
    as_json: bool,
) -> None:
    """Append one event of type TYPE to ACTOR and print the version it was stored as.

    Exit codes: 4 if --version is not greater than the actor's latest version (the
    message says which it is), 5 if --data is not a JSON object, 3 if the stream does not
    exist (see --create), 6 if the server did not answer (the event may or may not be
    stored).
    """
    event = Event(
        event_type=event_type,
        actor_id=actor,
        version=version or 1,
        data=parse_data(sys.stdin.read() if data == "-" else data),
        metadata=_parse_metadata(metadata),
        command_id=command_id,
    )
    event.to_json()  # validate before connecting (InvalidEventError: exit 5)
    stored, stream = asyncio.run(
        _append(conn, ref, event, explicit=version is not None, create=create)
    )
    if as_json:
        echo_json(stored.to_json())
    else:
        click.echo(
            f"stored {stored.event_type} as version {stored.version} of actor "
            f"{stored.actor_id!r} in stream {stream}"
        )


async def _append(
    conn: ConnectionSettings, ref: StreamRef, event: Event, *, explicit: bool, create: bool
) -> tuple[Event, str]:
    """The stored event and its stream, described for messages."""
    async with session(conn, name="aether-append") as nc:
        opened = await attach(nc, ref, create=create)
        try:
            return await _save(opened.store, event, explicit), opened.describe()
        except StoreUnavailableError as exc:
            raise UnavailableError(
                f"{exc}; the event (id {event.id}) may or may not be stored: "
                f"check with `aether events {event.actor_id}`"
            ) from None


async def _save(store: JetStreamEventStore, event: Event, explicit: bool) -> Event:
    if explicit:
        await store.save_event(event)
        return event
    for attempt in range(_ATTEMPTS):
        event = replace(event, version=await store.get_latest_version(event.actor_id) + 1)
        try:
            await store.save_event(event)
            return event
        except VersionConflictError:
            if attempt == _ATTEMPTS - 1:
                raise
            note(f"actor {event.actor_id!r} changed meanwhile; retrying with its new version")
    raise AssertionError("unreachable")


def parse_data(text: str) -> dict[str, Any]:
    """The ``--data`` JSON object; InvalidInputError (exit 5) if it is not one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"--data is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"--data must be a JSON object ({{...}}), not {_json_kind(value)}")
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _parse_metadata(items: tuple[str, ...]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--metadata must be KEY=VALUE, got {item!r}")
        metadata[key] = value
    return metadata
