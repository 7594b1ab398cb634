"""Activities of a push journey: send a stage (resumable, never twice), finish with the funnel."""

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity

from activities.providers.base import OutboundMessage, Provider, SendOutcome
from activities.providers.registry import ProviderRegistry
from relance import ledger
from relance.content import render_stage
from relance.forwarding import wake_forwarder
from relance.journey import FinishInput, Funnel, SendStageInput, SendStageResult
from relance.ledger import outbox
from relance.models import PushRequest, StageNotification
from relance.states import DeliveryStatus


async def _sleep_heartbeating(seconds: float) -> None:
    """Wait for a provider's Retry-After while telling Temporal this attempt is alive."""
    loop = asyncio.get_running_loop()
    until = loop.time() + max(seconds, 0.0)
    while (left := until - loop.time()) > 0:
        await asyncio.sleep(min(left, 5.0))
        activity.heartbeat()


def _checkpoint(details: Any) -> int:
    """Heartbeat details come back untyped on a retry: rebuild the cursor explicitly."""
    if isinstance(details, dict):
        return int(details.get("cursor", 0))
    return 0


@dataclass
class BatchReport:
    # Seconds until the earliest message handed back for a later try, if any.
    retry_in: float | None = None
    # A provider configuration error, in words a human can act on.
    config_error: str | None = None


class JourneyActivities:
    def __init__(
        self,
        engine: Engine,
        providers: dict[str, Provider],
        batch_size: int = 100,
        provider_options: dict[str, dict[str, Any]] | None = None,
    ):
        self.engine = engine
        self.registry = ProviderRegistry(engine, providers, provider_options)
        self.batch_size = batch_size

    @activity.defn
    async def send_stage(self, inp: SendStageInput) -> SendStageResult:
        """Send stage `inp.stage` to every queued recipient, batch by batch, from the checkpoint;
        then, pass after pass, those a provider asked to try again later."""
        push = await asyncio.to_thread(ledger.get_push, self.engine, None, inp.msg_id)
        request = PushRequest.model_validate(push.request)
        if inp.stage > 0:
            await asyncio.to_thread(
                ledger.select_resend_audience, self.engine, inp.msg_id, inp.stage
            )
        changes = (
            [s.notification for s in request.resend.stages[: inp.stage]] if request.resend else []
        )
        route = await self.registry.router(push.app_key)
        details = activity.info().heartbeat_details
        cursor = _checkpoint(details[0]) if details else 0
        config_error = None
        while True:
            retry_in: float | None = None
            while True:
                batch, last_id = await asyncio.to_thread(
                    ledger.next_batch, self.engine, inp.msg_id, inp.stage, cursor, self.batch_size
                )
                if last_id is None:
                    break
                groups: dict[int, tuple[Provider, list[ledger.Outbound]]] = {}
                for item in batch:
                    provider = route(item.platform)
                    groups.setdefault(id(provider), (provider, []))[1].append(item)
                for provider, items in groups.values():
                    messages = [self._message(inp, request, changes, item) for item in items]
                    report = await self._send_batch(provider, inp, items, messages)
                    config_error = config_error or report.config_error
                    if report.retry_in is not None:
                        retry_in = min(retry_in or report.retry_in, report.retry_in)
                cursor = last_id
                activity.heartbeat({"cursor": cursor})
            if retry_in is None:
                break
            await _sleep_heartbeating(retry_in)
            cursor = 0  # the next pass finds exactly the deliveries still pending
            activity.heartbeat({"cursor": cursor})
        await self._wake_callbacks(push.app_key)
        counts = await asyncio.to_thread(ledger.stage_counts, self.engine, inp.msg_id, inp.stage)
        progress = await asyncio.to_thread(ledger.progress, self.engine, inp.msg_id)
        return SendStageResult(
            stage=inp.stage,
            targeted=sum(counts.values()),
            sent=counts.get(DeliveryStatus.sent, 0),
            failed=counts.get(DeliveryStatus.failed, 0),
            skipped=counts.get(DeliveryStatus.skipped, 0),
            progress=progress,
            config_error=config_error,
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
    ) -> BatchReport:
        """Mark the batch as possibly sent, hand it to the provider, record each outcome."""
        pairs = list(zip(batch, messages, strict=True))
        await asyncio.to_thread(
            ledger.mark_sending, self.engine, {i.delivery_id: (m.title, m.alert) for i, m in pairs}
        )
        taken = await self._already_received(provider, batch, messages)
        to_send = [m for m in messages if m.idempotency_key not in taken]
        outcomes = {o.registration_id: o for o in await provider.send(to_send)} if to_send else {}
        rows, report = [], BatchReport()
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
            if outcome.retry_after is not None and not outcome.ok:
                report.retry_in = min(report.retry_in or outcome.retry_after, outcome.retry_after)
            if outcome.config_error and report.config_error is None:
                report.config_error = f"{provider.name}: {outcome.error}"
            rows.append(
                ledger.SendOutcomeRow(
                    delivery_id=item.delivery_id,
                    registration_id=item.registration_id,
                    ok=outcome.ok,
                    error=outcome.error,
                    token_invalid=outcome.token_invalid,
                    retry_after=None if outcome.ok else outcome.retry_after,
                )
            )
        await asyncio.to_thread(ledger.record_outcomes, self.engine, inp.msg_id, inp.stage, rows)
        return report

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
        await asyncio.to_thread(ledger.set_state, self.engine, inp.msg_id, inp.state, inp.error)
        return await asyncio.to_thread(ledger.funnel, self.engine, inp.msg_id)
