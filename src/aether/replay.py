"""Results of replaying an actor's history when some stored messages are malformed."""

from __future__ import annotations

from dataclasses import dataclass, field

from aether.event import Event


@dataclass(frozen=True)
class ReplayError:
    """A stored message that could not be decoded as an event.

    ``sequence_number`` is its position in the store (the JetStream stream sequence, as
    ``Event.position``), ``raw_data`` its bytes, ``error`` why decoding failed.
    """

    sequence_number: int
    raw_data: bytes
    error: Exception

    def __str__(self) -> str:
        return f"message {self.sequence_number}: {self.error}"


@dataclass
class ReplayResult:
    """The decodable events of a replay, in version order, and one error per bad message."""

    events: list[Event] = field(default_factory=list)
    errors: list[ReplayError] = field(default_factory=list)

    def add(self, item: Event | ReplayError) -> None:
        """Append *item* to :attr:`events` or :attr:`errors`, by its kind."""
        if isinstance(item, ReplayError):
            self.errors.append(item)
        else:
            self.events.append(item)

    @property
    def has_errors(self) -> bool:
        """True if any stored message could not be decoded."""
        return bool(self.errors)
