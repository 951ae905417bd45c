"""Results fan-out shared by the session types: `stream()` (an async iterator) and
`on_result(callback)` (sync or async callbacks, called in order on the SDK's own task)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("hearsay_client")

T = TypeVar("T")
Callback = Callable[[T], Awaitable[None] | None]


class _End:
    """Marks the end of the results."""


_END = _End()


class ResultFeed(Generic[T]):
    """Every result goes to the `stream()` iterator and to each callback, in order."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[T | BaseException | _End] = asyncio.Queue()
        self._callbacks: list[Callback[T]] = []
        self._pending: asyncio.Queue[T | _End] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._ended = False

    def add_callback(self, callback: Callback[T]) -> None:
        self._callbacks.append(callback)
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name="hearsay-callbacks")

    def publish(self, item: T) -> None:
        if self._ended:
            return
        self._queue.put_nowait(item)
        if self._callbacks:
            self._pending.put_nowait(item)

    def end(self, error: BaseException | None = None) -> None:
        """No more results; `stream()` raises `error` (if any) after the last one."""
        if self._ended:
            return
        self._ended = True
        if error is not None:
            self._queue.put_nowait(error)
        self._queue.put_nowait(_END)
        self._pending.put_nowait(_END)

    async def stream(self) -> AsyncIterator[T]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                self._queue.put_nowait(item)  # a later stream() ends at once too
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def drain(self) -> None:
        """Wait until the callbacks have seen every result (after `end()`)."""
        if self._dispatcher is not None:
            await asyncio.shield(self._dispatcher)

    async def aclose(self) -> None:
        self.end()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher

    async def _dispatch(self) -> None:
        while True:
            item = await self._pending.get()
            if isinstance(item, _End):
                return
            for callback in list(self._callbacks):
                try:
                    outcome = callback(item)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    log.exception("a result callback failed")
