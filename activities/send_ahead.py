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
        self._done: list[str] = []
        self._running: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Until cancelled: lease due pushes (as many as there are free places), send each,
        and delete the rows of those done, in one statement per round. While nothing comes,
        the wait between polls doubles up to `idle_poll`: a poll costs an idle worker about a
        millisecond of CPU on SQLite, 5% of a core at 50 a second."""
        wait = self.poll
        try:
            while True:
                if self._done:
                    done, self._done = self._done, []
                    try:
                        await asyncio.to_thread(send_ahead.done, self.engine, done)
                    except Exception as exc:  # noqa: BLE001 — leased: due again after the lease
                        log.warning("send-ahead rows not deleted: %s", exc)
                free = self.concurrency - len(self._running)
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
                for msg_id, attempts in rows:
                    task = asyncio.create_task(self._one(msg_id, attempts))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
        finally:
            running = list(self._running)
            for task in running:
                task.cancel()  # leased: another worker takes them when the lease ends
            await asyncio.gather(*running, return_exceptions=True)

    async def _one(self, msg_id: str, attempts: int) -> None:
        try:
            retry_in = await self.journey.send_ahead(msg_id, self.client, self.task_queue)
        except Exception as exc:  # noqa: BLE001 — a provider or the ledger failed: again later
            retry_in = float(min(2**attempts, 60))
            log.warning("stage 0 of %s not sent ahead (try %d): %s", msg_id, attempts + 1, exc)
        if retry_in is None:
            self._done.append(msg_id)
            return
        at = utcnow() + timedelta(seconds=retry_in)
        try:
            await asyncio.to_thread(send_ahead.later, self.engine, msg_id, at)
        except Exception as exc:  # noqa: BLE001 — due again when its lease ends
            log.warning("send-ahead retry of %s not scheduled: %s", msg_id, exc)
