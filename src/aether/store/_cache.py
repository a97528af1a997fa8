"""The version cache and the per-actor locks of the JetStream store.

The cache is an accelerator only: it lets a warm ``save_event`` skip the read before the
write. It is never trusted for correctness, because every append tells the server which
subject sequence it expects to follow (see ``jetstream.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What the store knows of an actor's tail.

    ``version``: the version of the newest valid event. ``seq``: the stream sequence of
    the last message on the actor's subject (0 if none), which the next append must
    follow. ``event_id``: the id of that newest valid event (None if there is none), to
    recognise a re-saved event. ``event_seq``: the newest valid event's own sequence when
    malformed messages (a foreign writer's) follow it; None when it is ``seq`` itself.
    """

    version: int
    seq: int
    event_id: str | None
    event_seq: int | None = None

    @property
    def last_event_seq(self) -> int:
        """The stream sequence of the newest valid event."""
        return self.seq if self.event_seq is None else self.event_seq


EMPTY = CacheEntry(0, 0, None)


class VersionCache:
    """A bounded LRU map from actor id to :class:`CacheEntry`."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        #: bumped by :meth:`clear`; a put of a value learnt before a clear is ignored
        self.generation = 0

    def get(self, actor_id: str) -> CacheEntry | None:
        entry = self._entries.get(actor_id)
        if entry is not None:
            self._entries.move_to_end(actor_id)
        return entry

    def put(self, actor_id: str, entry: CacheEntry, generation: int | None = None) -> None:
        """Cache *entry*; if *generation* is given and the cache was cleared since (the
        entry was learnt in an older incarnation of the stream), do nothing."""
        if generation is not None and generation != self.generation:
            return
        self._entries[actor_id] = entry
        self._entries.move_to_end(actor_id)
        if len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def put_read(
        self,
        actor_id: str,
        entry: CacheEntry,
        before: CacheEntry | None,
        generation: int | None = None,
    ) -> None:
        """Put *entry*, read from the server without the actor's lock; *before* is what
        the cache held when the read began.

        If nothing changed meanwhile, the read is the truth and replaces the entry even if
        it went backwards (an operator purged the subject). If a write of this store
        replaced the entry meanwhile, the read may have been overtaken by that write: the
        entry of the later message (higher ``seq``) wins.
        """
        current = self._entries.get(actor_id)
        if current is not before and current is not None and current.seq > entry.seq:
            entry = current
        self.put(actor_id, entry, generation)

    def discard(self, actor_id: str) -> None:
        self._entries.pop(actor_id, None)

    def clear(self) -> None:
        """Forget every entry (the stream was recreated: its sequences mean nothing now)."""
        self._entries.clear()
        self.generation += 1

    def __len__(self) -> int:
        return len(self._entries)


class KeyedLocks:
    """One FIFO lock per key, costing nothing but a dict entry while uncontended.

    ``await locks.acquire(key)`` / ``locks.release(key)`` serialise the store's
    appends to one actor within this process, so they reach the server one after another
    with the latest known tail instead of racing each other. Only waiters get a future;
    the lock passes straight to the next waiter on release.
    """

    def __init__(self) -> None:
        # key -> waiters (None while held with nobody waiting); absent means free
        self._held: dict[str, deque[asyncio.Future[None]] | None] = {}

    async def acquire(self, key: str) -> None:
        if key not in self._held:
            self._held[key] = None
            return
        waiters = self._held[key]
        if waiters is None:
            waiters = self._held[key] = deque()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(key)  # the lock was handed to us as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(future)
            raise

    def release(self, key: str) -> None:
        waiters = self._held[key]
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)  # ownership passes to this waiter
                return
        del self._held[key]

    def __len__(self) -> int:
        return len(self._held)
