"""Stopping asyncio tasks for good.

A task may swallow the cancellation meant to stop it: on Python 3.11,
``asyncio.wait_for`` (which nats-py's requests use) drops a cancellation that arrives as
the awaited answer completes, and the task's loop goes on. Cancelling once and awaiting
the task would then wait forever, so :func:`stop` cancels again until the task ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["stop"]

#: Seconds after which a task asked to stop but still running is cancelled again.
RECANCEL_EVERY = 0.1


async def stop(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel *tasks* and wait until every one has ended; their errors are dropped
    (retrieved, so asyncio does not log them). The caller's own cancellation is never
    suppressed: ``asyncio.wait`` raises it."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY)
    for task in tasks:
        if not task.cancelled():
            task.exception()
