"""Coalesces status events into few signals: after each commit the API marks the push (and its
app); every interval it signals each marked journey once with the ledger's absolute counts, and
wakes each marked app's callback forwarder. A sweep re-wakes every forwarder with work waiting,
so a wake lost to a crash costs delay, never a callback.

No journey gets more than one signal per second, whatever the interval: a journey signalled
less than MIN_SIGNAL_GAP_SECONDS ago stays marked until its gap has passed (Temporal advises
under ~5 signals per second per workflow; the interval only sets how soon the first one goes).

A signal also carries the push's per-stage counts (the live funnel of the journey's "current
details"). That read grows with the push, so a journey gets it at most once per
recipients / STAGE_READ_RECIPIENTS_PER_SECOND seconds (every signal up to 50,000 recipients,
every 20 s at a million); a signal that goes without it leaves the journey due one more, with
it, once that time has passed, so the last events' per-stage counts always arrive."""

import asyncio
import logging
import math
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine
from temporalio.client import Client

from api.journeys import workflow_id
from relance import ledger, metrics
from relance.forwarding import wake_forwarder
from relance.ledger import outbox

log = logging.getLogger("relance.api.signals")

MIN_SIGNAL_GAP_SECONDS = 1.0
STAGE_READ_RECIPIENTS_PER_SECOND = 50_000


class SignalCoalescer:
    def __init__(
        self,
        engine: Engine,
        interval: float,
        task_queue: str,
        sweep_seconds: float = 30,
        clock: Callable[[], float] = time.monotonic,
        stage_read_rate: float = STAGE_READ_RECIPIENTS_PER_SECOND,
    ) -> None:
        self.stage_read_rate = stage_read_rate
        self.engine = engine
        self.clock = clock
        self.interval = interval
        self.task_queue = task_queue
        self.sweep_seconds = sweep_seconds
        self.client: Client | None = None
        self._dirty: set[str] = set()
        self._apps: set[str] = set()
        # When each journey's last signal was sent (after the send: the gap is measured from
        # its arrival at the latest); forgotten once the gap has passed.
        self._last: dict[str, float] = {}
        # When each journey's per-stage counts were last read; and, for those whose last signal
        # went without them, when they may be read next.
        self._stages_read: dict[str, float] = {}
        self._stages_due: dict[str, float] = {}

    def mark(self, msg_ids: set[str]) -> None:
        self._dirty |= msg_ids

    def wake_app(self, app_key: str) -> None:
        self._apps.add(app_key)

    async def flush(self) -> None:
        if self.client is None:
            return
        now = self.clock()
        self._last = {m: t for m, t in self._last.items() if now - t < MIN_SIGNAL_GAP_SECONDS}
        # Forgotten after 10 minutes: then the next signal reads them at once.
        self._stages_read = {m: t for m, t in self._stages_read.items() if now - t < 600}
        due = {m for m, t in self._stages_due.items() if t <= now}
        for m in due:
            del self._stages_due[m]
        self._dirty |= due
        batch = {m for m in self._dirty if m not in self._last}
        self._dirty -= batch
        apps, self._apps = self._apps, set()
        await asyncio.gather(*(self._signal(m) for m in batch), *(self._wake(a) for a in apps))

    async def sweep(self) -> None:
        for app_key in await asyncio.to_thread(outbox.apps_with_work, self.engine):
            self.wake_app(app_key)

    async def _wake(self, app_key: str) -> None:
        assert self.client is not None
        try:
            await wake_forwarder(self.client, self.task_queue, app_key)
        except Exception as exc:  # noqa: BLE001 — the sweep wakes it again
            self._apps.add(app_key)
            log.info("callback forwarder of %s not woken: %s", app_key, exc)

    async def _signal(self, msg_id: str) -> None:
        # Imported here: workflows import relance models, and the API imports only the handle.
        from workflows.push_journey import PushJourney

        assert self.client is not None
        read = self._stages_read.get(msg_id)
        now = self.clock()
        budget = math.inf if read is None else (now - read) * self.stage_read_rate
        progress = await asyncio.to_thread(ledger.progress, self.engine, msg_id, budget)
        if progress.recipients <= budget:  # read (the ledger's own test)
            self._stages_read[msg_id] = now
            self._stages_due.pop(msg_id, None)
        elif read is not None:
            self._stages_due[msg_id] = read + progress.recipients / self.stage_read_rate
        try:
            await self.client.get_workflow_handle(workflow_id(msg_id)).signal(
                PushJourney.record_progress, progress
            )
            metrics.count_signal(sent=True)
        except Exception as exc:  # noqa: BLE001 — a lost signal costs freshness, never correctness
            metrics.count_signal(sent=False)
            log.info("signal to push-%s not delivered: %s", msg_id, exc)
        finally:
            self._last[msg_id] = self.clock()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()  # at start: recover the wakes a previous process lost
        while True:
            try:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.sweep_seconds
                    await self.sweep()
                await self.flush()
            except Exception:  # noqa: BLE001
                log.exception("signal flush failed")
            await asyncio.sleep(self.interval)
