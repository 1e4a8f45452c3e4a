"""Requests that arrive together, handled together: one call for what one turn of the event loop
brought in.

The server reads every connection that is ready in one turn of the loop and starts a task for
each request; those submitted before the loop's next turn are handed to one call of the
handler, which answers each of them. The handler can then do every step for all of them before
the next step (app/services/intake.receive_postbacks), and queue all their events at once. No
request waits for others to come: a batch is what is already there.

Domain-free: items in, one result (or exception) per item out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Handler = Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]]


class Gatherer(Generic[T, R]):
    def __init__(self, handle: Handler[T, R], loop: asyncio.AbstractEventLoop) -> None:
        self._handle = handle
        self._loop = loop
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        self._running: set[asyncio.Task[None]] = set()  # kept: the loop holds tasks weakly

    def submit(self, item: T) -> asyncio.Future[R]:
        """The item's result, once its batch is handled (an exception of the handler for this
        item is raised by the future)."""
        if not self._items:
            # After the tasks already scheduled in this turn: they submit into the same batch.
            self._loop.call_soon(self._start)
        self._items.append(item)
        future: asyncio.Future[R] = self._loop.create_future()
        self._futures.append(future)
        return future

    def _start(self) -> None:
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        task = self._loop.create_task(self._run(items, futures))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, items: list[T], futures: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._handle(items)
        except Exception as exc:
            # A bug of the handler's, not of one item: every item of the batch gets it (each
            # request answers 500 and is logged), and later batches are handled as usual.
            log.exception("batch handler failed", extra={"n": len(items)})
            results = [exc] * len(items)
        for future, result in zip(futures, results, strict=True):
            if future.done():  # its request was cancelled (the client went away)
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
