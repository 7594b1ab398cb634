"""Starting a journey: one place for the workflow id, the conflict policy and search attributes."""

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from relance.journey import JourneyInput, JourneyPlan, JourneyResult
from relance.states import JourneyState
from workflows.push_journey import PushJourney, search_attributes


def workflow_id(msg_id: str) -> str:
    return f"push-{msg_id}"


async def start_journey(
    client: Client, task_queue: str, plan: JourneyPlan
) -> WorkflowHandle[PushJourney, JourneyResult]:
    """Start PushJourney; a retried request reuses the running journey instead of a second one."""
    return await client.start_workflow(
        PushJourney.run,
        JourneyInput(plan=plan),
        id=workflow_id(plan.msg_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=search_attributes(plan.msg_id, plan.app_key, JourneyState.sending),
    )
