"""PushJourney: send stage 0, wait out the trigger window, then resend stage by stage to whoever
still matches. Recipients live in the ledger; the workflow holds only counters."""

import asyncio
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.audience import AudienceActivities
    from activities.journey import JourneyActivities
    from relance.describe import (
        FunnelRow,
        Totals,
        funnel_details,
        send_summary,
        slot_summary,
        wait_summary,
    )
    from relance.journey import (
        AudienceChunkInput,
        FinishInput,
        Funnel,
        JourneyCarry,
        JourneyInput,
        JourneyPlan,
        JourneyResult,
        JourneyStatus,
        MaterialiseInput,
        PlanZonesInput,
        Progress,
        SendStageInput,
        SendStageResult,
        StageShard,
        StageSummary,
        shard_queue,
    )
    from relance.states import JourneyState
    from relance.timing import Slot, timeline

MSG_ID = SearchAttributeKey.for_keyword("RelanceMsgId")
APP = SearchAttributeKey.for_keyword("RelanceApp")
STATE = SearchAttributeKey.for_keyword("RelanceState")

SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["NotFound"],
)


# A local attempt fails over to a regular activity quickly rather than holding the task.
LOCAL_SEND_RETRY = RetryPolicy(maximum_attempts=2, non_retryable_error_types=["NotFound"])


