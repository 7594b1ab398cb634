"""The worker's send-ahead loop (RELANCE_SEND_AHEAD): stage 0 of small pushes, sent as soon as
the API queues them, while their journeys wait in Temporal for the end of their trigger window.

Why: a push that is its own workflow costs Temporal a start, a workflow task, a local activity
marker and a timer before its first send; most of a small push's cost (README "Send ahead").
Started delayed, the journey costs one start now and its first workflow task when the window
ends, where the resend is decided. Stage 0 goes through the ledger's claims, as a journey's
send does, so a device gets it once whether this loop, another worker's, or the journey itself
(when no loop ever took the push) sends it."""

import asyncio
import logging
from datetime import timedelta

from temporalio.client import Client

from activities.journey import JourneyActivities
from relance.db import utcnow
from relance.ledger import send_ahead
from relance.settings import Settings

log = logging.getLogger("relance.worker")


class SendAheadLoop:
    def __init__(self, journey: JourneyActivities, client: Client, settings: Settings) -> None:
        self.journey, self.client, self.engine = journey, client, journey.engine
        self.task_queue = settings.task_queue
        self.poll = settings.send_ahead_poll_seconds
        self.idle_poll = max(settings.send_ahead_idle_poll_seconds, self.poll)
        self.concurrency = settings.send_ahead_concurrency
        self.lease = settings.send_ahead_lease_seconds
        self._running: dict[asyncio.Task[None], int] = {}  # a round -> its pushes

    async def run(self) -> None:
        """Until cancelled: lease due pushes (as many as there are free places) and send them
        as one round (`JourneyActivities.send_ahead`: a read, a claim and a record for the
        whole round), while earlier rounds are still with providers. While nothing comes,
        the wait between polls doubles up to `idle_poll`: a poll costs an idle worker about a
        millisecond of CPU on SQLite, 5% of a core at 50 a second."""
        wait = self.poll
        try:
            while True:
                free = self.concurrency - sum(self._running.values())
                if free <= 0:
                    await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    rows = await asyncio.to_thread(send_ahead.take, self.engine, free, self.lease)
                except Exception as exc:  # noqa: BLE001 — the ledger is away: try again soon
                    log.warning("send-ahead poll failed: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
                if not rows:
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, self.idle_poll)
                    continue
                wait = self.poll
                task = asyncio.create_task(self._round(dict(rows)))
                self._running[task] = len(rows)
                task.add_done_callback(self._forget)
        finally:
            running = list(self._running)
            for task in running:
                task.cancel()  # what is with providers is recorded; the rest is leased
            await asyncio.gather(*running, return_exceptions=True)

    def _forget(self, task: "asyncio.Task[None]") -> None:
        self._running.pop(task, None)

    async def _round(self, attempts: dict[str, int]) -> None:
        try:
            retry = await self.journey.send_ahead(attempts, self.client, self.task_queue)
        except Exception as exc:  # noqa: BLE001 — the ledger or a provider failed: again later
            log.warning("a round of %d pushes not sent ahead: %s", len(attempts), exc)
            retry = {m: float(min(2**n, 60)) for m, n in attempts.items()}
        for msg_id, seconds in retry.items():
            try:
                at = utcnow() + timedelta(seconds=seconds)
                await asyncio.to_thread(send_ahead.later, self.engine, msg_id, at)
            except Exception as exc:  # noqa: BLE001 — due again when its lease ends
                log.warning("send-ahead retry of %s not scheduled: %s", msg_id, exc)
