"""A fixed pool of sender tasks: up to `size` messages in flight across every batch handed to
it, each sender pulling the next message from one queue.

The obvious shape, one task per message behind a semaphore, cost the fan-out profile about
50 µs of the worker's CPU per send (a task, a gather slot and a semaphore waiter per message,
with four pipelined pages of 100 queued behind 50 slots) and a sixth of its throughput
against the same aiohttp requests sent by 50 long-lived coroutines (`bench/bench_fanout.py`,
README "Where the time went")."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
CLOSED = "the provider was closed mid-send"


class _Batch(Generic[T, R]):
    __slots__ = ("items", "results", "left", "done", "abandoned")

    def __init__(self, items: Sequence[T], done: "asyncio.Future[list[R]]") -> None:
        self.items = items
        self.results: list[R | None] = [None] * len(items)
        self.left = len(items)
        self.done = done
        self.abandoned = False


class SendPool(Generic[T, R]):
    """Run `deliver` over batches, at most `size` calls at once in all; results in order.

    A batch whose caller is cancelled is abandoned: its messages not yet started are dropped
    (those in flight finish, their outcome unrecorded, as after a crash mid-send). An
    exception from `deliver` fails its batch, as `asyncio.gather` would."""

    def __init__(self, size: int, deliver: Callable[[T], Awaitable[R]]) -> None:
        self._size = size
        self._deliver = deliver
        self._queue: asyncio.Queue[tuple[_Batch[T, R], int]] | None = None
        self._senders: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, items: Sequence[T]) -> list[R]:
        if not items:
            return []
        queue = self._started()
        batch: _Batch[T, R] = _Batch(items, asyncio.get_running_loop().create_future())
        for i in range(len(items)):
            queue.put_nowait((batch, i))
        try:
            return await batch.done
        except asyncio.CancelledError:
            batch.abandoned = True
            raise

    def _started(self) -> "asyncio.Queue[tuple[_Batch[T, R], int]]":
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._senders = [loop.create_task(self._sender(self._queue)) for _ in range(self._size)]
        return self._queue

    async def _sender(self, queue: "asyncio.Queue[tuple[_Batch[T, R], int]]") -> None:
        while True:
            batch, i = await queue.get()
            if batch.abandoned or batch.done.done():
                continue
            try:
                result = await self._deliver(batch.items[i])
            except asyncio.CancelledError:  # the pool is closing: release the batch's caller
                if not batch.done.done():
                    batch.done.set_exception(RuntimeError(CLOSED))
                raise
            except Exception as exc:  # noqa: BLE001 — handed to the batch's caller
                if not batch.done.done():
                    batch.done.set_exception(exc)
                continue
            batch.results[i] = result
            batch.left -= 1
            if batch.left == 0 and not batch.done.done():
                batch.done.set_result(batch.results)  # type: ignore[arg-type]  # all set

    async def aclose(self) -> None:
        senders, queue = self._senders, self._queue
        self._senders, self._queue = [], None
        while queue is not None and not queue.empty():  # nobody left to send these
            batch, _ = queue.get_nowait()
            if not batch.done.done():
                batch.done.set_exception(RuntimeError(CLOSED))
        for task in senders:
            task.cancel()
        if senders and self._loop is asyncio.get_running_loop():
            await asyncio.gather(*senders, return_exceptions=True)
