"""Long-running commands (``tail``, ``server``) stop cleanly on Ctrl-C and SIGTERM.

Ctrl-C is how a user ends them, not an accident, so it ends them with exit code 0 after
their cleanup, with no "Aborted!" and no traceback. SIGTERM (a service manager, ``kill``)
does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Coroutine, Iterator
from types import FrameType
from typing import Any, TypeVar

__all__ = ["STOP_SIGNALS", "run_until_signalled", "stop_event_on_signals"]

_T = TypeVar("_T")
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM) + (
    (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
)


async def run_until_signalled(work: Coroutine[Any, Any, _T]) -> _T | None:
    """Await *work* until it finishes or a stop signal arrives (then cancel it: None).

    Outside the main thread (where signal handlers cannot be set) it simply awaits *work*.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(sig)
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()


@contextlib.contextmanager
def stop_event_on_signals() -> Iterator[threading.Event]:
    """For blocking code: an event set by the stop signals while the block runs."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
