"""Cancelling a task blocked in a replay's wait for messages is never lost.

On Python 3.11 ``asyncio.wait_for`` returns normally when the wait it guards completes in
the same loop iteration as the cancellation of the task awaiting it: the cancellation is
dropped and the task goes on. The test cancels the replaying task exactly when a message
wakes its wait (the fault), and checks the task ends cancelled.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from aether.store import JetStreamConfig, _replay

from ._stores import StoreFactory, ev

GUARD = 60.0  # seconds; only turns a hang into a failure


async def test_a_cancel_that_comes_with_a_message_ends_the_replay(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The consumer's wait is what is tested: no direct gets.
    js_store = await open_store(config=JetStreamConfig(direct_get=False))
    await js_store.save_events([ev("acc", v) for v in range(1, 51)])
    armed: list[asyncio.Task[Any]] = []
    fired: list[bool] = []

    class CancellingEvent(asyncio.Event):
        def set(self) -> None:
            super().set()
            # The replaying task is blocked in wait() now: cancel it in this very
            # iteration, as its wait completes.
            if armed and self._waiters and not fired:  # type: ignore[attr-defined]
                fired.append(True)
                armed[0].cancel()

    proxy = types.SimpleNamespace(**{k: getattr(asyncio, k) for k in dir(asyncio)})
    proxy.Event = CancellingEvent
    monkeypatch.setattr(_replay, "asyncio", proxy)

    task = asyncio.create_task(js_store.get_events("acc"))
    armed.append(task)
    done, _ = await asyncio.wait([task], timeout=GUARD)
    assert fired  # the fault: the cancel came as a message woke the wait
    assert done and task.cancelled()
