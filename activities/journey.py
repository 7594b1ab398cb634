"""Activities of a push journey: send a stage (resumable, never twice), finish with the funnel."""

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.client import Client

from activities.providers.base import OutboundMessage, Provider, SendOutcome
from activities.providers.registry import ProviderRegistry, Router
from relance import ledger, metrics
from relance.content import RenderedContent, message_payload, render_stage
from relance.forwarding import wake_forwarder
from relance.journey import (
    FinishInput,
    Funnel,
    PlanZonesInput,
    Progress,
    SendStageInput,
    SendStageResult,
    StageShard,
)
from relance.ledger import outbox, send_ahead
from relance.ledger import timing as timed
from relance.ledger.send_ahead import take_over
from relance.models import PushRequest
from relance.states import OPEN_DELIVERIES, DeliveryStatus
from relance.timing import minute_of

log = logging.getLogger("relance.worker")


async def _sleep_heartbeating(seconds: float) -> None:
    """Wait for a provider's Retry-After while telling Temporal this attempt is alive."""
    loop = asyncio.get_running_loop()
    until = loop.time() + max(seconds, 0.0)
    while (left := until - loop.time()) > 0:
        await asyncio.sleep(min(left, 5.0))
        activity.heartbeat()


# A stage's cursor is heartbeaten at most this often (seconds). Temporal's SDK sends heartbeats
# to the server at most every 80% of the heartbeat timeout anyway, and each call still encodes
# its details; a retry that starts a second behind re-reads pages whose deliveries are no
# longer open, and sends none of them again.
CHECKPOINT_EVERY = 1.0

# How often a journey looks again at stage 0 of its push sent ahead while a worker holds it.
TAKE_OVER_EVERY = 1.0


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


class _StageContent:
    """What one stage says to each recipient: the original content with the stages' changes,
    then its A/B variant's. Without a template, every recipient of a platform (and variant) gets
    the same content, rendered once."""

    def __init__(self, request: PushRequest, stage: int) -> None:
        self.request = request
        resend = request.resend
        self.changes = [s.notification for s in resend.stages[:stage]] if resend else []
        per_stage = request.stage_variants()
        variants = per_stage[stage] if stage < len(per_stage) else None
        self.variants = {v.name: v.notification for v in variants or []}
        self.templated = any(c.template for c in [*self.changes, *self.variants.values()])
        self._cache: dict[tuple[str | None, str], RenderedContent] = {}
        body = request.body
        # A message-only push: the stages change the message, sent as data only.
        self.source = body.notification if body.notification is not None else body.message
        assert self.source is not None  # PushBody requires one of them
        self.notify = body.notification is not None
        self.fixed_message = (
            message_payload(body.message) if body.message is not None and self.notify else None
        )

    def render(
        self, platform: str, attributes: dict[str, Any], variant: str | None = None
    ) -> RenderedContent:
        assert self.source is not None
        changes = self.changes
        if variant in self.variants:
            changes = [*changes, self.variants[variant]]
        if self.templated:
            return render_stage(self.source, changes, platform, attributes)
        key = (variant, platform)
        if key not in self._cache:
            self._cache[key] = render_stage(self.source, changes, platform, {})
        return self._cache[key]

    def message(self, inp: SendStageInput, item: ledger.Outbound) -> OutboundMessage:
        content = self.render(item.platform, item.attributes, item.variant)
        custom = self.fixed_message
        if not self.notify and self.request.body.message is not None:
            custom = message_payload(self.request.body.message, content)
        return OutboundMessage(
            idempotency_key=ledger.event_key(inp.msg_id, item.registration_id, inp.stage, "send"),
            msg_id=inp.msg_id,
            stage=inp.stage,
            registration_id=item.registration_id,
            platform=item.platform,
            title=content.title,
            alert=content.alert,
            extras=content.extras,
            time_to_live=self.request.body.options.time_to_live,
            notify=self.notify,
            message=custom,
            variant=item.variant,
        )


