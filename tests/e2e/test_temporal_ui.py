"""A journey explains itself in the Temporal UI: a push made through the API has a summary
and Markdown details (what `describe()` returns to the UI), its timers and activities carry
labels in the history, and its current details are the live funnel. Dev server, real HTTP."""

from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from relance.simulator import Behaviour
from tests.stack import eventually, inprocess_stack

NOBODY_CLICKS = Behaviour(p_click=[0.0], p_display=1.0, p_fail=0.0, min_delay_ms=1, max_delay_ms=5)
DEVICES = [f"ui-{i:03d}" for i in range(60)]  # more than a local activity takes


def body() -> dict[str, Any]:
    return {
        "from": "push",
        "to": {"registration_id": DEVICES},
        "body": {
            "platform": "android",
            "notification": {"android": {"title": "Morning", "alert": "Today's top stories"}},
        },
        "resend": {
            "trigger": {"condition": "not_clicked", "within": "3s"},
            "stages": [
                {"after": "1s", "notification": {"title": "Still on: today's top story"}},
                {"after": "2s", "notification": {"append": "3 more stories"}},
            ],
        },
    }


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return meta.current_details


async def labels(client: Client, handle: WorkflowHandle[Any, Any]) -> dict[str, list[str]]:
    """The summaries of the history's timers and activities, by kind."""
    found: dict[str, list[str]] = {"timer": [], "activity": []}
    kinds = {
        EventType.EVENT_TYPE_TIMER_STARTED: "timer",
        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activity",
    }
    async for event in handle.fetch_history_events():
        kind = kinds.get(event.event_type)
        if kind and event.HasField("user_metadata"):
            summary = event.user_metadata.summary
            found[kind].append(client.data_converter.payload_converter.from_payload(summary, str))
    return found


async def test_a_journey_explains_itself_in_the_temporal_ui(
    dev_server: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    client = dev_server.client
    async with inprocess_stack(client, tmp_path, task_queue, NOBODY_CLICKS) as stack:
        devices = [{"registration_id": rid} for rid in DEVICES]
        (await stack.api.post("/v4/devices", json={"devices": devices})).raise_for_status()
        accepted = await stack.api.post("/v4/push", json=body())
        assert accepted.status_code == 200, accepted.text
        msg_id = accepted.json()["msg_id"]
        handle = client.get_workflow_handle(f"push-{msg_id}")

        desc = await handle.describe()
        assert await desc.static_summary() == (
            f"Push {msg_id[:4]}… · 60 devices · not clicked within 3s · 2 resends · test"
        )
        details = await desc.static_details()
        assert details is not None
        assert "| 0 | at once | **Morning** Today's top stories |" in details
        assert "| 1 (resend) | send + 4s | title **Still on: today's top story** |" in details
        assert "| 2 (resend) | send + 5s | append “3 more stories” |" in details
        assert "resend to whoever is still **not clicked**" in details
        assert not any(rid in details for rid in DEVICES)  # counts, never devices

        # After stage 0, while the trigger window runs: the funnel of stage 0 and what is next.
        waiting = await eventually(
            lambda: _matching(handle, "**waiting** · next: stage 1 at", "| 0 | 60 | 60 | 0 | 0 |")
        )
        assert "60 recipients" in waiting

        result = await handle.result()
        assert result["state"] == "completed"
        final = await current_details(handle)
        assert final.startswith("**completed**")
        # The final details are the funnel the journey ended with (late events may still come).
        funnel = result["funnel"]
        for stage in funnel["stages"]:
            row = (
                f"| {stage['stage']} | {stage['targeted']} | {stage['sent']} | {stage['failed']} "
                f"| {stage['skipped']} | {stage['delivered']} | {stage['clicked']} |"
            )
            assert row in final, (row, final)
        assert [s["sent"] for s in funnel["stages"]] == [60, 60, 60]

        found = await labels(client, handle)
        assert len(found["timer"]) == 3, found  # the window, stage 2, then observing
        assert found["timer"][0].startswith(
            "trigger window: not clicked within 3s, then until stage 1 (resend) at "
        )
        assert found["timer"][1].startswith("until stage 2 (resend) at ")
        assert found["timer"][2].startswith("observation window: until ")
        assert found["activity"] == [
            "plan stage 0: its audience, and shards if it is big",
            "send stage 0: first send",
            "plan stage 1: its audience, and shards if it is big",
            "send stage 1: not_clicked, resend content",
            "plan stage 2: its audience, and shards if it is big",
            "send stage 2: not_clicked, resend content",
            "finish: completed, write the final funnel",
        ]


async def _matching(handle: WorkflowHandle[Any, Any], *parts: str) -> str | None:
    details = await current_details(handle)
    return details if all(p in details for p in parts) else None


async def test_the_current_details_show_each_stage_live(
    dev_server: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    """While the journey waits for its next stage, the current details show each stage's
    deliveries and clicks so far, equal to the push's funnel in the API (not only at the end)."""
    client = dev_server.client
    scripted = dict.fromkeys(DEVICES[:15], 0) | dict.fromkeys(DEVICES[15:20], 1)
    clicks = Behaviour(
        p_click=[0.0], p_display=1.0, p_fail=0.0, min_delay_ms=1, max_delay_ms=5, clicks_at=scripted
    )
    async with inprocess_stack(client, tmp_path, task_queue, clicks) as stack:
        devices = [{"registration_id": rid} for rid in DEVICES]
        (await stack.api.post("/v4/devices", json={"devices": devices})).raise_for_status()
        request = body()
        request["resend"]["stages"][1]["after"] = "10m"  # stage 2: far off, the journey waits
        accepted = await stack.api.post("/v4/push", json=request)
        assert accepted.status_code == 200, accepted.text
        msg_id = accepted.json()["msg_id"]
        handle = client.get_workflow_handle(f"push-{msg_id}")

        async def live() -> tuple[str, list[dict[str, Any]]] | None:
            stages = (await stack.api.get(f"/v4/push/{msg_id}")).json()["funnel"]["stages"]
            if [(s["delivered"], s["clicked"]) for s in stages] != [(60, 15), (45, 5)]:
                return None  # the devices' events are still coming
            details = await current_details(handle)
            rows = [
                f"| {s['stage']} | {s['targeted']} | {s['sent']} | 0 | 0 "
                f"| {s['delivered']} | {s['clicked']} |"
                for s in stages
            ]
            return (details, stages) if all(r in details for r in rows) else None

        details, stages = await eventually(live, timeout=30)
        assert details.startswith("**waiting** · next: stage 2 at"), details
        assert [s["sent"] for s in stages] == [60, 45]
        assert (await handle.describe()).status.name == "RUNNING"
        (await stack.api.delete(f"/v4/push/{msg_id}")).raise_for_status()
        assert (await handle.result())["state"] == "cancelled"
