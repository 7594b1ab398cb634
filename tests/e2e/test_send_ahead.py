"""Send ahead (RELANCE_SEND_AHEAD): a small push's stage 0 is sent by the worker as soon as the
push is accepted, while Temporal holds its journey's start until the trigger window ends; the
journey then resends to exactly who did not click, and nobody gets a stage twice."""

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.journey import JourneyActivities
from activities.send_ahead import SendAheadLoop
from relance import ledger
from relance.journey import JourneyResult
from relance.ledger import send_ahead
from relance.simulator import Behaviour
from tests.stack import Stack, eventually, inprocess_stack
from tests.workflows.test_continue_and_replay import HISTORIES, _replays
from tests.workflows.test_push_journey import push_body
from workflows.push_journey import PushJourney

# dev-0 clicks stage 0; nobody clicks a resend.
CLICKS = Behaviour(
    clicks_at={"dev-0": 0}, p_click=[0.0], p_display=0.0, p_fail=0.0, min_delay_ms=1, max_delay_ms=5
)
RIDS = [f"dev-{i}" for i in range(4)]
# Seconds, on the dev server's real clock: the window ends 8 s after stage 0, then the resends.
SHORT = {
    "trigger": {"condition": "not_clicked", "within": "8s"},
    "stages": [
        {"after": "1s", "notification": {"title": "Still on: today's top story"}},
        {"after": "2s", "notification": {"append": "3 more stories since this morning"}},
    ],
    "observe": "0s",
}


@pytest.fixture
def no_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker's send-ahead loop dead: it never takes a push."""

    async def dead(self: SendAheadLoop) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(SendAheadLoop, "run", dead)


async def _history(handle: WorkflowHandle) -> list[EventType.ValueType]:  # type: ignore[type-arg]
    return [e.event_type async for e in handle.fetch_history_events()]


