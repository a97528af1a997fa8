"""Fault injection for tests: a real broker, with the client's replies dropped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors

from aether.store import JetStreamEventStore


class AckDropper:
    """Make the store's next appends reach the server but lose their acknowledgement.

    What a cut connection or a timeout looks like to a writer: the message is stored,
    the writer never hears back. ``drop_next(n)`` arms it for *n* appends; ``dropped``
    counts the acknowledgements lost so far (assert on it: the fault must happen).
    """

    def __init__(
        self, store: JetStreamEventStore, after_landing: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.dropped = 0
        self._remaining = 0
        self._prefix = store.subject_for("x")[:-1]  # the stream's event subjects
        nc = store._nc
        real_request = nc.request

        async def request(subject: str, payload: bytes = b"", **kwargs: Any) -> Any:
            if subject.startswith(self._prefix) and self._remaining > 0:
                self._remaining -= 1
                await nc.publish(subject, payload, headers=kwargs.get("headers"))
                await nc.flush()  # it reached the server ...
                self.dropped += 1
                if after_landing is not None:
                    await after_landing()
                raise nats.errors.TimeoutError  # ... but the writer never hears back
            return await real_request(subject, payload, **kwargs)

        nc.request = request  # type: ignore[method-assign]

    def drop_next(self, n: int) -> None:
        self._remaining = n
