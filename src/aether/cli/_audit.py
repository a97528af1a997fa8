"""The demo's audit: what was acknowledged must be exactly what is stored.

Reading happens through a fresh store (no cache, nothing shared with the writers); the
check itself is a pure function of what was read and what the writers reported, so its
verdict does not depend on any writer's view of the world.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aether.event import Event
from aether.replay import ReplayResult
from aether.store import JetStreamEventStore

from ._demo_writer import Ack

_MAX_EXAMPLES = 3


@dataclass
class AuditResult:
    """The verdict. ``problems`` is empty exactly when the audit passes.

    ``read`` is False when the events could not be read back (the counts are then zero).
    """

    read: bool = False
    problems: list[str] = field(default_factory=list)
    final_versions: dict[str, int] = field(default_factory=dict)
    stored: int = 0
    acknowledged: int = 0
    unknown: int = 0
    unknown_stored: int = 0

    @property
    def passed(self) -> bool:
        return not self.problems


async def read_back(store: JetStreamEventStore, accounts: Iterable[str]) -> dict[str, ReplayResult]:
    """Every account's full history, malformed messages included."""
    return {account: await store.get_events_with_errors(account) for account in accounts}


def check(
    histories: Mapping[str, ReplayResult], acked: Iterable[Ack], unknown: Iterable[Ack]
) -> AuditResult:
    """Audit *histories* against the writers' reports.

    Passes when every acknowledged event is stored exactly once (by id) with the account
    and version it was acknowledged with, each account's versions are exactly 1..N, and
    every stored event was acknowledged, or had an unknown outcome (reported apart).
    """
    acked_by_id = {ack.event_id: ack for ack in acked}
    unknown_by_id = {ack.event_id: ack for ack in unknown}
    result = AuditResult(read=True, acknowledged=len(acked_by_id), unknown=len(unknown_by_id))
    problems = result.problems
    seen: Counter[str] = Counter()
    mismatched: list[str] = []
    unacknowledged: list[str] = []
    for account, history in histories.items():
        events = history.events
        result.stored += len(events)
        result.final_versions[account] = max((e.version for e in events), default=0)
        if history.has_errors:
            problems.append(f"{account}: {len(history.errors)} malformed message(s)")
        version_problem = _check_versions(account, events)
        if version_problem:
            problems.append(version_problem)
        for event in events:
            seen[event.id] += 1
            ack = acked_by_id.get(event.id)
            if ack is not None:
                if (ack.account, ack.version) != (account, event.version):
                    mismatched.append(
                        f"{event.id} stored as {account} v{event.version}, "
                        f"acknowledged as {ack.account} v{ack.version}"
                    )
            elif event.id in unknown_by_id:
                result.unknown_stored += 1
            else:
                unacknowledged.append(f"{account} v{event.version}")
    duplicates = sorted(event_id for event_id, count in seen.items() if count > 1)
    missing = [event_id for event_id in acked_by_id if not seen[event_id]]
    _add(problems, "acknowledged event(s) missing", missing)
    _add(problems, "event id(s) stored more than once", duplicates)
    _add(problems, "event(s) stored with another account/version than acknowledged", mismatched)
    _add(problems, "event(s) stored that nobody acknowledged", unacknowledged)
    return result


def _check_versions(account: str, events: Sequence[Event]) -> str | None:
    versions = [event.version for event in events]
    if versions == list(range(1, len(versions) + 1)):
        return None
    counts = Counter(versions)
    duplicated = sorted(v for v, n in counts.items() if n > 1)
    top = max(versions)
    gaps = [v for v in range(1, top + 1) if v not in counts]
    details = []
    if duplicated:
        details.append(f"duplicate versions {_examples([str(v) for v in duplicated])}")
    if gaps:
        details.append(f"missing versions {_examples([str(v) for v in gaps])}")
    if not details:
        details.append("versions out of order")
    return f"{account}: " + ", ".join(details)


def _add(problems: list[str], what: str, items: Sequence[str]) -> None:
    if items:
        problems.append(f"{len(items)} {what} ({_examples(items)})")


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_EXAMPLES])
    return shown + (", ..." if len(items) > _MAX_EXAMPLES else "")
