"""Time limits on provider requests without a timer per request.

aiohttp's `ClientTimeout(total=...)`, like `asyncio.timeout`, puts a timer on the event loop's
heap for every request and takes it off again: at fan-out rates that cost 20-25 µs of the
worker's CPU per send (`bench/profiles/fanout-sender-pool.txt`). Here a request only notes its
task and deadline in a dict; one watchdog per provider looks every `tick` seconds and cancels
the requests past their deadline, which then raise TimeoutError, as `asyncio.timeout` does. A
request may so run up to `tick` longer than its limit."""

import asyncio
from types import TracebackType


class Deadlines:
    def __init__(self, seconds: float, tick: float = 0.5) -> None:
        self.seconds = seconds
        self.tick = min(tick, seconds / 2)
        self._open: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def guard(self) -> "_Guard":
        """`async with deadlines.guard():` the block raises TimeoutError past the limit (one
        guard at a time per task)."""
        return _Guard(self)

    def _enter(self) -> asyncio.Task[object]:
        task = asyncio.current_task()
        assert task is not None, "a deadline guards a task"
        loop = task.get_loop()
        if self._watchdog is None or self._watchdog.get_loop() is not loop:
            self._watchdog = loop.create_task(self._watch())
        self._open[task] = loop.time() + self.seconds
        return task

    def _exit(self, task: asyncio.Task[object], cancelled: bool) -> bool:
        """True when the block's CancelledError was ours: it becomes a TimeoutError."""
        del self._open[task]
        if task not in self._expired:
            return False
        self._expired.discard(task)
        # The watchdog's cancel is taken back (even if the block swallowed it); a cancel from
        # elsewhere stays, and its CancelledError goes on.
        return task.uncancel() == 0 and cancelled

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            for task, deadline in list(self._open.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def aclose(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.get_loop() is asyncio.get_running_loop():
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)


class _Guard:
    __slots__ = ("_deadlines", "_task")

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines

    async def __aenter__(self) -> None:
        self._task = self._deadlines._enter()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cancelled = kind is not None and issubclass(kind, asyncio.CancelledError)
        if self._deadlines._exit(self._task, cancelled):
            raise TimeoutError(f"no answer within {self._deadlines.seconds:g} s") from exc
