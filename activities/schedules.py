"""A schedule's firing: the same accept as `POST /v4/push` (the ledger records the push and
its audience), keyed by the firing so that a retried firing makes no second push."""

import asyncio

from sqlalchemy.engine import Engine
from temporalio import activity

from relance import ledger
from relance.describe import journey_labels
from relance.journey import plan_for
from relance.scheduling import (
    FireInput,
    FireResult,
    ScheduleTrigger,
    firing_request_id,
    on_cadence,
    push_for_firing,
)
from relance.timing import timing_for


class ScheduleActivities:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @activity.defn
    async def fire_schedule(self, inp: FireInput) -> FireResult:
        return await asyncio.to_thread(self._fire, inp)

    def _fire(self, inp: FireInput) -> FireResult:
        try:
            schedule = ledger.get_schedule(self.engine, inp.app_key, inp.schedule_id)
        except ledger.NotFound:
            return FireResult(skipped="the schedule was deleted")
        trigger = ScheduleTrigger.model_validate(schedule.trigger)
        zone = ledger.app_timezone(self.engine, inp.app_key)
        if trigger.periodical is not None and not on_cadence(
            trigger.periodical, zone, inp.scheduled_at
        ):
            return FireResult(skipped=f"not a firing of every {trigger.periodical.frequency}")
        request = push_for_firing(
            schedule.push, trigger, firing_request_id(inp.schedule_id, inp.firing_key)
        )
        try:
            accepted = ledger.accept_push(self.engine, inp.app_key, request)
        except ledger.LedgerError as exc:
            # Nobody to send to (today): a fact about this firing, not a fault to retry.
            ledger.record_firing(
                self.engine, inp.schedule_id, inp.firing_key, inp.scheduled_at, None, str(exc)
            )
            return FireResult(skipped=str(exc))
        msg_id = accepted.push.msg_id
        ledger.record_firing(self.engine, inp.schedule_id, inp.firing_key, inp.scheduled_at, msg_id)
        # The app's when-and-how-often policy applies as to any push (quiet hours, caps, ...).
        app = ledger.get_app(self.engine, inp.app_key)
        timing = timing_for(ledger.policy_of(app), request.body.options.overrides())
        labels = journey_labels(msg_id, request, timing, app.name)
        return FireResult(
            msg_id=msg_id,
            plan=plan_for(msg_id, inp.app_key, request, timing),
            summary=labels.summary,
            details=labels.details,
        )
