"""Writers that keep appending while a fault test breaks things, and the audit after.

Each writer is the only writer of its actor, so any :class:`VersionConflictError` it
meets is spurious: the store told it that its own event conflicted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aether import Event, VersionConflictError
from aether.store import JetStreamEventStore


@dataclass
class Writer:
    store: JetStreamEventStore
    actor: str
    acked: list[Event] = field(default_factory=list)
    #: events whose save raised something else than a conflict (outcome unknown)
    failed: list[tuple[Event, BaseException]] = field(default_factory=list)
    spurious_conflicts: int = 0

    async def run(self, stop: asyncio.Event, *, stop_on_error: bool = True) -> None:
        """Append versions 1, 2, 3, ... until *stop* is set."""
        while not stop.is_set():
            event = Event(
                event_type="Deposited",
                actor_id=self.actor,
                version=len(self.acked) + 1,
                data={"n": len(self.acked) + 1},
            )
            try:
                await self.store.save_event(event)
            except VersionConflictError:
                self.spurious_conflicts += 1
                return
            except Exception as exc:
                self.failed.append((event, exc))
                if stop_on_error:
                    return
                continue
            self.acked.append(event)


async def wait_for_progress(writers: Sequence[Writer], events: int, guard: float = 90) -> None:
    """Wait until every writer has had *events* more events acknowledged.

    *guard* (seconds) only guards against a hang (the failure says who is stuck): it is not a
    speed assertion.
    """
    targets = [len(w.acked) + events for w in writers]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + guard
    while True:
        behind = [w.actor for w, t in zip(writers, targets, strict=True) if len(w.acked) < t]
        if not behind:
            return
        errors = [f"{w.actor}: {exc!r}" for w in writers for _, exc in w.failed]
        if errors or loop.time() > deadline:
            raise AssertionError(f"writers made no progress: behind={behind} errors={errors}")
        await asyncio.sleep(0.05)


@dataclass
class Audit:
    written: int
    stored: int
    lost: int
    duplicates: int
    spurious_conflicts: int
    retries: int


async def audit(reader: JetStreamEventStore, writers: Sequence[Writer]) -> Audit:
    """Compare what each writer was told with what the server holds.

    Every acknowledged event must be stored exactly once, in order, with versions
    1..n; an event whose save raised may be stored (unknown outcome), but only after
    every acknowledged one and at most once.
    """
    lost = duplicates = stored = 0
    for writer in writers:
        events = await reader.get_events(writer.actor)
        stored += len(events)
        ids = [e.id for e in events]
        duplicates += len(ids) - len(set(ids))
        acked = [e.id for e in writer.acked]
        lost += len(set(acked) - set(ids))
        unknown = {e.id for e, _ in writer.failed}
        assert ids[: len(acked)] == acked, f"{writer.actor}: history differs from the acks"
        assert set(ids[len(acked) :]) <= unknown, f"{writer.actor}: events nobody saved"
        assert [e.version for e in events] == list(range(1, len(events) + 1))
    stores = {id(w.store): w.store for w in writers}.values()
    return Audit(
        written=sum(len(w.acked) for w in writers),
        stored=stored,
        lost=lost,
        duplicates=duplicates,
        spurious_conflicts=sum(w.spurious_conflicts for w in writers),
        retries=sum(s.stats.retries for s in stores),
    )
