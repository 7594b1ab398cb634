"""Holdouts, A/B variants and the observation window, through a real journey on the
time-skipping server: the held-out receive nothing yet are in the ledger as held_out; each
variant's content reaches the (simulated) devices, a delayed variant only after its delay; the
journey keeps observing after its last stage, so its result counts that stage's clicks. Each
new path's history replays and is recorded under the `funnel-` prefix."""

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from api.journeys import start_journey
from relance import ledger
from relance.assignment import Split, held_out, variant
from relance.db import Delivery
from relance.journey import JourneyResult, JourneyStatus, plan_for
from relance.models import PushRequest
from relance.simulator import Behaviour
from tests.stack import Stack, eventually, inprocess_stack
from tests.workflows.test_push_journey import stages_done
from workflows.push_journey import PushJourney

HISTORIES = Path(__file__).parent.parent / "histories"
DEVICES = [f"dev-{i:02d}" for i in range(40)]


async def start(stack: Stack, body: dict[str, Any], **options: Any) -> str:
    devices = [{"registration_id": rid} for rid in DEVICES]
    (await stack.api.post("/v4/devices", json={"devices": devices})).raise_for_status()
    notification = {"android": {"alert": "Flash sale", "title": "Hi"}}
    payload = {
        "to": {"registration_id": DEVICES},
        "body": {"platform": "android", "notification": notification, "options": options},
        **body,
    }
    response = await stack.api.post("/v4/push", json=payload)
    assert response.status_code == 200, response.text
    return str(response.json()["msg_id"])


def deliveries(stack: Stack, msg_id: str, stage: int) -> dict[str, Delivery]:
    with Session(stack.engine) as session:
        rows = session.exec(
            select(Delivery).where(Delivery.msg_id == msg_id, col(Delivery.stage) == stage)
        ).all()
    return {d.registration_id: d for d in rows}


def received(stack: Stack, msg_id: str, stage: int) -> dict[str, dict[str, Any]]:
    return {m["registration_id"]: m for m in stack.fleet.messages(msg_id, stage)}


async def replay_and_record(handle: WorkflowHandle[Any, Any], name: str) -> None:
    history = await handle.fetch_history()
    replayer = Replayer(
        workflows=[PushJourney],
        data_converter=pydantic_data_converter,
        workflow_runner=SandboxedWorkflowRunner(),
    )
    await replayer.replay_workflow(history)
    # RELANCE_RECORD_HISTORIES=funnel records funnel-<name>.json (replayed by
    # test_continue_and_replay.test_recorded_histories_replay_on_the_current_code).
    prefix = os.environ.get("RELANCE_RECORD_HISTORIES")
    if prefix:
        (HISTORIES / f"{prefix}-{name}.json").write_text(history.to_json())


