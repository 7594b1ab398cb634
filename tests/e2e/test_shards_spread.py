"""A big stage's shards go to every worker of the queue. With Temporal's eager activity
execution (settings.worker_eager_activities, off by default) up to three of them went straight
to the worker that planned the stage: splits of 1/7, 2/6 and 2/6 in three runs of this test,
against 4/4, 3/5 and 3/5 with it off. Eight shards over ten pollers split too randomly for a
threshold on the balance that never fails by chance, so this asserts that both workers send
and that every device gets the stage; bench_fanout.py --workers 2 measures the balance (CPU
per worker).

With the SDK's 100 activity slots, a worker also took as many shards as it could poll (one of
two sent three quarters of a 100,000-recipient stage). Shards now wait on a queue of their
own, which each worker serves with RELANCE_SEND_SHARD_SLOTS slots: the history's start and
completion times show that no worker ran more at once."""

from datetime import datetime
from pathlib import Path

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.testing import WorkflowEnvironment

from relance.journey import shard_queue
from tests.e2e.conftest import push_to_tag, relance_stack
from tests.stack import eventually


async def test_the_shards_of_a_stage_spread_over_both_workers(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    size = 2_000
    env = {
        "RELANCE_SEND_SHARD_SIZE": "250",
        "RELANCE_SEND_MAX_SHARDS": "8",
        "RELANCE_SEND_SHARD_SLOTS": "2",
    }
    with relance_stack(
        dev_server.client, tmp_path, ["--send-latency-ms", "20"], batch_size=50, extra_env=env
    ) as stack:
        stack.add_worker()
        queue = shard_queue(stack.task_queue)

        async def activity_pollers() -> set[str]:
            described = await stack.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=stack.client.namespace,
                    task_queue=TaskQueue(name=queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
                )
            )
            return {p.identity for p in described.pollers}

        await eventually(lambda: _two(activity_pollers), timeout=60)
        async with stack.api() as api:
            recipients = [f"spread-{i:04d}" for i in range(size)]
            msg_id = await push_to_tag(api, recipients, "spread", "Spread")

            async def completed() -> bool:
                return (await api.get(f"/v4/push/{msg_id}")).json()["state"] == "completed"

            await eventually(completed, timeout=180)
            funnel = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]
        scheduled: dict[int, str] = {}
        started: dict[int, str] = {}
        spans: dict[int, list[datetime]] = {}
        async for e in stack.client.get_workflow_handle(f"push-{msg_id}").fetch_history_events():
            if e.HasField("activity_task_scheduled_event_attributes"):
                scheduled[e.event_id] = (
                    e.activity_task_scheduled_event_attributes.activity_type.name
                )
            if e.HasField("activity_task_started_event_attributes"):
                a = e.activity_task_started_event_attributes
                started[a.scheduled_event_id] = a.identity
                spans[a.scheduled_event_id] = [e.event_time.ToDatetime()]
            if e.HasField("activity_task_completed_event_attributes"):
                done = e.activity_task_completed_event_attributes.scheduled_event_id
                spans[done].append(e.event_time.ToDatetime())
    shards = [started[i] for i, name in scheduled.items() if name == "send_stage"]
    assert len(shards) == 8
    assert len(set(shards)) == 2, f"every shard went to one worker: {shards}"
    assert funnel["stages"][0]["sent"] == size
    for worker in set(shards):
        mine = [
            spans[i]
            for i, name in scheduled.items()
            if name == "send_stage" and started[i] == worker
        ]
        assert all(len(span) == 2 for span in mine), "a shard did not complete"
        assert _most_at_once(mine) <= 2, f"{worker} ran more shards at once than its 2 slots"


def _most_at_once(spans: list[list[datetime]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


async def _two(pollers: object) -> bool:
    return len(await pollers()) >= 2  # type: ignore[operator]