class JourneyActivities:
    def __init__(
        self,
        engine: Engine,
        providers: dict[str, Provider],
        batch_size: int = 100,
        provider_options: dict[str, dict[str, Any]] | None = None,
        pipeline: int = 4,
        shard_size: int = 0,
        max_shards: int = 8,
    ):
        self.shard_size, self.max_shards = shard_size, max_shards
        self.engine = engine
        self.registry = ProviderRegistry(engine, providers, provider_options)
        self.batch_size = batch_size
        # Pages with providers at once: the next page is claimed while earlier ones are sent.
        self.pipeline = pipeline

    @activity.defn
    async def plan_stage(self, inp: SendStageInput) -> list[StageShard]:
        """Before a big stage: its audience queued (a resend's) or its variants assigned
        (stage 0's), both idempotent, then its shards; [] when one activity should send it."""
        await self._queue_stage(inp)
        shards = await asyncio.to_thread(
            ledger.stage_shards,
            self.engine,
            inp.msg_id,
            inp.stage,
            self.shard_size,
            self.max_shards,
        )
        return [StageShard(after_id=a, upto_id=b) for a, b in shards]

    async def _queue_stage(self, inp: SendStageInput) -> None:
        if inp.stage > 0:
            await asyncio.to_thread(
                ledger.select_resend_audience, self.engine, inp.msg_id, inp.stage
            )
            # PostgreSQL: the resend's deliveries can outgrow the table's statistics, which
            # the claims' plans depend on (a look at pg_stat_user_tables; nothing on SQLite).
            await asyncio.to_thread(ledger.refresh_statistics, self.engine, ("delivery",))
        else:
            push = await asyncio.to_thread(ledger.get_push, self.engine, None, inp.msg_id)
            if PushRequest.model_validate(push.request).variants:
                await asyncio.to_thread(ledger.assign_groups, self.engine, inp.msg_id, 0)

    @activity.defn
    async def send_stage(self, inp: SendStageInput) -> SendStageResult:
        """Send stage `inp.stage` to every queued recipient from the checkpoint, with up to
        `pipeline` batches in flight; then, pass after pass, those a provider asked to try
        again later."""
        if not inp.check:
            metrics.observe_stage_lateness(inp.stage, inp.scheduled_at, activity.info().attempt)
        push = await asyncio.to_thread(ledger.get_push, self.engine, None, inp.msg_id)
        request = PushRequest.model_validate(push.request)
        if inp.check:  # stage 0 of a push sent ahead: never beside a worker still sending it
            while (held := await asyncio.to_thread(take_over, self.engine, inp.msg_id)) is not None:
                # Looked at again every second, not at the lease's end: a worker that is alive
                # lets go within milliseconds of its send.
                again = min(held, TAKE_OVER_EVERY)
                if activity.info().is_local:  # the journey waits on a timer, not in its task
                    return await self._stage_result(inp, pending=True, retry_in=again)
                await _sleep_heartbeating(again)
        if inp.timed:
            return await self._send_slot(inp, push.app_key, request)
        if inp.stage > 0:
            await asyncio.to_thread(
                ledger.select_resend_audience, self.engine, inp.msg_id, inp.stage
            )
        elif request.variants:  # stage 0's variants, before its first claim (idempotent)
            await asyncio.to_thread(ledger.assign_groups, self.engine, inp.msg_id, 0)
        stage = _StageContent(request, inp.stage)
        route = await self.registry.router(push.app_key)
        details = activity.info().heartbeat_details
        cursor = _checkpoint(details[0]) if details else inp.after_id
        report = BatchReport()
        queued = 0
        retry_in: float | None = None
        while True:
            pass_report, pass_queued = await self._send_pass(inp, stage, route, cursor)
            report.config_error = report.config_error or pass_report.config_error
            retry_in, queued = pass_report.retry_in, queued + pass_queued
            if retry_in is None or inp.one_pass:
                break
            await _sleep_heartbeating(retry_in)
            cursor = inp.after_id  # the next pass finds exactly the deliveries still pending
            activity.heartbeat({"cursor": cursor})
        if queued or activity.info().attempt > 1:
            await self._wake_callbacks(push.app_key)
        if not inp.tally:
            return SendStageResult(
                stage=inp.stage, progress=Progress(), config_error=report.config_error
            )
        return await self._stage_result(
            inp,
            retry_in=retry_in if inp.one_pass else None,
            config_error=report.config_error,
            pending=True,
        )

    @activity.defn
    async def read_stage(self, inp: SendStageInput) -> SendStageResult:
        """The stage's counts and the push's progress as the ledger has them now: a streamed
        stage's result once all its sends have ended."""
        return await self._stage_result(inp, pending=True)

    async def _stage_result(
        self, inp: SendStageInput, pending: bool = False, **extra: Any
    ) -> SendStageResult:
        """What a send returns: the stage's deliveries by status and the push's progress, read
        from the ledger after the send (absolute counts, whatever an earlier attempt did);
        with `pending`, how many are still open."""
        counts, progress = await asyncio.to_thread(
            ledger.stage_result, self.engine, inp.msg_id, inp.stage
        )
        if pending:
            extra["pending"] = sum(counts.get(s, 0) for s in OPEN_DELIVERIES)
        if inp.check:
            extra["last_sent_at"] = await asyncio.to_thread(
                ledger.last_sent, self.engine, inp.msg_id, inp.stage
            )
        return SendStageResult(
            stage=inp.stage,
            targeted=sum(counts.values()),
            sent=counts.get(DeliveryStatus.sent, 0),
            failed=counts.get(DeliveryStatus.failed, 0),
            skipped=counts.get(DeliveryStatus.skipped, 0),
            held_out=counts.get(DeliveryStatus.held_out, 0),
            progress=progress,
            **extra,
        )

    @activity.defn
    async def plan_zones(self, inp: PlanZonesInput) -> list[str]:
        """Each recipient's time zone recorded; the push's distinct zones."""
        return await asyncio.to_thread(timed.plan_zones, self.engine, inp.msg_id, inp.default_zone)

    async def _send_slot(
        self, inp: SendStageInput, app_key: str, request: PushRequest
    ) -> SendStageResult:
        """One release slot of a timed journey (its zones only), page after page: caps checked
        and counted at each claim, at most `limit` sent (the push's throttle), each page's
        sends taken from the app's per-minute tokens. Returns `more` when some are left for a
        later call, with `retry_in` when a provider or the app's throttle asked to wait."""
        assert inp.at is not None
        if inp.stage > 0:
            await asyncio.to_thread(
                timed.select_slot_audience, self.engine, inp.msg_id, inp.stage, inp.zones
            )
        elif request.variants:
            await asyncio.to_thread(ledger.assign_groups, self.engine, inp.msg_id, 0)
        stage = _StageContent(request, inp.stage)
        route = await self.registry.router(app_key)
        claim = timed.Claim(zones=inp.zones, at=inp.at, held=inp.held, caps=inp.caps)
        minute = minute_of(inp.at)
        budget = inp.limit
        cursor, queued, more = 0, 0, False
        report = BatchReport()
        while True:
            want = self.batch_size if budget is None else min(self.batch_size, budget)
            if want <= 0:
                more = True
                break
            if inp.app_throttle_per_minute is not None:
                granted = await asyncio.to_thread(
                    timed.take_tokens,
                    self.engine,
                    app_key,
                    minute,
                    want,
                    inp.app_throttle_per_minute,
                )
                if granted == 0:
                    more = True
                    report.retry_in = 60 - (inp.at - minute).total_seconds()
                    break
                want = granted
            page = await asyncio.to_thread(
                timed.claim_timed, self.engine, inp.msg_id, inp.stage, cursor, want, claim
            )
            if inp.app_throttle_per_minute is not None:
                await asyncio.to_thread(
                    timed.give_back, self.engine, app_key, minute, want - len(page.items)
                )
            if page.last_id is not None:
                cursor = page.last_id
            if page.items:
                failed: list[int] = []
                done, rows_queued = await self._send_page(inp, stage, route, page.items, failed)
                queued += rows_queued
                if failed and inp.caps:  # not delivered: not counted against the caps
                    await asyncio.to_thread(timed.uncount, self.engine, failed)
                report.config_error = report.config_error or done.config_error
                if done.retry_in is not None:
                    more = True
                    report.retry_in = max(report.retry_in or 0, done.retry_in)
            if budget is not None:
                budget -= len(page.items)
            activity.heartbeat()
            if page.exhausted or page.last_id is None:
                break
        if queued or activity.info().attempt > 1:
            await self._wake_callbacks(app_key)
        return await self._stage_result(
            inp, retry_in=report.retry_in, config_error=report.config_error, more=more
        )

    async def _send_pass(
        self,
        inp: SendStageInput,
        stage: "_StageContent",
        route: Router,
        cursor: int,
        beat: bool = True,
    ) -> tuple[BatchReport, int]:
        """One pass over the stage's open deliveries after `cursor`: claim a page, send it, and
        claim the next while up to `pipeline` pages are with providers. A page's outcomes are
        recorded in the same transaction as the next claim (`ledger.record_and_claim`), and the
        heartbeat's cursor only moves past pages whose outcomes are recorded (`beat` False:
        outside an activity, nothing to heartbeat)."""
        report, queued = BatchReport(), 0
        in_flight: list[
            tuple[int, asyncio.Task[tuple[BatchReport, list[ledger.SendOutcomeRow]]]]
        ] = []
        unrecorded: list[ledger.SendOutcomeRow] = []  # the last settled page's outcomes
        settled_to: int | None = None  # and its last delivery id
        exhausted = False
        loop = asyncio.get_running_loop()
        next_checkpoint = loop.time()  # the first settled page is heartbeaten at once
        try:
            while in_flight or unrecorded or not exhausted:
                page = None
                if not exhausted:
                    rows_queued, page = await asyncio.to_thread(
                        ledger.record_and_claim,
                        self.engine,
                        inp.msg_id,
                        inp.stage,
                        unrecorded,
                        cursor,
                        self.batch_size,
                        inp.variants,
                        inp.upto_id,
                    )
                elif unrecorded:
                    rows_queued = await asyncio.to_thread(
                        ledger.record_outcomes, self.engine, inp.msg_id, inp.stage, unrecorded
                    )
                else:
                    rows_queued = 0
                queued += rows_queued
                unrecorded = []
                if settled_to is not None and loop.time() >= next_checkpoint and beat:
                    activity.heartbeat({"cursor": settled_to})
                    next_checkpoint = loop.time() + CHECKPOINT_EVERY
                settled_to = None
                if page is not None:
                    exhausted = page.exhausted or page.last_id is None
                    if page.last_id is not None:
                        cursor = page.last_id
                        sending = self._deliver_page(inp, stage, route, page.items)
                        in_flight.append((cursor, asyncio.create_task(sending)))
                if in_flight and (len(in_flight) >= self.pipeline or exhausted):
                    settled_to, oldest = in_flight.pop(0)
                    done, unrecorded = await oldest
                    report.config_error = report.config_error or done.config_error
                    if done.retry_in is not None:
                        report.retry_in = min(report.retry_in or done.retry_in, done.retry_in)
        finally:
            # Cancelled or failed: the pages already with providers finish, and what they and
            # the last settled page sent is recorded, so a retry does not ask about them again.
            for _, task in in_flight:
                if not task.done():
                    await asyncio.wait([task])
                if not task.cancelled() and task.exception() is None:
                    unrecorded = unrecorded + task.result()[1]
            if unrecorded:  # a pass that ends well has recorded everything
                try:
                    await asyncio.to_thread(
                        ledger.record_outcomes, self.engine, inp.msg_id, inp.stage, unrecorded
                    )
                except Exception as exc:  # noqa: BLE001 — the retry asks the provider instead
                    log.warning(
                        "outcomes of a stopped pass of %s not recorded: %s", inp.msg_id, exc
                    )
        return report, queued

    async def _send_page(
        self,
        inp: SendStageInput,
        stage: "_StageContent",
        route: Router,
        items: list[ledger.Outbound],
        failed_out: list[int] | None = None,
    ) -> tuple[BatchReport, int]:
        """Hand one claimed page to its providers and record every outcome (the deliveries
        that failed for good added to `failed_out`, when given)."""
        report, rows = await self._deliver_page(inp, stage, route, items)
        queued = await asyncio.to_thread(
            ledger.record_outcomes, self.engine, inp.msg_id, inp.stage, rows
        )
        if failed_out is not None:
            failed_out += [r.delivery_id for r in rows if not r.ok and r.retry_after is None]
        return report, queued

    async def _deliver_page(
        self,
        inp: SendStageInput,
        stage: "_StageContent",
        route: Router,
        items: list[ledger.Outbound],
    ) -> tuple[BatchReport, list[ledger.SendOutcomeRow]]:
        """Hand one claimed page to its providers; every outcome as a row to record."""
        groups: dict[int, tuple[Provider, list[ledger.Outbound]]] = {}
        for item in items:
            provider = route(item.platform)
            groups.setdefault(id(provider), (provider, []))[1].append(item)
        report, rows = BatchReport(), []
        for provider, mine in groups.values():
            messages = [stage.message(inp, item) for item in mine]
            done, provider_rows = await self._send_batch(provider, mine, messages)
            rows += provider_rows
            report.config_error = report.config_error or done.config_error
            if done.retry_in is not None:
                report.retry_in = min(report.retry_in or done.retry_in, done.retry_in)
        return report, rows

    async def _wake_callbacks(
        self, app_key: str, client: Client | None = None, task_queue: str | None = None
    ) -> None:
        """The stage's sent/failed events wait in the outbox: wake the app's forwarder (through
        this activity's client and queue unless given)."""
        if await asyncio.to_thread(outbox.next_due, self.engine, app_key) is None:
            return
        try:
            await wake_forwarder(
                client or activity.client(), task_queue or activity.info().task_queue, app_key
            )
        except Exception as exc:  # noqa: BLE001 — the API's sweep wakes it too
            log.info("callback forwarder of %s not woken: %s", app_key, exc)

    async def send_ahead(
        self, attempts: dict[str, int], client: Client, task_queue: str
    ) -> dict[str, float]:
        """Stage 0 of a round of pushes sent ahead (activities/send_ahead.py; msg_id -> earlier
        attempts), outside any activity, through the same claims as a journey's send, so a
        device gets it once whoever sends. The round reads its pushes once, claims their first
        pages in one transaction, sends them side by side, and records every outcome with the
        deletion of the finished rows in one more. Returns, for each push to try again, in how
        many seconds (a provider asked to wait, or the send failed); the others are done (a
        push that is gone, or whose deliveries a journey already took, is done too)."""
        pushes = await asyncio.to_thread(send_ahead.pushes, self.engine, list(attempts))
        pages = await asyncio.to_thread(
            send_ahead.claim_first_pages,
            self.engine,
            [(m, p.app_key) for m, p in pushes.items()],
            self.batch_size,
        )
        routes = {
            app: await self.registry.router(app) for app in {p.app_key for p in pushes.values()}
        }

        async def deliver(
            msg_id: str,
        ) -> tuple[SendStageInput, _StageContent, BatchReport, list[ledger.SendOutcomeRow]]:
            push = pushes[msg_id]
            inp = SendStageInput(
                msg_id=msg_id, stage=0, scheduled_at=push.created_at, one_pass=True
            )
            metrics.observe_stage_lateness(0, push.created_at, 1)
            content = _StageContent(PushRequest.model_validate(push.request), 0)
            if not pages[msg_id].items:
                return inp, content, BatchReport(), []
            report, rows = await self._deliver_page(
                inp, content, routes[push.app_key], pages[msg_id].items
            )
            return inp, content, report, rows

        tasks = {m: asyncio.create_task(deliver(m)) for m in pushes}
        retry: dict[str, float] = {}
        more: list[tuple[SendStageInput, _StageContent]] = []
        try:
            if tasks:
                await asyncio.wait(tasks.values())
        finally:
            # Cancelled (the worker stops): what is with providers already finishes, and is
            # recorded, so whoever takes these pushes next does not ask about it again.
            if not all(t.done() for t in tasks.values()):
                await asyncio.wait(tasks.values())
            outcomes: dict[str, list[ledger.SendOutcomeRow]] = {}
            for msg_id, task in tasks.items():
                if task.cancelled() or task.exception() is not None:
                    retry[msg_id] = float(min(2 ** attempts[msg_id], 60))
                    log.warning(
                        "stage 0 of %s not sent ahead (try %d): %r",
                        msg_id,
                        attempts[msg_id] + 1,
                        None if task.cancelled() else task.exception(),
                    )
                    continue
                inp, content, report, outcomes[msg_id] = task.result()
                page = pages[msg_id]
                if report.retry_in is not None:
                    retry[msg_id] = report.retry_in
                elif not page.exhausted and page.last_id is not None:
                    more.append((inp, content))  # over a page: the rest in a pass of its own
            unfinished = set(retry) | {inp.msg_id for inp, _ in more}
            finished = [m for m in attempts if m not in unfinished]
            queued = await asyncio.to_thread(
                send_ahead.record_first_pages, self.engine, outcomes, finished
            )
        woken = {pushes[m].app_key for m, n in queued.items() if n}
        for inp, content in more:
            app_key = pushes[inp.msg_id].app_key
            cursor = pages[inp.msg_id].last_id or 0
            report, n = await self._send_pass(inp, content, routes[app_key], cursor, False)
            if report.retry_in is not None:
                retry[inp.msg_id] = report.retry_in
            else:
                await asyncio.to_thread(send_ahead.done, self.engine, [inp.msg_id])
            woken |= {app_key} if n else set()
        for app_key in sorted(woken):
            await self._wake_callbacks(app_key, client, task_queue)
        return retry

    async def _send_batch(
        self,
        provider: Provider,
        batch: list[ledger.Outbound],
        messages: list[OutboundMessage],
    ) -> tuple[BatchReport, list[ledger.SendOutcomeRow]]:
        """Hand a claimed batch to one provider; each outcome as a row to record."""
        pairs = list(zip(batch, messages, strict=True))
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
                    title=message.title,
                    alert=message.alert,
                )
            )
        return report, rows

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
