"""Fault injection for tests: a real broker, with the client's replies dropped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors

from aether.store import JetStreamEventStore


def lose_acks(
    store: JetStreamEventStore, times: int, after_landing: Callable[[], Awaitable[None]] | None
) -> list[str]:
    """Make the next *times* publishes to the event stream land but time out."""
    nc = store._nc
    real_request = nc.request
    lost: list[str] = []

    async def request(subject: str, payload: bytes = b"", **kwargs: Any) -> Any:
        if subject.startswith(store._event_prefix) and len(lost) < times:
            lost.append(subject)
            await nc.publish(subject, payload, headers=kwargs.get("headers"))
            await nc.flush()  # it reached the server ...
            if after_landing is not None:
                await after_landing()
            raise nats.errors.TimeoutError  # ... but the writer never hears back
        return await real_request(subject, payload, **kwargs)

    nc.request = request  # type: ignore[method-assign]
    return lost
