"""The snapshot stream: one snapshot per actor, never replaced by an older one.

A store's snapshots live in ``<stream>_snapshots`` (one message per subject,
``max_msgs_per_subject=1``), at ``<stream>.snapshots.<encoded actor id>``. Storing is a
compare-and-set on the subject's last sequence (``Nats-Expected-Last-Subject-Sequence``),
so concurrent writers in any process never replace a newer snapshot with an older one.

A snapshot also carries, in its ``Aether-Event-Seq`` header, the stream sequence of its
version's event in the events stream. Reading a snapshot remembers that position (a
:class:`~aether.store._seek.Mark`), so that replaying the events after it starts there
instead of searching; the seek checks a mark before using it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aether.event import ActorSnapshot
from aether.store import _rules
from aether.store._cache import CacheEntry, VersionCache
from aether.store._jsapi import (
    WRONG_LAST_SEQUENCE,
    WRONG_LAST_SEQUENCE_IN_FLIGHT,
    JsApi,
    StoredMsg,
    raise_for_error,
)
from aether.store._seek import Mark
from aether.store._subjects import encode_actor_id

__all__ = ["SnapshotStream", "pause_if_in_flight"]

_EVENT_SEQ_HEADER = "Aether-Event-Seq"
#: Snapshot positions remembered at most (fewer if the version cache is smaller).
_MAX_MARKS = 10_000
# How long to let an in-flight write to the same subject commit (clustered streams).
_IN_FLIGHT_PAUSE = 0.005

#: Finds the events-stream sequence of (actor id, version), or None.
EventSeqOf = Callable[[str, int], Awaitable[int | None]]


class SnapshotStream:
    """The snapshots of the store whose events stream is *events_stream*, kept in
    *stream*, and the snapshot positions learnt from reading them."""

    def __init__(self, api: JsApi, stream: str, events_stream: str, cache_size: int) -> None:
        self._api = api
        self.stream = stream
        self._prefix = f"{events_stream}.snapshots."
        self._marks = VersionCache(min(cache_size, _MAX_MARKS))

    def mark(self, actor_id: str) -> Mark | None:
        """Where the actor's last read snapshot's event sits, if known (a hint)."""
        entry = self._marks.get(actor_id)
        return None if entry is None else Mark(entry.version, entry.seq)

    def forget_mark(self, actor_id: str) -> None:
        self._marks.discard(actor_id)

    def forget_marks(self) -> None:
        """Forget every position: the events stream was recreated, sequences restart."""
        self._marks.clear()

    async def save(self, encoded: _rules.EncodedSnapshot, event_seq_of: EventSeqOf) -> None:
        """Store *encoded* unless the stored snapshot is as new or newer (see the module
        docstring). *event_seq_of* finds the position of the snapshot's event: asked
        once, and only if the snapshot is newer than the stored one."""
        subject = self._prefix + encode_actor_id(encoded.actor_id)
        mark: dict[str, str] | None = None
        while True:
            current = await self._api.last_msg(self.stream, subject)
            if current is not None:
                stored = _decode(current, encoded.actor_id)
                if stored is not None and stored.version >= encoded.version:
                    return
            if mark is None:
                seq = await event_seq_of(encoded.actor_id, encoded.version)
                mark = {} if seq is None else {_EVENT_SEQ_HEADER: str(seq)}
            headers = {
                "Nats-Expected-Last-Subject-Sequence": str(current.seq if current else 0),
                **mark,
            }
            answer, _ = await self._api.request(
                subject, encoded.payload, headers, stream=self.stream
            )
            error = answer.get("error")
            if error is None:
                return
            code = error.get("err_code")
            if code not in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
                raise_for_error(answer, self.stream)
            # Another writer stored a snapshot meanwhile: compare against it.
            await pause_if_in_flight(code)

    async def latest(self, actor_id: str) -> ActorSnapshot | None:
        """The actor's snapshot, or None (also if the stored one is malformed or another
        actor's); remembers the position of its event if it carries one."""
        current = await self._api.last_msg(self.stream, self._prefix + encode_actor_id(actor_id))
        snapshot = None if current is None else _decode(current, actor_id)
        seq = None if current is None else current.header(_EVENT_SEQ_HEADER)
        if snapshot is not None and seq is not None and seq.isdigit():
            self._marks.put(actor_id, CacheEntry(snapshot.version, int(seq), None))
        return snapshot


async def pause_if_in_flight(err_code: int) -> None:
    """A clustered leader refuses a write while another to the same subject is in flight;
    give that write a moment to commit before reading the tail again."""
    if err_code == WRONG_LAST_SEQUENCE_IN_FLIGHT:
        await asyncio.sleep(_IN_FLIGHT_PAUSE)


def _decode(msg: StoredMsg, actor_id: str) -> ActorSnapshot | None:
    # None for a malformed snapshot, or one of another actor (a foreign writer's).
    try:
        snapshot = _rules.decode_snapshot(msg.data)
    except ValueError:
        return None
    return snapshot if snapshot.actor_id == actor_id else None
