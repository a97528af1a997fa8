"""The version cache and the per-actor locks of the JetStream store.

The cache is an accelerator only: it lets a warm ``save_event`` skip the read before the
write. It is never trusted for correctness, because every append tells the server which
subject sequence it expects to follow (see ``jetstream.py``).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What the store knows of an actor's tail.

    ``version``: the newest valid version. ``seq``: the stream sequence of the last message
    on the actor's subject (0 if none), which the next append must follow. ``event_id``:
    the id of that message's event, if it decoded, to recognise a retried save.
    """

    version: int
    seq: int
    event_id: str | None


EMPTY = CacheEntry(0, 0, None)


class VersionCache:
    """A bounded LRU map from actor id to :class:`CacheEntry`."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()

    def get(self, actor_id: str) -> CacheEntry | None:
        entry = self._entries.get(actor_id)
        if entry is not None:
            self._entries.move_to_end(actor_id)
        return entry

    def put(self, actor_id: str, entry: CacheEntry) -> None:
        self._entries[actor_id] = entry
        self._entries.move_to_end(actor_id)
        if len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def discard(self, actor_id: str) -> None:
        self._entries.pop(actor_id, None)

    def __len__(self) -> int:
        return len(self._entries)


class KeyedLocks:
    """One asyncio lock per key, kept only while someone holds or waits for it.

    ``async with locks.hold(key):`` serialises the store's read-modify-write of one actor
    within this process, so a slow read can never overwrite a newer cache entry.
    """

    def __init__(self) -> None:
        self._locks: dict[str, _HeldLock] = {}

    def hold(self, key: str) -> _HeldLock:
        held = self._locks.get(key)
        if held is None:
            held = self._locks[key] = _HeldLock(self, key)
        held.users += 1
        return held

    def __len__(self) -> int:
        return len(self._locks)


class _HeldLock:
    __slots__ = ("_key", "_lock", "_owner", "users")

    def __init__(self, owner: KeyedLocks, key: str) -> None:
        self._owner = owner
        self._key = key
        self._lock = asyncio.Lock()
        self.users = 0

    async def __aenter__(self) -> None:
        try:
            await self._lock.acquire()
        except BaseException:  # cancelled while waiting
            self._release_user()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
        self._release_user()

    def _release_user(self) -> None:
        self.users -= 1
        if self.users == 0:
            del self._owner._locks[self._key]
