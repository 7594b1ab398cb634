"""Coalesces status events per push into few signals: after each commit the API marks the push;
every interval it signals each marked journey once with the ledger's absolute counts."""

import asyncio
import logging

from sqlalchemy.engine import Engine
from temporalio.client import Client

from relance import ledger

log = logging.getLogger("relance.api.signals")


class SignalCoalescer:
    def __init__(self, engine: Engine, interval: float) -> None:
        self.engine = engine
        self.interval = interval
        self.client: Client | None = None
        self._dirty: set[str] = set()
        self.signals_sent = 0

    def mark(self, msg_ids: set[str]) -> None:
        self._dirty |= msg_ids

    async def flush(self) -> None:
        if self.client is None or not self._dirty:
            return
        batch, self._dirty = self._dirty, set()
        await asyncio.gather(*(self._signal(m) for m in batch))

    async def _signal(self, msg_id: str) -> None:
        # Imported here: workflows import relance models, and the API imports only the handle.
        from workflows.push_journey import PushJourney

        assert self.client is not None
        progress = await asyncio.to_thread(ledger.progress, self.engine, msg_id)
        try:
            await self.client.get_workflow_handle(f"push-{msg_id}").signal(
                PushJourney.record_progress, progress
            )
            self.signals_sent += 1
        except Exception as exc:  # noqa: BLE001 — a lost signal costs freshness, never correctness
            log.info("signal to push-%s not delivered: %s", msg_id, exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001
                log.exception("signal flush failed")
