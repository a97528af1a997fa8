"""``with`` and ``async with`` for the blocking start/close of server processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

__all__ = ["StartCloseContext", "enter_in_thread"]

T = TypeVar("T")


async def enter_in_thread(enter: Callable[[], T], close: Callable[[], None]) -> T:
    """``await`` the blocking ``enter()`` in a worker thread without blocking the loop.

    If the awaiting task is cancelled, the thread cannot be interrupted: ``close()``
    is then called as soon as ``enter()`` has finished, so nothing is leaked.
    """
    task = asyncio.ensure_future(asyncio.to_thread(enter))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def _cleanup(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                close()

        task.add_done_callback(_cleanup)
        raise


class StartCloseContext:
    """Context-manager protocol for objects with blocking ``start()`` and ``close()``.

    ``__enter__`` closes again if ``start()`` fails half-way; the async forms run the
    blocking calls in a worker thread so an event loop is never blocked.
    """

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await enter_in_thread(self.__enter__, self.close)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)
