"""PushJourney on the time-skipping server with real durations: who gets each stage, with what
content, at what time; clicks between stages; early end; cancel."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from relance import ledger
from relance.journey import JourneyResult, JourneyStatus
from relance.simulator import Behaviour
from tests.stack import Stack, eventually, inprocess_stack
from workflows.push_journey import PushJourney

DEVICES = [f"dev-{i:02d}" for i in range(10)]
INTERESTS = {rid: {"interests": ["Sneakers"]} for rid in DEVICES[:5]}  # the rest have none

NEWS = {
    "trigger": {"condition": "not_clicked", "within": "2h"},
    "stages": [
        {"after": "1h", "notification": {"title": "Still on: today's top story"}},
        {"after": "3h", "notification": {"append": "3 more stories since this morning"}},
    ],
}
ECOMMERCE = {
    "trigger": {"condition": "not_clicked", "within": "6h"},
    "stages": [
        {"after": "2h", "notification": {"alert": "Limited offer: best sellers almost out"}},
        {
            "after": "5h",
            "notification": {
                "alert": "Exclusive coupon: save $5 more",
                "template": "{{ interests[0] }} are on sale now",
            },
        },
    ],
}


def push_body(resend: dict[str, Any], rids: list[str] = DEVICES) -> dict[str, Any]:
    return {
        "from": "push",
        "to": {"registration_id": rids},
        "body": {
            "platform": "android",
            "notification": {
                "android": {"title": "Morning", "alert": "Flash sale: best sellers almost gone"}
            },
        },
        "request_id": "r-1",
        "resend": resend,
    }


async def start(stack: Stack, resend: dict[str, Any]) -> str:
    devices = [{"registration_id": rid, "attributes": INTERESTS.get(rid, {})} for rid in DEVICES]
    (await stack.api.post("/v4/devices", json={"devices": devices})).raise_for_status()
    response = await stack.api.post("/v4/push", json=push_body(resend))
    assert response.status_code == 200, response.text
    return str(response.json()["msg_id"])


async def stages_done(env: WorkflowEnvironment, msg_id: str, n: int) -> bool:
    status: JourneyStatus = await env.client.get_workflow_handle(f"push-{msg_id}").query(
        PushJourney.status
    )
    return len(status.stages) >= n


def clicked(stack: Stack, msg_id: str, n: int) -> bool:
    return ledger.progress(stack.engine, msg_id).clicked >= n and not stack.fleet.pending


@pytest.mark.parametrize(
    ("resend", "stage_hours"), [(NEWS, (3, 5)), (ECOMMERCE, (8, 11))], ids=["news", "ecommerce"]
)
async def test_resends_reach_exactly_who_did_not_click_on_time(
    time_env: WorkflowEnvironment,
    tmp_path: Path,
    task_queue: str,
    resend: dict[str, Any],
    stage_hours: tuple[int, int],
) -> None:
    # dev-00 and dev-01 click stage 0; dev-02 clicks stage 1, between stage 1 and stage 2.
    behaviour = Behaviour(
        clicks_at={"dev-00": 0, "dev-01": 0, "dev-02": 1},
        p_click=[0.0],
        p_fail=0.0,
        min_delay_ms=1,
        max_delay_ms=20,
    )
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        msg_id = await start(stack, resend)
        handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        await eventually(lambda: stages_done(time_env, msg_id, 1))
        await eventually(lambda: clicked(stack, msg_id, 2))
        # Into the gap between stage 1 and stage 2.
        await time_env.sleep(timedelta(hours=stage_hours[0], minutes=30))
        await eventually(lambda: stages_done(time_env, msg_id, 2))
        await eventually(lambda: clicked(stack, msg_id, 3))
        # Past stage 2 and its observation window, the trigger window (the handle is not the
        # one start_workflow returned: skip time explicitly).
        observe = timedelta(hours=2 if resend is NEWS else 6)
        await time_env.sleep(timedelta(hours=stage_hours[1] - stage_hours[0]) + observe)
        result: JourneyResult = await handle.result()

        assert result.state == "completed"
        assert [s.stage for s in result.stages] == [0, 1, 2]
        start_at = result.stages[0].sent_at
        assert result.stages[1].scheduled_at - start_at == timedelta(hours=stage_hours[0])
        assert result.stages[2].scheduled_at - start_at == timedelta(hours=stage_hours[1])
        for stage in result.stages:
            assert timedelta(0) <= stage.sent_at - stage.scheduled_at < timedelta(seconds=5)

        fleet = stack.fleet
        got = {
            stage: {m["registration_id"]: m for m in fleet.messages(msg_id, stage)}
            for stage in (0, 1, 2)
        }
        assert set(got[0]) == set(DEVICES)
        assert set(got[1]) == set(DEVICES) - {"dev-00", "dev-01"}
        assert set(got[2]) == set(DEVICES) - {"dev-00", "dev-01", "dev-02"}
        assert all(m["received"] == 1 for stage in got.values() for m in stage.values())
        if resend is NEWS:
            assert {m["title"] for m in got[1].values()} == {"Still on: today's top story"}
            assert {m["alert"] for m in got[2].values()} == {
                "Flash sale: best sellers almost gone\n3 more stories since this morning"
            }
            assert {m["title"] for m in got[2].values()} == {"Still on: today's top story"}
        else:
            assert {m["alert"] for m in got[1].values()} == {
                "Limited offer: best sellers almost out"
            }
            # The template where the device has the attribute, the plain text where it has not.
            assert got[2]["dev-03"]["alert"] == "Sneakers are on sale now"
            assert got[2]["dev-07"]["alert"] == "Exclusive coupon: save $5 more"
        assert result.funnel.clicked == 3
        assert result.funnel.clicked_after_resend == 1
        assert [s.sent for s in result.funnel.stages] == [10, 8, 7]


async def test_journey_ends_early_when_everyone_clicked(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    behaviour = Behaviour(clicks_at=dict.fromkeys(DEVICES, 0), min_delay_ms=1, max_delay_ms=20)
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        msg_id = await start(stack, NEWS)
        handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        await eventually(lambda: clicked(stack, msg_id, len(DEVICES)))
        result: JourneyResult = await handle.result()
        assert result.state == "completed"
        assert [s.stage for s in result.stages] == [0]
        ended = (await handle.describe()).close_time
        assert ended is not None and ended - result.stages[0].sent_at < timedelta(hours=2)
        assert stack.fleet.messages(msg_id, 1) == []


async def test_delete_stops_pending_resends(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    behaviour = Behaviour(p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=20)
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        msg_id = await start(stack, NEWS)
        handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        await eventually(lambda: stages_done(time_env, msg_id, 1))
        response = await stack.api.delete(f"/v4/push/{msg_id}")
        assert response.status_code == 200, response.text
        result: JourneyResult = await handle.result()
        assert result.state == "cancelled"
        assert [s.stage for s in result.stages] == [0]
        status = (await stack.api.get(f"/v4/push/{msg_id}")).json()
        assert status["state"] == "cancelled"
        again = await stack.api.delete(f"/v4/push/{msg_id}")
        assert again.status_code == 409
