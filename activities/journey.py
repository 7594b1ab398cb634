"""Activities of a push journey: send a stage (resumable, never twice), finish with the funnel."""

import asyncio
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity

from activities.providers.base import OutboundMessage, Provider, SendOutcome
from relance import ledger, outbox
from relance.content import render_stage
from relance.db import App, reading
from relance.forwarding import wake_forwarder
from relance.journey import FinishInput, Funnel, SendStageInput, SendStageResult
from relance.models import PushRequest, StageNotification


def _checkpoint(details: Any) -> int:
    """Heartbeat details come back untyped on a retry: rebuild the cursor explicitly."""
    if isinstance(details, dict):
        return int(details.get("cursor", 0))
    return 0


class JourneyActivities:
    def __init__(self, engine: Engine, providers: dict[str, Provider], batch_size: int = 100):
        self.engine = engine
        self.providers = providers
        self.batch_size = batch_size

    def _provider(self, app_key: str) -> Provider:
        from sqlmodel import Session

        with Session(reading(self.engine)) as session:
            app = session.get(App, app_key)
        name = app.provider if app else "simulator"
        return self.providers[name]

    @activity.defn
    async def send_stage(self, inp: SendStageInput) -> SendStageResult:
        """Send stage `inp.stage` to every queued recipient, batch by batch, from the checkpoint."""
        push = await asyncio.to_thread(ledger.get_push, self.engine, None, inp.msg_id)
        request = PushRequest.model_validate(push.request)
        if inp.stage > 0:
            await asyncio.to_thread(
                ledger.select_resend_audience, self.engine, inp.msg_id, inp.stage
            )
        changes = (
            [s.notification for s in request.resend.stages[: inp.stage]] if request.resend else []
        )
        provider = await asyncio.to_thread(self._provider, push.app_key)
        details = activity.info().heartbeat_details
        cursor = _checkpoint(details[0]) if details else 0
        while True:
            batch, last_id = await asyncio.to_thread(
                ledger.next_batch, self.engine, inp.msg_id, inp.stage, cursor, self.batch_size
            )
            if last_id is None:
                break
            if batch:
                messages = [self._message(inp, request, changes, item) for item in batch]
                await self._send_batch(provider, inp, batch, messages)
            cursor = last_id
            activity.heartbeat({"cursor": cursor})
        await self._wake_callbacks(push.app_key)
        counts = await asyncio.to_thread(ledger.stage_counts, self.engine, inp.msg_id, inp.stage)
        progress = await asyncio.to_thread(ledger.progress, self.engine, inp.msg_id)
        return SendStageResult(
            stage=inp.stage,
            targeted=sum(counts.values()),
            sent=counts.get("sent", 0),
            failed=counts.get("failed", 0),
            skipped=counts.get("skipped", 0),
            progress=progress,
        )

    async def _wake_callbacks(self, app_key: str) -> None:
        """The stage's sent/failed events wait in the outbox: wake the app's forwarder."""
        if await asyncio.to_thread(outbox.next_due, self.engine, app_key) is None:
            return
        try:
            await wake_forwarder(activity.client(), activity.info().task_queue, app_key)
        except Exception as exc:  # noqa: BLE001 — the API's sweep wakes it too
            activity.logger.info("callback forwarder of %s not woken: %s", app_key, exc)

    @staticmethod
    def _message(
        inp: SendStageInput,
        request: PushRequest,
        changes: list[StageNotification],
        item: ledger.Outbound,
    ) -> OutboundMessage:
        content = render_stage(request.body.notification, changes, item.platform, item.attributes)
        return OutboundMessage(
            idempotency_key=ledger.event_key(inp.msg_id, item.registration_id, inp.stage, "send"),
            msg_id=inp.msg_id,
            stage=inp.stage,
            registration_id=item.registration_id,
            platform=item.platform,
            title=content.title,
            alert=content.alert,
            extras=content.extras,
            time_to_live=request.body.options.time_to_live,
        )

    async def _send_batch(
        self,
        provider: Provider,
        inp: SendStageInput,
        batch: list[ledger.Outbound],
        messages: list[OutboundMessage],
    ) -> None:
        """Mark the batch as possibly sent, hand it to the provider, record each outcome."""
        pairs = list(zip(batch, messages, strict=True))
        await asyncio.to_thread(
            ledger.mark_sending, self.engine, {i.delivery_id: (m.title, m.alert) for i, m in pairs}
        )
        taken = await self._already_received(provider, batch, messages)
        to_send = [m for m in messages if m.idempotency_key not in taken]
        outcomes = {o.registration_id: o for o in await provider.send(to_send)} if to_send else {}
        rows = []
        for item, message in pairs:
            outcome = outcomes.get(item.registration_id)
            if message.idempotency_key in taken:
                outcome = SendOutcome(registration_id=item.registration_id, ok=True)
            elif outcome is None:
                outcome = SendOutcome(
                    registration_id=item.registration_id,
                    ok=False,
                    error="provider returned no outcome",
                )
            rows.append(
                ledger.SendOutcomeRow(
                    delivery_id=item.delivery_id,
                    registration_id=item.registration_id,
                    ok=outcome.ok,
                    error=outcome.error,
                    token_invalid=outcome.token_invalid,
                )
            )
        await asyncio.to_thread(ledger.record_outcomes, self.engine, inp.msg_id, inp.stage, rows)

    @staticmethod
    async def _already_received(
        provider: Provider, batch: list[ledger.Outbound], messages: list[OutboundMessage]
    ) -> set[str]:
        """Messages an attempt that crashed mid-send may have handed over: ask the provider."""
        keys = [m.idempotency_key for i, m in zip(batch, messages, strict=True) if i.resend]
        if not keys:
            return set()
        return await provider.already_received(keys) or set()

    @activity.defn
    async def finish_journey(self, inp: FinishInput) -> Funnel:
        """Record the journey's end state and return its funnel."""
        await asyncio.to_thread(ledger.set_state, self.engine, inp.msg_id, inp.state)
        return await asyncio.to_thread(ledger.funnel, self.engine, inp.msg_id)
