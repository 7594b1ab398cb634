"""ScheduledPush: what each firing of an EngageLab schedule's Temporal Schedule runs. It accepts
the schedule's push in the ledger (an activity, idempotent per firing) and starts that push's
PushJourney, `push-<msg_id>`, as a child it abandons: the journey outlives the firing, which
ends as soon as the push is on its way. In the Temporal UI a journey links to its firing."""

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from activities.schedules import ScheduleActivities
    from relance.journey import JourneyInput
    from relance.scheduling import FireInput, FireResult, FiringInput
    from relance.states import JourneyState
    from workflows.push_journey import PushJourney, search_attributes

# Set by Temporal on every workflow a schedule starts: the firing's nominal time.
SCHEDULED_AT = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def temporal_schedule_id(app_key: str, schedule_id: str) -> str:
    return f"schedule-{app_key}-{schedule_id}"


@workflow.defn
class ScheduledPush:
    @workflow.run
    async def run(self, inp: FiringInput) -> FireResult:
        info = workflow.info()
        scheduled_at: datetime = info.typed_search_attributes.get(SCHEDULED_AT) or workflow.now()
        # A schedule names its workflows `<action id>-<nominal time>`: one name per firing.
        prefix = temporal_schedule_id(inp.app_key, inp.schedule_id) + "-"
        key = (
            info.workflow_id.removeprefix(prefix)
            if info.workflow_id.startswith(prefix)
            else (scheduled_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
        )
        result = await workflow.execute_activity_method(
            ScheduleActivities.fire_schedule,
            FireInput(
                app_key=inp.app_key,
                schedule_id=inp.schedule_id,
                firing_key=key,
                scheduled_at=scheduled_at,
            ),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            summary=f"fire schedule {inp.schedule_id} ({key}): accept its push",
        )
        if result.plan is None:
            workflow.set_current_details(f"no push: {result.skipped}")
            return result
        workflow.set_current_details(
            f"push `{result.plan.msg_id}`: its journey is `push-{result.plan.msg_id}`"
        )
        try:
            await workflow.start_child_workflow(
                PushJourney.run,
                JourneyInput(plan=result.plan),
                id=f"push-{result.plan.msg_id}",
                task_queue=info.task_queue,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=search_attributes(
                    result.plan.msg_id, result.plan.app_key, JourneyState.sending
                ),
                static_summary=result.summary,
                static_details=result.details,
            )
        except WorkflowAlreadyStartedError:
            pass  # this push's journey already runs: the firing's work is done
        return result