async def test_stage_0_goes_before_the_journey_starts_and_the_resends_skip_the_clicker(
    dev_server: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    client = dev_server.client
    async with inprocess_stack(client, tmp_path, task_queue, CLICKS, send_ahead=True) as stack:
        response = await stack.api.post("/v4/push", json=push_body(SHORT, RIDS))
        assert response.status_code == 200, response.text
        msg_id = response.json()["msg_id"]
        handle = client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        # What GET /v4/push says meanwhile: waiting, stage 1 due 8 s + 1 s after the send.
        status = (await stack.api.get(f"/v4/push/{msg_id}")).json()
        assert (status["state"], status["next_stage"]) == ("waiting", 1)
        created = ledger.get_push(stack.engine, None, msg_id).created_at
        due = datetime.fromisoformat(status["next_stage_at"]) - created.replace(tzinfo=UTC)
        assert due == timedelta(seconds=9)

        # Stage 0 reached every device and the click came back (a signal, held by Temporal),
        # with no workflow task yet: the journey starts when the window ends.
        await eventually(lambda: len(stack.fleet.messages(msg_id, 0)) == len(RIDS))
        await eventually(lambda: ledger.progress(stack.engine, msg_id).clicked == 1)
        await eventually(lambda: send_ahead.pending(stack.engine) == 0)
        assert EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED not in await _history(handle)
        # Its first workflow task is due when the window ends, counted from the accept.
        info = (await handle.describe()).raw_description.workflow_execution_info
        due_at = info.execution_time.ToDatetime(tzinfo=UTC)
        window_end = created.replace(tzinfo=UTC) + timedelta(seconds=8)
        assert abs(due_at - window_end) < timedelta(milliseconds=100), (due_at, window_end)
        assert (await stack.api.get(f"/v4/push/{msg_id}")).json()["funnel"]["clicked"] == 1

        result: JourneyResult = await handle.result()
        received = {s: stack.fleet.messages(msg_id, s) for s in (0, 1, 2)}
        history = await handle.fetch_history()

    assert result.state == "completed"
    assert [(s.stage, s.targeted, s.sent) for s in result.stages] == [
        (0, 4, 4),
        (1, 3, 3),
        (2, 3, 3),
    ]
    assert sorted(m["registration_id"] for m in received[0]) == RIDS
    for stage in (1, 2):  # each non-clicker once, the clicker never
        assert sorted(m["registration_id"] for m in received[stage]) == RIDS[1:]
    # The stage times count from the send ahead, not from the journey's start.
    assert result.stages[1].scheduled_at - result.stages[0].scheduled_at == timedelta(seconds=9)
    # The path replays in the sandbox; RELANCE_RECORD_HISTORIES=1 records it for the suite's
    # replay of every recorded history (tests/workflows/test_continue_and_replay.py).
    await _replays(history)
    if os.environ.get("RELANCE_RECORD_HISTORIES"):
        (HISTORIES / "news-send-ahead.json").write_text(history.to_json())


async def test_a_push_no_worker_sent_ahead_gets_stage_0_from_its_journey_once(
    dev_server: WorkflowEnvironment,
    tmp_path: Path,
    task_queue: str,
    no_loop: None,
) -> None:
    """No worker's loop takes the push (all dead): when the window ends, the journey finds
    stage 0 unsent and sends it itself, once. Late rather than lost, and the window then counts
    from that send: the recipients get their 8 s to click before stage 1, as planned."""
    client = dev_server.client
    async with inprocess_stack(client, tmp_path, task_queue, CLICKS, send_ahead=True) as stack:
        response = await stack.api.post("/v4/push", json=push_body(SHORT, RIDS))
        assert response.status_code == 200, response.text
        msg_id = response.json()["msg_id"]
        await asyncio.sleep(1.5)
        assert stack.fleet.messages(msg_id, 0) == []  # nobody sent it ahead
        handle = client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        result: JourneyResult = await handle.result()
        received = {s: stack.fleet.messages(msg_id, s) for s in (0, 1, 2)}
        history = await handle.fetch_history()
        await _replays(history)

    assert result.state == "completed"
    assert (result.stages[0].stage, result.stages[0].sent) == (0, 4)
    assert sorted(m["registration_id"] for m in received[0]) == RIDS
    assert all(len(received[s]) == len({m["registration_id"] for m in received[s]}) for s in (1, 2))
    _window_counts_from_stage_0(received, 8 + 1)
    if os.environ.get("RELANCE_RECORD_HISTORIES"):  # the late stage 0's path
        (HISTORIES / "news-send-ahead-late.json").write_text(history.to_json())


async def test_a_journey_waits_for_a_worker_that_holds_stage_0_then_sends_what_it_left(
    dev_server: WorkflowEnvironment,
    tmp_path: Path,
    task_queue: str,
    no_loop: None,
) -> None:
    """A worker took the push and claimed its deliveries, then died before sending (here: the
    test takes and claims, and no loop runs). The window (1 s) ends first: the journey must
    not send beside a worker that may still be sending, so it waits for the lease (4 s) to
    end, then takes stage 0 over; each device gets it once. Stage 0 went out about 4 s late, so
    the window counts from that send: stage 1 comes 1 s + 1 s after it (not at once, as when
    the window counted from the accept), and skips dev-0, whose click came back meanwhile."""
    resend = {
        "trigger": {"condition": "not_clicked", "within": "1s"},
        "stages": [{"after": "1s", "notification": {"title": "Still on"}}],
        "observe": "0s",
    }
    client = dev_server.client
    async with inprocess_stack(client, tmp_path, task_queue, CLICKS, send_ahead=True) as stack:
        response = await stack.api.post("/v4/push", json=push_body(resend, RIDS))
        assert response.status_code == 200, response.text
        msg_id = response.json()["msg_id"]
        assert send_ahead.take(stack.engine, 10, lease_seconds=4) == [(msg_id, 0)]
        lease_ends = asyncio.get_running_loop().time() + 4
        page = ledger.claim_batch(stack.engine, msg_id, 0, 0, 100)
        assert len(page.items) == len(RIDS)  # marked `sending`: they may be with devices
        await asyncio.sleep(3)  # the journey started 2 s ago, and waits
        assert stack.fleet.messages(msg_id, 0) == []
        handle = client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        result: JourneyResult = await handle.result()
        assert asyncio.get_running_loop().time() >= lease_ends
        received = {s: stack.fleet.messages(msg_id, s) for s in (0, 1)}

    assert result.state == "completed"
    assert sorted(m["registration_id"] for m in received[0]) == RIDS
    assert sorted(m["registration_id"] for m in received[1]) == RIDS[1:]
    _window_counts_from_stage_0(received, 1 + 1)


def _window_counts_from_stage_0(received: dict[int, list[dict[str, Any]]], wait: float) -> None:
    """Stage 1 reached its first device no sooner than `wait` (the window and stage 1's
    `after`) after stage 0 reached its last: the window counted from stage 0's late send."""
    last_0 = max(m["received_at"] for m in received[0])
    first_1 = min(m["received_at"] for m in received[1])
    assert first_1 - last_0 >= wait - 0.3, (first_1 - last_0, wait)


async def test_a_push_withdrawn_within_its_window_ends_cancelled_without_a_resend(
    dev_server: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    """The cancel is a signal that Temporal holds until the window ends: the journey's first
    workflow task sees it before anything else, sends nothing, and ends cancelled."""
    resend = {
        "trigger": {"condition": "not_clicked", "within": "2s"},
        "stages": [{"after": "1s", "notification": {"title": "Still on"}}],
    }
    client = dev_server.client
    async with inprocess_stack(client, tmp_path, task_queue, CLICKS, send_ahead=True) as stack:
        response = await stack.api.post("/v4/push", json=push_body(resend, RIDS))
        assert response.status_code == 200, response.text
        msg_id = response.json()["msg_id"]
        await eventually(lambda: len(stack.fleet.messages(msg_id, 0)) == len(RIDS))
        await _withdrawn_without_a_resend(stack, client, msg_id, f"/v4/push/{msg_id}")


async def test_pushes_accepted_together_go_in_one_round_and_each_device_gets_stage_0_once(
    dev_server: WorkflowEnvironment,
    tmp_path: Path,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight pushes accepted while the loop sleeps are taken in one round: one read, one claim
    and one record for all of them. Each has six devices and the test's pages hold four, so
    each push's first page goes with the round and its rest in a pass of its own. Every device
    gets stage 0 once, every row is done with its outcomes, and the journeys, when their
    windows end, find stage 0 sent and resend to each device once."""
    rounds: list[int] = []
    real = JourneyActivities.send_ahead

    async def counted(self: JourneyActivities, attempts: dict[str, int], *args: Any) -> Any:
        rounds.append(len(attempts))
        return await real(self, attempts, *args)

    monkeypatch.setattr(JourneyActivities, "send_ahead", counted)
    resend = {
        "trigger": {"condition": "not_clicked", "within": "4s"},
        "stages": [{"after": "1s", "notification": {"title": "Still on"}}],
        "observe": "0s",
    }
    rids = [f"dev-{i}" for i in range(6)]
    nobody = Behaviour(p_click=[0.0], p_display=0.0, p_fail=0.0, min_delay_ms=1, max_delay_ms=5)
    client = dev_server.client
    async with inprocess_stack(
        client,
        tmp_path,
        task_queue,
        nobody,
        send_ahead=True,
        send_ahead_poll_seconds=1.0,
        send_ahead_idle_poll_seconds=1.0,
    ) as stack:
        await asyncio.sleep(1.2)  # the loop has polled once and sleeps for a second
        answers = await asyncio.gather(
            *(
                stack.api.post("/v4/push", json=push_body(resend, rids) | {"request_id": f"r-{i}"})
                for i in range(8)
            )
        )
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        msg_ids = [a.json()["msg_id"] for a in answers]
        assert len(set(msg_ids)) == 8
        await eventually(lambda: send_ahead.pending(stack.engine) == 0)
        sent_ahead = {m: stack.fleet.messages(m, 0) for m in msg_ids}
        results: list[JourneyResult] = [
            await client.get_workflow_handle_for(PushJourney.run, f"push-{m}").result()
            for m in msg_ids
        ]
        received = {m: (stack.fleet.messages(m, 0), stack.fleet.messages(m, 1)) for m in msg_ids}

    assert max(rounds) > 1, rounds  # some pushes went together
    assert sum(rounds) == len(msg_ids)  # and no push was taken twice
    for msg_id, result in zip(msg_ids, results, strict=True):
        assert sorted(m["registration_id"] for m in sent_ahead[msg_id]) == rids
        assert result.state == "completed"
        assert [(s.stage, s.sent) for s in result.stages] == [(0, 6), (1, 6)]
        for stage in received[msg_id]:  # once each, stage 0 and the resend
            assert sorted(m["registration_id"] for m in stage) == rids


@pytest.fixture
def first_start_refused(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Temporal refuses the first start of a journey (as when it is down for a moment); later
    starts go through. Returns the ids of the starts refused."""
    refused: list[str] = []
    real = Client.start_workflow

    async def start_workflow(self: Client, *args: Any, **kwargs: Any) -> Any:
        if not refused:
            refused.append(str(kwargs["id"]))
            raise RPCError("injected: Temporal unavailable", RPCStatusCode.UNAVAILABLE, b"")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(Client, "start_workflow", start_workflow)
    return refused


async def test_a_push_whose_journey_start_fails_is_answered_sent_and_repaired_in_its_window(
    dev_server: WorkflowEnvironment,
    tmp_path: Path,
    task_queue: str,
    first_start_refused: list[str],
) -> None:
    """The POST answers once the push is recorded: its stage 0 does not need the journey. The
    journey's start is refused; the repair loop starts it a second later, delayed to what is
    left of the window (counted from the accept), and the resend reaches who did not click."""
    resend = {
        "trigger": {"condition": "not_clicked", "within": "6s"},
        "stages": [{"after": "1s", "notification": {"title": "Still on"}}],
        "observe": "0s",
    }
    client = dev_server.client
    async with inprocess_stack(
        client,
        tmp_path,
        task_queue,
        CLICKS,
        send_ahead=True,
        journey_repair_interval_seconds=0.5,
        journey_repair_after_seconds=1.0,
    ) as stack:
        response = await stack.api.post("/v4/push", json=push_body(resend, RIDS))
        assert response.status_code == 200, response.text
        msg_id = response.json()["msg_id"]
        assert first_start_refused == [f"push-{msg_id}"]
        # No journey yet: the ledger answers, waiting for stage 1 at the window's end + 1 s.
        status = (await stack.api.get(f"/v4/push/{msg_id}")).json()
        assert (status["state"], status["next_stage"]) == ("waiting", 1)
        await eventually(lambda: len(stack.fleet.messages(msg_id, 0)) == len(RIDS))

        handle = client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")

        async def started() -> Any:
            try:
                return await handle.describe()
            except RPCError:
                return None

        info = (await eventually(started, timeout=10)).raw_description.workflow_execution_info
        created = ledger.get_push(stack.engine, None, msg_id).created_at.replace(tzinfo=UTC)
        due_at = info.execution_time.ToDatetime(tzinfo=UTC)
        assert abs(due_at - (created + timedelta(seconds=6))) < timedelta(milliseconds=100)
        result: JourneyResult = await handle.result()
        received = {s: stack.fleet.messages(msg_id, s) for s in (0, 1)}

    assert result.state == "completed"
    assert sorted(m["registration_id"] for m in received[0]) == RIDS
    assert sorted(m["registration_id"] for m in received[1]) == RIDS[1:]  # dev-0 clicked


async def test_a_push_sent_ahead_can_be_withdrawn_before_its_journey_could_start(
    dev_server: WorkflowEnvironment,
    tmp_path: Path,
    task_queue: str,
    first_start_refused: list[str],
) -> None:
    """The start failed and the repair loop has not come yet: the withdraw starts the journey
    (as the repair would), then stops it. It ends cancelled, and nobody gets stage 1."""
    resend = {
        "trigger": {"condition": "not_clicked", "within": "2s"},
        "stages": [{"after": "1s", "notification": {"title": "Still on"}}],
    }
    client = dev_server.client
    async with inprocess_stack(
        client, tmp_path, task_queue, CLICKS, send_ahead=True, journey_repair_after_seconds=3600
    ) as stack:
        response = await stack.api.post("/v4/push", json=push_body(resend, RIDS))
        assert response.status_code == 200, response.text
        msg_id = response.json()["msg_id"]
        assert first_start_refused == [f"push-{msg_id}"]
        await _withdrawn_without_a_resend(stack, client, msg_id, f"/v4/push/withdraw/{msg_id}")


async def _withdrawn_without_a_resend(stack: Stack, client: Client, msg_id: str, path: str) -> None:
    """DELETE `path` (a cancel or EngageLab's withdraw): the journey ends cancelled, and
    nobody gets stage 1 (due 1 s after a 1-2 s window)."""
    withdrawn = await stack.api.delete(path)
    assert withdrawn.status_code == 200, withdrawn.text
    handle = client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
    result: JourneyResult = await handle.result()
    await asyncio.sleep(1.5)  # past stage 1's time

    assert result.state == "cancelled"
    assert stack.fleet.messages(msg_id, 1) == []
    assert (await stack.api.get(f"/v4/push/{msg_id}")).json()["state"] == "cancelled"


async def test_a_retried_request_id_gets_the_journey_of_its_first_body(
    dev_server: WorkflowEnvironment,
    tmp_path: Path,
    task_queue: str,
    first_start_refused: list[str],
) -> None:
    """A push to a tag (never sent ahead) whose start is refused is answered 503 and kept for
    its request_id. The client retries under the same request_id with another body, to one
    listed device: it gets the same msg_id, and the journey is the first body's (the tag's
    whole audience), not one planned from the retry's body."""
    client = dev_server.client
    async with inprocess_stack(client, tmp_path, task_queue, CLICKS) as stack:
        devices = [{"registration_id": r, "tags": ["readers"]} for r in RIDS]
        (await stack.api.post("/v4/devices", json={"devices": devices})).raise_for_status()
        first = {**push_body(SHORT, RIDS), "to": {"tag": ["readers"]}, "request_id": "same"}
        refused = await stack.api.post("/v4/push", json=first)
        assert refused.status_code == 503, refused.text
        [msg_id] = list(_pushes(stack))
        assert first_start_refused == [f"push-{msg_id}"]

        again = {**push_body(SHORT, RIDS[:1]), "request_id": "same"}
        retried = await stack.api.post("/v4/push", json=again)
        assert retried.status_code == 200, retried.text
        assert retried.json()["msg_id"] == msg_id
        await eventually(lambda: len(stack.fleet.messages(msg_id, 0)) == len(RIDS))
        stage_0 = await eventually(lambda: ledger.stage_result(stack.engine, msg_id, 0)[0])
        push = ledger.get_push(stack.engine, None, msg_id)
        handle = client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        await handle.cancel()

    assert sorted(m["registration_id"] for m in stack.fleet.messages(msg_id, 0)) == RIDS
    assert sum(stage_0.values()) == len(RIDS)
    assert push.request["to"]["tag"] == ["readers"] and push.recipients == len(RIDS)


def _pushes(stack: Stack) -> list[str]:
    with stack.engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT msg_id FROM push"))]
