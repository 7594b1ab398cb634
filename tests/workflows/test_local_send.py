"""A small push sends each stage as a local activity inside the workflow task, and hands what a
provider asked to retry to a regular activity after a durable timer; a large one, or one whose
plan says otherwise, uses the regular activity. Nobody gets a stage twice either way."""

from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from api.journeys import start_journey
from relance import ledger
from relance.journey import plan_for
from relance.models import PushRequest
from relance.simulator import Behaviour
from tests.stack import inprocess_stack
from tests.workflows.test_push_journey import NEWS, push_body

QUIET = Behaviour(p_click=[0.0], p_display=0.0, p_fail=0.0, min_delay_ms=1, max_delay_ms=5)


async def _send_activities(handle: WorkflowHandle) -> tuple[int, int, int]:  # type: ignore[type-arg]
    """(local activity markers, regular send_stage activities, timers) in the history."""
    markers = regular = timers = 0
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            markers += event.marker_recorded_event_attributes.marker_name == "core_local_activity"
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            regular += attributes.activity_type.name == "send_stage"
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            timers += 1
    return markers, regular, timers


async def _journey(
    env: WorkflowEnvironment, tmp_path: Path, task_queue: str, rids: list[str], local: bool
) -> tuple[tuple[int, int, int], dict[int, dict[str, int]]]:
    async with inprocess_stack(env.client, tmp_path, task_queue, QUIET) as stack:
        devices = [{"registration_id": rid} for rid in rids]
        (await stack.api.post("/v4/devices", json={"devices": devices})).raise_for_status()
        request = PushRequest.model_validate(push_body(NEWS, rids))
        push = ledger.accept_push(stack.engine, stack.app_key, request).push
        plan = plan_for(push.msg_id, stack.app_key, request)
        assert plan.local_send  # a few listed devices
        handle = await start_journey(
            env.client, task_queue, plan.model_copy(update={"local_send": local})
        )
        result = await handle.result()
        assert result.state == "completed"
        received = {
            stage: {
                m["registration_id"]: m["received"]
                for m in stack.fleet.messages(push.msg_id, stage)
            }
            for stage in (0, 1, 2)
        }
        return await _send_activities(handle), received


async def test_a_small_push_sends_each_stage_inside_the_workflow_task(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    rids = [f"dev-{i}" for i in range(5)]
    (markers, regular, _), received = await _journey(time_env, tmp_path, task_queue, rids, True)
    assert (markers, regular) == (3, 0)  # stage 0 and both resends, no activity task
    assert all(received[s] == dict.fromkeys(rids, 1) for s in (0, 1, 2))


async def test_a_plan_without_local_send_uses_regular_activities(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    rids = [f"dev-{i}" for i in range(5)]
    (markers, regular, _), received = await _journey(time_env, tmp_path, task_queue, rids, False)
    assert (markers, regular) == (0, 3)
    assert all(received[s] == dict.fromkeys(rids, 1) for s in (0, 1, 2))


async def test_what_a_provider_asks_to_retry_goes_to_a_regular_activity_after_a_timer(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    rids = ["dev-0", "busy-0", "dev-1"]  # busy-0: "try again in a minute", once per stage
    (markers, regular, timers), received = await _journey(
        time_env, tmp_path, task_queue, rids, True
    )
    assert (markers, regular) == (3, 3)  # each stage: a local pass, then the regular activity
    assert timers >= 3 + 2  # the three waits for the provider, and the two stage timers
    assert all(received[s] == dict.fromkeys(rids, 1) for s in (0, 1, 2))