def search_attributes(msg_id: str, app_key: str, state: JourneyState) -> TypedSearchAttributes:
    """What makes journeys filterable in the Temporal UI (no secrets: stored unencrypted)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(MSG_ID, msg_id),
            SearchAttributePair(APP, app_key),
            SearchAttributePair(STATE, state.value),
        ]
    )


class Wait(Enum):
    """How a wait for the next stage ended."""

    due = "due"  # the stage's time came
    stop = "stop"  # cancelled, failed, or every recipient stopped
    continue_as_new = "continue_as_new"  # history or signals near Temporal's limits


@workflow.defn
class PushJourney:
    def __init__(self) -> None:
        self._progress = Progress()
        self._stages: list[StageSummary] = []
        self._state = JourneyState.sending
        self._cancelled = False
        self._error: str | None = None  # a provider configuration error ends the journey
        self._signals = 0
        self._msg_id = ""
        self._next_stage: int | None = 0
        self._next_stage_at: datetime | None = None
        self._signals_per_run = 5_000
        self._slots: list[Slot] = []  # a timed journey's release slots still to send
        self._condition: str | None = None  # the trigger's, for the timeline's labels
        self._observe_until: datetime | None = None  # observing after the last stage
        self._checking = False  # stage 0 was sent ahead: the journey's stage 0 only checks it
        self._stage_0_sent_at: datetime | None = None  # ...and when that stage 0 went out

    @workflow.signal
    def record_progress(self, progress: Progress) -> None:
        """Absolute counts from the ledger; the highest `seq` wins, so duplicates change nothing."""
        self._signals += 1
        self._take(progress)

    @workflow.signal
    def cancel(self) -> None:
        """Stop pending resends; the journey ends as cancelled."""
        self._signals += 1
        self._cancelled = True

    @workflow.query
    def status(self) -> JourneyStatus:
        return JourneyStatus(
            msg_id=self._msg_id,
            state=self._state,
            next_stage=self._next_stage,
            next_stage_at=self._next_stage_at,
            progress=self._progress,
            stages=self._stages,
            next_release_at=next((s.at for s in self._slots if s.held), None),
            observe_until=self._observe_until,
        )

    @workflow.run
    async def run(self, inp: JourneyInput) -> JourneyResult:
        plan = inp.plan
        self._msg_id, self._signals_per_run = plan.msg_id, plan.signals_per_run
        self._condition = plan.condition
        carry = inp.carry or JourneyCarry(next_stage=0, progress=Progress(), stages=[])
        self._progress, self._stages = carry.progress, list(carry.stages)
        self._cancelled = self._cancelled or carry.cancelled
        self._next_stage, sent_at = carry.next_stage, carry.sent_at
        if plan.timing is not None and workflow.patched("when-and-how-often"):
            return await self._run_timed(plan, carry)

        if self._next_stage == 0 and not self._cancelled:
            self._set_state(JourneyState.sending)
            sent_at = workflow.now()
            if plan.sent_ahead_at is not None and workflow.patched("send-ahead"):
                # A worker sent stage 0 when the push was accepted, and Temporal started this
                # journey when the window ended: the window counts from that send, and the
                # stage below only reads its counts (or sends what a dead worker left).
                sent_at, self._checking = plan.sent_ahead_at, True
            if plan.materialise and plan.stream_audience and workflow.patched("stream-audience"):
                await self._stream_first_stage(plan, sent_at)
            else:
                if plan.materialise and workflow.patched("materialise-audience"):
                    await self._materialise(plan)
                await self._send_stage(plan, 0, sent_at)
            if self._checking:
                sent_at = self._window_start(plan, sent_at)
            self._next_stage = 1
        elif sent_at is None:
            # Cancelled before its first workflow task (a push sent ahead, withdrawn within its
            # window): nothing to send, and the stages' times still count from stage 0's send.
            sent_at = plan.sent_ahead_at or workflow.now()
        offsets = plan.stage_offsets_seconds
        assert sent_at is not None
        while self._next_stage is not None and self._next_stage <= len(offsets):
            stage = self._next_stage
            self._next_stage_at = sent_at + timedelta(seconds=offsets[stage - 1])
            self._set_state(JourneyState.waiting)
            waited = await self._wait_until(
                self._next_stage_at,
                wait_summary(
                    stage, self._next_stage_at, plan.condition, plan.within_seconds, stage == 1
                ),
            )
            if waited is Wait.continue_as_new:
                await workflow.wait_condition(workflow.all_handlers_finished)
                carry = JourneyCarry(
                    next_stage=stage,
                    sent_at=sent_at,
                    progress=self._progress,
                    stages=self._stages,
                    cancelled=self._cancelled,
                )
                workflow.continue_as_new(JourneyInput(plan=plan, carry=carry))
            if waited is Wait.stop:
                break
            self._set_state(JourneyState.resending)
            await self._send_stage(plan, stage, self._next_stage_at)
            self._next_stage = stage + 1
        await self._observe(plan, carry, {"next_stage": len(offsets) + 1, "sent_at": sent_at})
        return await self._finish(plan)

    def _window_start(self, plan: JourneyPlan, accepted_at: datetime) -> datetime:
        """When the trigger window of a push sent ahead starts: at the accept, as planned,
        unless its stage 0 went out late (no worker ran for a while, or the journey sent it
        itself when the window ended); then at stage 0's last send, so that its recipients
        get the whole window to act before a resend. Late means by more than a tenth of the
        window, at least a second and at most a minute: a stage 0 that left on time moves no
        stage, and the times the POST answered hold."""
        sent = self._stage_0_sent_at
        grace = timedelta(seconds=min(max(plan.within_seconds / 10, 1.0), 60.0))
        if sent is None or sent - accepted_at <= grace:
            return accepted_at
        if not workflow.patched("send-ahead-late-stage-0"):
            return accepted_at  # a journey that ran before: the window from the accept
        return sent

    async def _observe(self, plan: JourneyPlan, carry: JourneyCarry, then: dict[str, Any]) -> None:
        """After the last stage, keep observing for the observation window (clicks, displays
        and conversions of the last stage land in the ledger) so that the journey's result and
        final funnel include them. Only a push with a resend policy observes (its plan has a
        window); it ends early when cancelled, failed or every recipient stopped. `then` is
        what to carry over should the run continue-as-new meanwhile."""
        if plan.observe_seconds <= 0 or self._cancelled or self._error or self._all_stopped():
            return
        if not workflow.patched("observe-window"):
            return
        until = carry.observe_until or workflow.now() + timedelta(seconds=plan.observe_seconds)
        self._next_stage, self._next_stage_at, self._observe_until = None, None, until
        self._set_state(JourneyState.waiting)
        label = f"observation window: until {until:%Y-%m-%d %H:%M}Z, the last stage's clicks"
        if await self._wait_until(until, label) is Wait.continue_as_new:
            await workflow.wait_condition(workflow.all_handlers_finished)
            carry = JourneyCarry(
                **then,
                progress=self._progress,
                stages=self._stages,
                cancelled=self._cancelled,
                observe_until=until,
            )
            workflow.continue_as_new(JourneyInput(plan=plan, carry=carry))

    async def _send_stage(self, plan: JourneyPlan, stage: int, scheduled_at: datetime) -> None:
        """Send a stage; when some of its A/B variants have a delay, each group of variants
        after its delay (a durable timer), in delay order, the undelayed ones first."""
        groups = plan.variant_delays.get(str(stage))
        if not groups or not workflow.patched("variant-delays"):
            await self._send(stage, scheduled_at, plan.local_send)
            return
        for group in groups:
            at = scheduled_at + timedelta(seconds=group.delay_seconds)
            if at > workflow.now():  # a durable timer; a cancel or a failure stops the rest
                try:
                    await workflow.wait_condition(
                        lambda: self._cancelled or self._error is not None,
                        timeout=at - workflow.now(),
                        timeout_summary=f"stage {stage}: variants {', '.join(group.variants)} "
                        f"at {at:%H:%M:%S}Z (their delay)",
                    )
                except TimeoutError:
                    pass
            if self._cancelled or self._error:
                return
            await self._send(stage, scheduled_at, plan.local_send, group.variants)

    async def _finish(self, plan: JourneyPlan) -> JourneyResult:
        self._next_stage, self._next_stage_at, self._observe_until = None, None, None
        final = (
            JourneyState.failed
            if self._error
            else JourneyState.cancelled
            if self._cancelled
            else JourneyState.completed
        )
        funnel = await workflow.execute_activity_method(
            JourneyActivities.finish_journey,
            FinishInput(msg_id=plan.msg_id, state=final, error=self._error),
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=SEND_RETRY,
            summary=f"finish: {final.value}, write the final funnel",
        )
        self._set_state(final)
        self._show(funnel)
        workflow.logger.info(
            "push %s %s: %d of %d clicked (%d after a resend)",
            plan.msg_id,
            final.value,
            funnel.clicked,
            funnel.recipients,
            funnel.clicked_after_resend,
        )
        return JourneyResult(state=final, stages=self._stages, funnel=funnel)

    async def _run_timed(self, plan: JourneyPlan, carry: JourneyCarry) -> JourneyResult:
        """A journey with quiet hours, local time, send_at, caps or throttles: every stage is
        sent in release slots (a group of time zones released at one instant), each slot a
        durable timer, in time order and stage order, so a held recipient gets stage N+1 only
        after stage N. Recipients' zones come from the ledger; the slots from relance.timing."""
        timing = plan.timing
        assert timing is not None
        if carry.slots is None:
            start = workflow.now()
            if plan.materialise:
                await self._materialise(plan)
            zones = None
            if timing.by_zone:
                zones = await workflow.execute_activity_method(
                    JourneyActivities.plan_zones,
                    PlanZonesInput(msg_id=plan.msg_id, default_zone=timing.zone),
                    start_to_close_timeout=timedelta(minutes=30),
                    retry_policy=SEND_RETRY,
                    summary="plan release slots by the recipients' time zones",
                )
            offsets = [timedelta(seconds=o) for o in plan.stage_offsets_seconds]
            self._slots = timeline(timing, zones, start, offsets)
        else:
            self._slots = list(carry.slots)
        while self._slots and not self._cancelled and not self._error:
            slot = self._slots[0]
            self._next_stage, self._next_stage_at = slot.stage, slot.at
            if slot.at > workflow.now():
                self._set_state(JourneyState.waiting)
                waited = await self._wait_until(
                    slot.at, slot_summary(slot.stage, slot.at, slot.held)
                )
                if waited is Wait.continue_as_new:
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    carry = JourneyCarry(
                        next_stage=slot.stage,
                        progress=self._progress,
                        stages=self._stages,
                        cancelled=self._cancelled,
                        slots=self._slots,
                    )
                    workflow.continue_as_new(JourneyInput(plan=plan, carry=carry))
                if waited is Wait.stop:
                    break
            elif self._all_stopped():
                break
            self._set_state(JourneyState.sending if slot.stage == 0 else JourneyState.resending)
            await self._send_slot(plan, slot)
            self._slots.pop(0)
        self._slots = []
        await self._observe(plan, carry, {"next_stage": 0, "slots": []})
        return await self._finish(plan)

    async def _send_slot(self, plan: JourneyPlan, slot: Slot) -> None:
        """Send one slot, throttled: at most `throttle_per_minute` a minute, a durable sleep
        between slices (and whatever a provider or the app's throttle asks to wait)."""
        timing = plan.timing
        assert timing is not None
        while True:
            began = workflow.now()
            inp = SendStageInput(
                msg_id=plan.msg_id,
                stage=slot.stage,
                scheduled_at=slot.at,
                timed=True,
                zones=slot.zones,
                at=began,
                held=slot.held,
                limit=timing.throttle_per_minute,
                caps=timing.caps,
                app_throttle_per_minute=timing.app_throttle_per_minute,
            )
            result = await workflow.execute_activity_method(
                JourneyActivities.send_stage,
                inp,
                start_to_close_timeout=timedelta(hours=2),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=SEND_RETRY,
                summary=send_summary(slot.stage, plan.condition)
                + (" (held slot)" if slot.held else ""),
            )
            self._take(result.progress)
            if result.config_error and result.sent == 0:
                self._error = result.config_error
            self._record(slot.stage, slot.at, began, result)
            if not result.more or self._cancelled or self._error:
                return
            wait = result.retry_in or 0.0
            if timing.throttle_per_minute is not None:
                wait = max(wait, 60 - (workflow.now() - began).total_seconds())
            await workflow.sleep(
                timedelta(seconds=max(wait, 1.0)),
                summary=f"throttle: next slice of stage {slot.stage}",
            )

    def _record(
        self, stage: int, scheduled_at: datetime, began: datetime, r: SendStageResult
    ) -> None:
        """The stage's summary, its counts the ledger's (absolute) after this slot."""
        for i, summary in enumerate(self._stages):
            if summary.stage == stage:
                self._stages[i] = summary.model_copy(
                    update={
                        "targeted": r.targeted,
                        "sent": r.sent,
                        "failed": r.failed,
                        "skipped": r.skipped,
                        "held_out": r.held_out,
                    }
                )
                self._show()
                return
        self._stages.append(
            StageSummary(
                stage=stage,
                scheduled_at=scheduled_at,
                sent_at=began,
                targeted=r.targeted,
                sent=r.sent,
                failed=r.failed,
                skipped=r.skipped,
                held_out=r.held_out,
            )
        )
        self._show()
        self._say(stage, r)

    async def _send(
        self,
        stage: int,
        scheduled_at: datetime,
        local: bool,
        variants: list[str] | None = None,
    ) -> None:
        started = workflow.now()
        inp = SendStageInput(
            msg_id=self._msg_id, stage=stage, scheduled_at=scheduled_at, variants=variants
        )
        if self._checking and stage == 0:
            inp.check = True
        result = None
        if local and workflow.patched("local-small-stages"):
            result = await self._send_locally(inp)
            if result is not None and result.pending:
                if result.retry_in:  # a provider asked to wait: a durable timer, not a busy task
                    await workflow.sleep(
                        timedelta(seconds=result.retry_in),
                        summary=f"stage {stage}: the provider asked to wait",
                    )
                result = None  # the regular activity sends what is left
        if result is None and not local and variants is None and workflow.patched("sharded-stages"):
            shards = await workflow.execute_activity_method(
                JourneyActivities.plan_stage,
                inp,
                start_to_close_timeout=timedelta(minutes=30),
                retry_policy=SEND_RETRY,
                summary=f"plan stage {stage}: its audience, and shards if it is big",
            )
            if len(shards) > 1:
                result = await self._send_sharded(inp, shards)
        if result is None:
            result = await self._start_send(inp, send_summary(stage, self._condition))
        self._sent(stage, scheduled_at, started, result)

    async def _materialise(self, plan: JourneyPlan) -> None:
        """The whole audience into the ledger before stage 0 (materialise_audience)."""
        await workflow.execute_activity_method(
            AudienceActivities.materialise_audience,
            MaterialiseInput(msg_id=plan.msg_id),
            start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=SEND_RETRY,
            summary="materialise the audience (tags, aliases or all)",
        )

    def _start_send(
        self, inp: SendStageInput, summary: str, task_queue: str | None = None
    ) -> workflow.ActivityHandle[SendStageResult]:
        """A regular send_stage activity: a whole stage, or one shard or chunk of it."""
        return workflow.start_activity_method(
            JourneyActivities.send_stage,
            inp,
            start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=timedelta(seconds=15),
            retry_policy=SEND_RETRY,
            task_queue=task_queue,
            summary=summary,
        )

    def _sent(
        self, stage: int, scheduled_at: datetime, started: datetime, result: SendStageResult
    ) -> None:
        self._take(result.progress)  # the send's own reading of the ledger
        if result.config_error and result.sent == 0:
            self._error = result.config_error
        if stage == 0 and result.last_sent_at is not None:
            self._stage_0_sent_at = result.last_sent_at
        # The stage's summary: new, or (a later group of variants) its counts, now absolute.
        self._record(stage, scheduled_at, started, result)

    async def _stream_first_stage(self, plan: JourneyPlan, sent_at: datetime) -> None:
        """Stage 0 of a tag, alias or "all" push: its audience written chunk by chunk, and each
        chunk's deliveries sent (a shard of the stage, on the shards' queue) while the next
        chunk is written, so the first sends do not wait for the whole audience. An audience
        of one chunk is sent as one stage, on the journey's queue. Every delivery is in one
        chunk's range; the claims in the ledger keep each device to one send whatever retries."""
        started = workflow.now()
        inp = SendStageInput(msg_id=plan.msg_id, stage=0, scheduled_at=sent_at)
        summary = send_summary(0, plan.condition)
        sends: list[workflow.ActivityHandle[SendStageResult]] = []
        cursor, upto = 0, 0
        limit: int | None = None  # the first chunk's: the worker's
        while True:
            chunk = await workflow.execute_activity_method(
                AudienceActivities.materialise_chunk,
                AudienceChunkInput(msg_id=plan.msg_id, after_device_id=cursor, limit=limit),
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=SEND_RETRY,
                summary=f"materialise the audience: devices after #{cursor}"
                if cursor
                else "materialise the audience (tags, aliases or all): first chunk",
            )
            if chunk.cursor is None and not sends:  # one chunk: one send (too few to shard)
                one = await self._start_send(inp, summary)
                self._sent(0, sent_at, started, one)
                return
            if chunk.upto_id > upto:
                n = len(sends) + 1
                chunk_inp = inp.model_copy(
                    update={
                        "after_id": upto,
                        "upto_id": chunk.upto_id,
                        "shard": str(n),
                        "tally": False,
                    }
                )
                sends.append(
                    self._start_send(
                        chunk_inp, f"{summary} · chunk {n}", shard_queue(workflow.info().task_queue)
                    )
                )
                upto = chunk.upto_id
            if chunk.cursor is None:
                break
            cursor, limit = chunk.cursor, chunk.next_limit
        results = await asyncio.gather(*sends)
        # Each shard read the stage while others still sent (or before the last chunk was
        # written): the stage's result is read once all have ended.
        result = await workflow.execute_activity_method(
            JourneyActivities.read_stage,
            inp,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=SEND_RETRY,
            summary="stage 0: its counts, once every chunk is sent",
        )
        error = next((r.config_error for r in results if r.config_error), None)
        self._sent(0, sent_at, started, result.model_copy(update={"config_error": error}))

    async def _send_sharded(self, inp: SendStageInput, shards: list[StageShard]) -> SendStageResult:
        """A big stage: one activity per shard at once (on every worker of the queue). Each
        reads the whole stage's counts when it ends, so the one with the fewest deliveries
        still open ended last and has them all."""
        n = len(shards)
        # On their own queue, a few at a time per worker (settings.send_shard_slots).
        queue = (
            shard_queue(workflow.info().task_queue)
            if workflow.patched("shard-queue")
            else None  # the journey's queue, where a worker took as many as it could poll
        )
        results = await asyncio.gather(
            *(
                self._start_send(
                    inp.model_copy(
                        update={"after_id": s.after_id, "upto_id": s.upto_id, "shard": f"{i}/{n}"}
                    ),
                    f"{send_summary(inp.stage, self._condition)} · shard {i}/{n}",
                    queue,
                )
                for i, s in enumerate(shards, 1)
            )
        )
        last = min(results, key=lambda r: (r.pending or 0, -r.progress.seq))
        error = next((r.config_error for r in results if r.config_error), None)
        return last.model_copy(update={"config_error": error})

    async def _send_locally(self, inp: SendStageInput) -> SendStageResult | None:
        """One pass of a small stage inside this workflow task; None when the local attempts
        failed (the regular activity resumes the same claims, so nobody gets it twice)."""
        try:
            return await workflow.execute_local_activity_method(
                JourneyActivities.send_stage,
                inp.model_copy(update={"one_pass": True}),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=LOCAL_SEND_RETRY,
                summary=send_summary(inp.stage, self._condition) + " (local)",
            )
        except ActivityError:
            return None

    async def _wait_until(self, until: datetime, summary: str) -> Wait:
        """Sleep until `until`, waking early to stop or to continue-as-new."""
        while True:
            if self._cancelled or self._error or self._all_stopped():
                return Wait.stop
            remaining = (until - workflow.now()).total_seconds()
            if remaining <= 0:
                return Wait.due
            try:
                await workflow.wait_condition(
                    lambda: self._cancelled or self._all_stopped() or self._must_continue(),
                    timeout=timedelta(seconds=remaining),
                    timeout_summary=summary,
                )
            except TimeoutError:
                return Wait.due
            if self._must_continue():
                return Wait.continue_as_new

    def _take(self, progress: Progress) -> None:
        """The highest `seq` wins; a reading with per-stage counts at the same `seq` (a later
        look at the deliveries) replaces the per-stage counts, and one without keeps them."""
        if progress.seq > self._progress.seq or (
            progress.stages and progress.seq == self._progress.seq
        ):
            stages = progress.stages or self._progress.stages
            self._progress = progress.model_copy(update={"stages": stages})
            self._show()

    def _all_stopped(self) -> bool:
        p = self._progress
        return p.recipients > 0 and p.stopped >= p.recipients

    def _must_continue(self) -> bool:
        return (
            self._signals >= self._signals_per_run or workflow.info().is_continue_as_new_suggested()
        )

    def _set_state(self, state: JourneyState) -> None:
        if state != self._state:
            self._state = state
            workflow.upsert_search_attributes([STATE.value_set(state.value)])
            self._show()

    def _say(self, stage: int, r: SendStageResult) -> None:
        """The log's one line per stage (the worker's; never repeated on replay)."""
        workflow.logger.info(
            "push %s stage %d sent: %d of %d (%d failed, %d skipped)",
            self._msg_id,
            stage,
            r.sent,
            r.targeted,
            r.failed,
            r.skipped,
        )

    def _show(self, funnel: Funnel | None = None) -> None:
        """The live funnel of the Temporal UI's "current details" (no command: replay-safe):
        each stage's sends from its result, its deliveries and clicks from the last per-stage
        reading the API signalled; at the end, the final funnel's."""
        p = self._progress
        if funnel is not None:
            rows = [
                FunnelRow(
                    stage=s.stage,
                    targeted=s.targeted,
                    sent=s.sent,
                    failed=s.failed,
                    skipped=s.skipped,
                    delivered=s.delivered,
                    clicked=s.clicked,
                    held_out=s.held_out,
                    deferred=s.deferred,
                )
                for s in funnel.stages
            ]
            totals = Totals(
                funnel.recipients, funnel.delivered, funnel.displayed, funnel.clicked, funnel.failed
            )
        else:
            seen = {s.stage: s for s in p.stages}
            rows = [
                FunnelRow(
                    s.stage,
                    s.targeted,
                    s.sent,
                    s.failed,
                    s.skipped,
                    delivered=seen[s.stage].delivered if s.stage in seen else None,
                    clicked=seen[s.stage].clicked if s.stage in seen else None,
                    held_out=s.held_out,
                    deferred=seen[s.stage].deferred if s.stage in seen else None,
                )
                for s in self._stages
            ]
            totals = Totals(p.recipients, p.delivered, p.displayed, p.clicked, p.failed)
        workflow.set_current_details(
            funnel_details(
                self._state.value,
                rows,
                totals,
                self._next_stage if self._next_stage_at is not None else None,
                self._next_stage_at,
                self._error,
            )
        )
