"""A journey continues-as-new before Temporal's signal cap without losing its timing, and
recorded journey histories replay deterministically against the current workflow code."""

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowExecutionStatus, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from api.journeys import start_journey
from relance import ledger
from relance.journey import JourneyResult, plan_for
from relance.models import PushRequest
from relance.simulator import Behaviour
from tests.stack import Stack, eventually, inprocess_stack
from tests.workflows.test_push_journey import DEVICES, NEWS, push_body, stages_done
from workflows.push_journey import PushJourney
from workflows.scheduled_push import ScheduledPush

HISTORIES = Path(__file__).parent.parent / "histories"


async def test_journey_continues_as_new_and_keeps_its_schedule(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    behaviour = Behaviour(
        clicks_at={"dev-00": 0}, p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=10
    )
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        key = stack.app_key
        request = PushRequest.model_validate(push_body(NEWS))
        push = ledger.accept_push(stack.engine, key, request).push
        plan = plan_for(push.msg_id, key, request).model_copy(update={"signals_per_run": 3})
        handle = await start_journey(time_env.client, task_queue, plan)
        first_run = handle.result_run_id
        await eventually(lambda: stages_done(time_env, push.msg_id, 1))
        # A storm of (duplicate) progress signals during the trigger window.
        for _ in range(7):
            await handle.signal(
                PushJourney.record_progress, ledger.progress(stack.engine, push.msg_id)
            )
        first = time_env.client.get_workflow_handle(handle.id, run_id=first_run)
        await eventually(lambda: _continued(first))
        result = await handle.result()

    assert result.state == "completed"
    assert [s.stage for s in result.stages] == [0, 1, 2]
    start_at = result.stages[0].sent_at
    assert [s.scheduled_at - start_at for s in result.stages] == [
        timedelta(0),
        timedelta(hours=3),
        timedelta(hours=5),
    ]
    assert [s.sent for s in result.stages] == [len(DEVICES), len(DEVICES) - 1, len(DEVICES) - 1]

    histories = [
        await first.fetch_history(),
        await time_env.client.get_workflow_handle(handle.id).fetch_history(),
    ]
    replayer = Replayer(
        # scheduled-push.json is a firing of a schedule (tests/e2e/test_schedules.py).
        workflows=[PushJourney, ScheduledPush],
        data_converter=pydantic_data_converter,
        # In the sandbox, which the worker skips for speed: a non-deterministic call on any
        # recorded path fails here.
        workflow_runner=SandboxedWorkflowRunner(),
    )
    for history in histories:
        await replayer.replay_workflow(history)
    # RELANCE_RECORD_HISTORIES=news-local records news-local-continued.json and
    # news-local-final.json: a new name for each new path, so older histories stay.
    prefix = os.environ.get("RELANCE_RECORD_HISTORIES")
    if prefix:
        for name, history in zip(("continued", "final"), histories, strict=True):
            (HISTORIES / f"{prefix}-{name}.json").write_text(history.to_json())


async def _continued(handle: object) -> bool:
    description = await handle.describe()  # type: ignore[attr-defined]
    return bool(description.status == WorkflowExecutionStatus.CONTINUED_AS_NEW)


async def test_recorded_histories_replay_on_the_current_code() -> None:
    files = sorted(HISTORIES.glob("*.json"))
    assert files, "no recorded histories: run with RELANCE_RECORD_HISTORIES=1 once"
    replayer = Replayer(
        # scheduled-push.json is a firing of a schedule (tests/e2e/test_schedules.py).
        workflows=[PushJourney, ScheduledPush],
        data_converter=pydantic_data_converter,
        # In the sandbox, which the worker skips for speed: a non-deterministic call on any
        # recorded path fails here.
        workflow_runner=SandboxedWorkflowRunner(),
    )
    for path in files:
        history = WorkflowHistory.from_json(f"push-{path.stem}", path.read_text())
        await replayer.replay_workflow(history)


async def _news_push(
    time_env: WorkflowEnvironment, stack: Stack, others: list[dict[str, Any]] | None = None
) -> tuple[str, WorkflowHandle[Any, Any], JourneyResult]:
    """DEVICES tagged "news" (and `others`), NEWS pushed to the tag, and the journey run past
    its last stage (5h) and observation window (the 2h trigger window). Not start_workflow's
    handle, so no automatic time-skipping while waiting on the result."""
    devices = [{"registration_id": rid, "tags": ["news"]} for rid in DEVICES] + (others or [])
    (await stack.api.post("/v4/devices", json={"devices": devices})).raise_for_status()
    body = push_body(NEWS)
    body["to"] = {"tag": ["news"]}
    accepted = await stack.api.post("/v4/push", json=body)
    assert accepted.status_code == 200, accepted.text
    msg_id = accepted.json()["msg_id"]
    handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
    await time_env.sleep(timedelta(hours=8))
    return msg_id, handle, await handle.result()


async def _replays(history: WorkflowHistory) -> None:
    """The history replays on the current code, in the sandbox."""
    replayer = Replayer(
        workflows=[PushJourney],
        data_converter=pydantic_data_converter,
        workflow_runner=SandboxedWorkflowRunner(),
    )
    await replayer.replay_workflow(history)


async def test_a_tag_journey_materialises_its_audience_and_replays(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    behaviour = Behaviour(p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=10)
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        other = {"registration_id": "other", "tags": ["sport"]}
        msg_id, handle, result = await _news_push(time_env, stack, [other])
        got = {m["registration_id"]: m["received"] for m in stack.fleet.messages(msg_id, 0)}

    assert result.state == "completed"
    assert result.funnel.recipients == len(DEVICES)
    assert got == dict.fromkeys(DEVICES, 1)  # the tag's devices, each once; not "other"
    history = await handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    # An audience of one chunk (fewer devices than a shard): written, then sent as any stage.
    assert scheduled[:2] == ["materialise_chunk", "send_stage"]
    await _replays(history)
    prefix = os.environ.get("RELANCE_RECORD_HISTORIES")
    if prefix:
        (HISTORIES / f"{prefix}-tag.json").write_text(history.to_json())  # e.g. news-tag.json


async def test_a_sharded_stage_goes_out_as_several_activities_and_replays(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    """With shards of 3, a 10-device tag push's audience is written in 4 chunks, each sent as
    soon as it is written (while the next is written); each resend stage goes out as 3
    send_stage activities at once (after a plan_stage). Every device gets each stage once, and
    the history replays."""
    behaviour = Behaviour(p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=10)
    async with inprocess_stack(
        time_env.client, tmp_path, task_queue, behaviour, send_shard_size=3
    ) as stack:
        msg_id, handle, result = await _news_push(time_env, stack)
        got = [
            {m["registration_id"]: m["received"] for m in stack.fleet.messages(msg_id, stage)}
            for stage in range(3)
        ]

    assert result.state == "completed"
    assert [s.sent for s in result.funnel.stages] == [10, 10, 10]
    assert got == [dict.fromkeys(DEVICES, 1)] * 3  # each device, each stage, once
    history = await handle.fetch_history()
    sends = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    names = [a.activity_type.name for a in sends]
    # Stage 0: each chunk's send is scheduled right after the chunk, before the next chunk;
    # 10 devices in chunks of 3, 3, 3 and 1 (the short one is the last: no 5th).
    assert names[:8] == ["materialise_chunk", "send_stage"] * 4
    assert names[8:] == ["read_stage"] + ["plan_stage", *["send_stage"] * 3] * 2 + [
        "finish_journey"
    ]
    chunks = [
        json.loads(a.input.payloads[0].data)
        for a in sends[:8]
        if a.activity_type.name == "send_stage"
    ]
    # Delivery-id ranges that follow each other from 0: together, every stage-0 delivery.
    bounds = [(c["after_id"], c["upto_id"]) for c in chunks]
    assert bounds[0][0] == 0
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bounds, bounds[1:], strict=False))
    # The shards wait on a queue of their own, a few at a time per worker (send_shard_slots).
    queues = {a.task_queue.name for a in sends if a.activity_type.name == "send_stage"}
    assert queues == {f"{task_queue}-shards"}
    await _replays(history)
    prefix = os.environ.get("RELANCE_RECORD_HISTORIES")
    if prefix:
        (HISTORIES / f"{prefix}-sharded.json").write_text(history.to_json())


async def test_a_big_audience_comes_in_at_most_send_max_shards_chunks(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    """Each chunk of a streamed audience is one send: with shards of 3 and at most 2, the
    first chunk has 3 of the 10 devices and says the next has the other 7, and the journey
    asks for that. Two sends, not four; every device gets stage 0 once, and the history
    replays (recorded as news-stream-capped.json)."""
    behaviour = Behaviour(p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=10)
    async with inprocess_stack(
        time_env.client, tmp_path, task_queue, behaviour, send_shard_size=3, send_max_shards=2
    ) as stack:
        msg_id, handle, result = await _news_push(time_env, stack)
        got = {m["registration_id"]: m["received"] for m in stack.fleet.messages(msg_id, 0)}

    assert result.state == "completed"
    assert got == dict.fromkeys(DEVICES, 1)
    history = await handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    # The second chunk had exactly the 7 it asked for, so one more (empty) chunk tells the
    # end, and starts no send.
    assert [a.activity_type.name for a in scheduled[:6]] == [
        *["materialise_chunk", "send_stage"] * 2,
        "materialise_chunk",
        "read_stage",
    ]
    asked = [json.loads(a.input.payloads[0].data) for a in scheduled[:4]]
    assert [asked[0].get("limit"), asked[2]["limit"]] == [None, 7]
    sizes = [a["upto_id"] - a["after_id"] for a in (asked[1], asked[3])]
    assert sizes == [3, 7]
    await _replays(history)
    if os.environ.get("RELANCE_RECORD_HISTORIES"):
        (HISTORIES / "news-stream-capped.json").write_text(history.to_json())
