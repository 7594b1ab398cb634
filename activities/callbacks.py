"""Callback delivery: POST each due batch to its URL, signed; record success, the next try on
EngageLab's schedule, or the dead-letter list."""

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity

from relance import metrics
from relance.callbacks import UnsafeCallbackUrl, body_of, check_callback_url, signed_headers
from relance.db import App, CallbackBatch, reading
from relance.journey import DeliverInput, DeliverResult
from relance.ledger import outbox
from relance.states import CallbackBatchState

log = logging.getLogger("relance.callbacks")


@dataclass
class CallbackConfig:
    schedule: list[float]
    timeout: float = 5.0
    batch_size: int = 100
    allowed_networks: tuple[str, ...] = ()
    concurrency: int = 16


class CallbackActivities:
    def __init__(self, engine: Engine, config: CallbackConfig) -> None:
        self.engine = engine
        self.config = config
        # Redirects are not followed: a callback goes where the customer said, nowhere else.
        self.http = httpx.AsyncClient(timeout=config.timeout, follow_redirects=False)

    @activity.defn
    async def deliver_callbacks(self, inp: DeliverInput) -> DeliverResult:
        """Deliver every due batch of one app; one failing URL does not hold up the others."""
        cfg = self.config
        await asyncio.to_thread(
            outbox.form_batches, self.engine, inp.app_key, inp.now, cfg.batch_size
        )
        due = await asyncio.to_thread(outbox.due_batches, self.engine, inp.app_key, inp.now, 200)
        signing = await asyncio.to_thread(self._signing, inp.app_key)
        limit = asyncio.Semaphore(cfg.concurrency)
        outcomes: dict[int, str | None] = {}

        async def one(batch: CallbackBatch, rows: list[dict[str, Any]]) -> None:
            async with limit:
                outcomes[batch.id or 0] = await self._post(batch.url, rows, signing, inp)
            activity.heartbeat()

        await asyncio.gather(*(one(b, rows) for b, rows in due))
        states = await asyncio.to_thread(
            outbox.record_attempts, self.engine, outcomes, inp.now, cfg.schedule
        )
        await asyncio.to_thread(metrics.observe_callback_batches, self.engine, states)
        result = DeliverResult(
            delivered=sum(s == CallbackBatchState.delivered for s in states.values()),
            failed=sum(s == CallbackBatchState.pending for s in states.values()),
            dead=sum(s == CallbackBatchState.dead for s in states.values()),
        )
        for batch, _ in due:
            if states.get(batch.id or 0) == CallbackBatchState.dead:
                log.warning(
                    "callback batch %s to %s dead-lettered: %s",
                    batch.id,
                    batch.url,
                    outcomes[batch.id or 0],
                )
        result.next_due = await asyncio.to_thread(outbox.next_due, self.engine, inp.app_key)
        return result

    def _signing(self, app_key: str) -> tuple[str, str]:
        with Session(reading(self.engine)) as session:
            app = session.get(App, app_key)
        if app is None:
            return app_key, ""
        return app.callback_username or app.app_key, app.callback_secret or ""

    async def _post(
        self,
        url: str,
        rows: list[dict[str, Any]],
        signing: tuple[str, str],
        inp: DeliverInput,
    ) -> str | None:
        """None on a 2xx within the timeout, else what went wrong."""
        try:
            # Checked again at delivery: the name may resolve elsewhere than at push time.
            await asyncio.to_thread(check_callback_url, url, list(self.config.allowed_networks))
        except UnsafeCallbackUrl as exc:
            return f"refused: {exc}"
        body = body_of(rows)
        username, secret = signing
        try:
            response = await self.http.post(
                url, content=body, headers=signed_headers(secret, username, body, inp.now)
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"