async def test_held_out_recipients_receive_nothing_yet_are_recorded_as_held_out(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    behaviour = Behaviour(p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=10)
    resend = {
        "trigger": {"condition": "not_clicked", "within": "1h"},
        "stages": [{"after": "1h", "notification": {"alert": "Last chance"}}],
        "holdout": 0.25,
        "observe": "30m",
    }
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        msg_id = await start(stack, {"resend": resend})
        handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        await eventually(lambda: stages_done(time_env, msg_id, 1))
        await time_env.sleep(timedelta(hours=2, minutes=31))  # stage 1, then its observation
        result: JourneyResult = await handle.result()
        stage1 = deliveries(stack, msg_id, 1)
        got = received(stack, msg_id, 1)
        await replay_and_record(handle, "holdout")

    expected_out = {r for r in DEVICES if held_out(msg_id, r, 1, 0.25)}
    assert 0 < len(expected_out) < len(DEVICES)  # the seeded draw holds out some, not all
    assert {r for r, d in stage1.items() if d.status == "held_out"} == expected_out
    assert set(stage1) == set(DEVICES)  # every eligible recipient has a stage-1 delivery
    assert set(got) == set(DEVICES) - expected_out  # the held-out received nothing
    assert all(m["received"] == 1 for m in got.values())
    assert set(received(stack, msg_id, 0)) == set(DEVICES)  # stage 0 has no holdout
    assert result.state == "completed"
    assert [(s.stage, s.sent, s.held_out) for s in result.stages] == [
        (0, len(DEVICES), 0),
        (1, len(DEVICES) - len(expected_out), len(expected_out)),
    ]
    funnel = result.funnel.stages[1]
    assert (funnel.targeted, funnel.held_out) == (len(DEVICES), len(expected_out))


async def test_variants_content_and_delay_reach_devices_and_the_last_stage_is_observed(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    # Clicks are reported ~1 s (real time) after the send: after a journey that did not
    # observe would have finished.
    clicker = "dev-05"
    behaviour = Behaviour(
        clicks_at={clicker: 1}, p_click=[0.0], p_fail=0.0, min_delay_ms=300, max_delay_ms=400
    )
    variants = [
        {"name": "A", "weight": 60, "notification": {"alert": "Save 10% today"}},
        {
            "name": "B",
            "weight": 40,
            "notification": {"title": "Free shipping", "append": "Ends tonight"},
            "delay": "30m",
        },
    ]
    resend = {
        "trigger": {"condition": "not_clicked", "within": "1h"},
        "stages": [
            {
                "after": "1h",
                "notification": {"alert": "Still on"},
                "variants": [
                    {"name": "A", "weight": 1, "notification": {"append": "(A)"}},
                    {"name": "B", "weight": 1, "notification": {"append": "(B)"}},
                ],
            }
        ],
        "observe": "2h",
    }
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        msg_id = await start(stack, {"variants": variants, "resend": resend})
        handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        split = Split(("A", "B"), (60.0, 40.0))
        group = {r: variant(msg_id, r, split) for r in DEVICES}
        a = {r for r in DEVICES if group[r] == "A"}
        assert a and a != set(DEVICES)
        await eventually(lambda: set(received(stack, msg_id, 0)) == a)
        await time_env.sleep(timedelta(minutes=20))
        assert set(received(stack, msg_id, 0)) == a  # B waits for its delay
        await time_env.sleep(timedelta(minutes=11))
        await eventually(lambda: set(received(stack, msg_id, 0)) == set(DEVICES))
        await eventually(lambda: stages_done(time_env, msg_id, 1))
        stage0 = deliveries(stack, msg_id, 0)
        got0 = received(stack, msg_id, 0)

        await time_env.sleep(timedelta(hours=1, minutes=40))  # to stage 1 (2h after stage 0)
        await eventually(lambda: stages_done(time_env, msg_id, 2))
        await eventually(lambda: ledger.progress(stack.engine, msg_id).clicked == 1)
        status: JourneyStatus = await handle.query(PushJourney.status)
        assert status.state == "waiting" and status.observe_until is not None
        assert status.next_stage is None  # no stage left: observing
        shown = (await stack.api.get(f"/v4/push/{msg_id}")).json()
        assert (shown["state"], shown["observe_until"]) == (
            "waiting",
            status.observe_until.isoformat().replace("+00:00", "Z"),
        )
        await time_env.sleep(timedelta(hours=2, minutes=1))
        result: JourneyResult = await handle.result()
        stage1 = deliveries(stack, msg_id, 1)
        got1 = received(stack, msg_id, 1)
        await replay_and_record(handle, "variants-observed")

    assert {r: d.variant for r, d in stage0.items()} == group
    for rid, message in got0.items():
        if group[rid] == "A":
            assert (message["title"], message["alert"]) == ("Hi", "Save 10% today")
        else:
            assert (message["title"], message["alert"]) == (
                "Free shipping",
                "Flash sale\nEnds tonight",
            )
    # Sticky: the same names at stage 1 (other weights): everyone keeps their variant, and
    # stage 1's content builds on the stage's, not on stage 0's variant.
    assert {r: d.variant for r, d in stage1.items()} == group
    for rid, message in got1.items():
        assert message["alert"] == f"Still on\n({group[rid]})"
    # The observation window: the last stage's click, reported after its send, is counted.
    assert result.state == "completed"
    assert result.funnel.stages[1].clicked == 1
    assert result.funnel.clicked_after_resend == 1
    assert result.funnel.stages[1].delivered == len(DEVICES)


async def test_a_journey_continued_as_new_while_observing_keeps_its_deadline(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    behaviour = Behaviour(p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=10)
    resend = {
        "trigger": {"condition": "not_clicked", "within": "1h"},
        "stages": [{"after": "1h"}],
        "holdout": 0.2,
        "observe": "3h",
    }
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        devices = [{"registration_id": rid} for rid in DEVICES]
        (await stack.api.post("/v4/devices", json={"devices": devices})).raise_for_status()
        request = PushRequest.model_validate(
            {
                "to": {"registration_id": DEVICES},
                "body": {"notification": {"alert": "Flash sale"}},
                "resend": resend,
            }
        )
        push = ledger.accept_push(stack.engine, stack.app_key, request).push
        plan = plan_for(push.msg_id, stack.app_key, request)
        handle = await start_journey(
            time_env.client, task_queue, plan.model_copy(update={"signals_per_run": 3})
        )
        first_run = handle.result_run_id
        await eventually(lambda: stages_done(time_env, push.msg_id, 1))
        await time_env.sleep(timedelta(hours=2, minutes=1))
        await eventually(lambda: stages_done(time_env, push.msg_id, 2))
        status: JourneyStatus = await handle.query(PushJourney.status)
        assert status.observe_until is not None
        # A storm of (duplicate) progress signals while observing: the run continues-as-new.
        for _ in range(4):
            await handle.signal(
                PushJourney.record_progress, ledger.progress(stack.engine, push.msg_id)
            )
        first = time_env.client.get_workflow_handle(handle.id, run_id=first_run)
        await eventually(lambda: _continued(first))
        await time_env.sleep(timedelta(hours=3, minutes=1))
        result: JourneyResult = await time_env.client.get_workflow_handle_for(
            PushJourney.run, handle.id
        ).result()
        ended = (await time_env.client.get_workflow_handle(handle.id).describe()).close_time
        histories = [
            await first.fetch_history(),
            await time_env.client.get_workflow_handle(handle.id).fetch_history(),
        ]

    assert result.state == "completed"
    assert [s.stage for s in result.stages] == [0, 1]
    assert result.stages[1].held_out == result.funnel.stages[1].held_out > 0
    # The new run waited out what was left of the window, not a whole new window.
    assert ended is not None
    assert timedelta(hours=3) <= ended - result.stages[1].sent_at < timedelta(hours=3, minutes=5)
    replayer = Replayer(
        workflows=[PushJourney],
        data_converter=pydantic_data_converter,
        workflow_runner=SandboxedWorkflowRunner(),
    )
    for history in histories:
        await replayer.replay_workflow(history)
    prefix = os.environ.get("RELANCE_RECORD_HISTORIES")
    if prefix:
        for name, history in zip(("observe-continued", "observe-final"), histories, strict=True):
            (HISTORIES / f"{prefix}-{name}.json").write_text(history.to_json())


async def _continued(handle: WorkflowHandle[Any, Any]) -> bool:
    description = await handle.describe()
    return bool(description.status == WorkflowExecutionStatus.CONTINUED_AS_NEW)


async def test_a_timed_journey_holds_out_and_splits_too(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    # A throttle makes the journey timed (release slots): groups are decided there as well.
    behaviour = Behaviour(p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=10)
    resend = {
        "trigger": {"condition": "not_clicked", "within": "1h"},
        "stages": [{"after": "1h"}],
        "holdout": 0.3,
        "observe": "10m",
    }
    variants = [
        {"name": "A", "weight": 1, "notification": {"alert": "alpha"}},
        {"name": "B", "weight": 1, "notification": {"alert": "beta"}},
    ]
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        msg_id = await start(
            stack, {"variants": variants, "resend": resend}, throttle_per_minute=10_000
        )
        handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        await eventually(lambda: stages_done(time_env, msg_id, 1))
        await time_env.sleep(timedelta(hours=2, minutes=11))
        result: JourneyResult = await handle.result()
        got0, got1 = received(stack, msg_id, 0), received(stack, msg_id, 1)
        await replay_and_record(handle, "timed")

    split = Split(("A", "B"), (1.0, 1.0))
    for rid, message in got0.items():
        assert message["alert"] == {"A": "alpha", "B": "beta"}[variant(msg_id, rid, split)]
    out = {r for r in DEVICES if held_out(msg_id, r, 1, 0.3)}
    assert set(got1) == set(DEVICES) - out
    assert result.stages[1].held_out == len(out)


async def test_a_cancel_during_a_variants_delay_sends_it_to_nobody(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    behaviour = Behaviour(p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=10)
    variants = [
        {"name": "now", "weight": 1, "notification": {"alert": "now"}},
        {"name": "later", "weight": 1, "notification": {"alert": "later"}, "delay": "1h"},
    ]
    resend = {"trigger": {"condition": "not_clicked", "within": "2h"}, "stages": [{"after": "1h"}]}
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        msg_id = await start(stack, {"variants": variants, "resend": resend})
        handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        split = Split(("now", "later"), (1.0, 1.0))
        now = {r for r in DEVICES if variant(msg_id, r, split) == "now"}
        await eventually(lambda: set(received(stack, msg_id, 0)) == now)
        response = await stack.api.delete(f"/v4/push/{msg_id}")
        assert response.status_code == 200, response.text
        result: JourneyResult = await handle.result()
        await time_env.sleep(timedelta(hours=2))
        got = received(stack, msg_id, 0)

    assert result.state == "cancelled"
    assert set(got) == now  # "later" was never sent
    assert {d.status for r, d in deliveries(stack, msg_id, 0).items() if r not in now} == {
        "pending"
    }
