"""When and how often, through the real API, worker and a time-skipping Temporal server with
real durations: quiet hours held per time zone (and across DST), local-time delivery,
frequency caps across pushes, throttling. Each test reads when each slot was sent from the
journey's own history (the activity's input and the server's event time)."""

import asyncio
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from api.journeys import Repairs, repair_journeys, start_journey
from relance import ledger
from relance.binaries import SEARCH_ATTRIBUTES, temporal_test_server
from relance.journey import JourneyResult, SendStageInput, SendStageResult, plan_for
from relance.models import PushRequest
from relance.simulator import Behaviour
from relance.timing import QuietHours, Timing
from tests.stack import Stack, eventually, inprocess_stack
from workflows.push_journey import PushJourney

HISTORIES = Path(__file__).parent.parent / "histories"
ZONES = {"sg": "Asia/Singapore", "paris": "Europe/Paris", "ny": "America/New_York"}
NIGHT = {"start": "22:00", "end": "08:00"}
QUIET = QuietHours.model_validate(NIGHT)
NO_CLICKS = Behaviour(p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=5)


@pytest.fixture(scope="module")
async def clock_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server of this module's own: its tests move the clock to chosen dates
    (21:30 UTC, the DST weekends), which other modules' tests must not see."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(),
        data_converter=pydantic_data_converter,
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes=dict.fromkeys(
                SEARCH_ATTRIBUTES, IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
            ),
        )
    )
    yield env
    await env.shutdown()


async def move_clock_to(env: WorkflowEnvironment, when: datetime) -> None:
    now = await env.get_current_time()
    assert when > now, f"the clock is already at {now}, past {when}"
    await env.sleep(when - now)


async def next_utc(env: WorkflowEnvironment, hour: int, minute: int) -> datetime:
    now = await env.get_current_time()
    at = now.astimezone(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return at if at > now + timedelta(minutes=1) else at + timedelta(days=1)


def body(rids: list[str], resend: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "to": {"registration_id": rids},
        "body": {
            "platform": "android",
            "notification": {"alert": "Flash sale"},
            "options": options,
        },
    }
    if resend:
        out["resend"] = resend
    return out


async def push(stack: Stack, env: WorkflowEnvironment, payload: dict[str, Any]) -> str:
    response = await stack.api.post("/v4/push", json=payload)
    assert response.status_code == 200, response.text
    return str(response.json()["msg_id"])


async def finish(
    env: WorkflowEnvironment, msg_id: str, horizon: timedelta = timedelta(hours=1)
) -> tuple[JourneyResult, WorkflowHistory]:
    """Skip time past the journey's end (a handle not returned by start_workflow does not skip
    time by itself), then read its result and history."""
    handle = env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
    await env.sleep(horizon)
    result = await handle.result()
    return result, await handle.fetch_history()


def _payload(payloads: Any) -> Any:
    return json.loads(payloads.payloads[0].data)


def slot_sends(history: WorkflowHistory) -> list[tuple[datetime, SendStageInput, SendStageResult]]:
    """Every send_stage of the journey: when the server scheduled it (workflow time), what it
    was asked to send, and what the ledger said after it."""
    scheduled: dict[int, tuple[datetime, SendStageInput]] = {}
    out = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "send_stage":
                scheduled[event.event_id] = (
                    event.event_time.ToDatetime(tzinfo=UTC),
                    SendStageInput.model_validate(_payload(attrs.input)),
                )
        if event.HasField("activity_task_completed_event_attributes"):
            attrs2 = event.activity_task_completed_event_attributes
            if attrs2.scheduled_event_id in scheduled:
                at, inp = scheduled[attrs2.scheduled_event_id]
                out.append((at, inp, SendStageResult.model_validate(_payload(attrs2.result))))
    return out


def timers(history: WorkflowHistory) -> int:
    return sum(1 for e in history.events if e.HasField("timer_fired_event_attributes"))


async def register(stack: Stack, zones: dict[str, str]) -> None:
    devices = [{"registration_id": rid, "timezone": z} for rid, z in zones.items()]
    r = await stack.api.post("/v4/devices", json={"devices": devices})
    assert r.status_code == 200, r.text


async def set_policy(stack: Stack, policy: dict[str, Any]) -> None:
    r = await stack.api.put("/v4/app/policy", json=policy)
    assert r.status_code == 200, r.text


def local(at: datetime, zone: str) -> datetime:
    return at.astimezone(ZoneInfo(zone))


def sends_of(sends: list[Any], zone: str) -> dict[int, datetime]:
    """stage -> when the slot holding `zone` was sent; each stage once."""
    mine: dict[int, datetime] = {}
    for at, inp, _ in sends:
        if inp.zones is None or zone in inp.zones:
            assert inp.stage not in mine, f"{zone} stage {inp.stage} sent twice"
            mine[inp.stage] = at
    return mine


async def test_quiet_hours_hold_each_zone_until_its_local_morning(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    resend = {
        "trigger": {"condition": "not_clicked", "within": "1h"},
        "stages": [{"after": "1h"}, {"after": "5h"}],  # send+2h and send+6h
    }
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        await set_policy(stack, {"timezone": "UTC", "quiet_hours": NIGHT})
        await register(stack, ZONES)
        start = await next_utc(clock_env, 21, 30)
        await move_clock_to(clock_env, start)
        msg_id = await push(stack, clock_env, body(list(ZONES), resend))

        async def held() -> Any:
            status = await stack.api.get(f"/v4/push/{msg_id}")
            assert status.status_code == 200
            return status.json()["next_release_at"]

        release = await eventually(held)
        result, history = await finish(clock_env, msg_id, timedelta(days=2))
        fleet = stack.fleet
        received = {
            s: {m["registration_id"]: m["received"] for m in fleet.messages(msg_id, s)}
            for s in (0, 1, 2)
        }

    assert result.state == "completed"
    # RELANCE_RECORD_HISTORIES=when records when-quiet.json, replayed by test_continue_and_replay.
    prefix = os.environ.get("RELANCE_RECORD_HISTORIES")
    if prefix:
        (HISTORIES / f"{prefix}-quiet.json").write_text(history.to_json())
    await Replayer(
        workflows=[PushJourney],
        data_converter=pydantic_data_converter,
        workflow_runner=SandboxedWorkflowRunner(),
    ).replay_workflow(history)
    sends = slot_sends(history)
    for rid, zone in ZONES.items():
        mine = sends_of(sends, zone)
        assert sorted(mine) == [0, 1, 2]
        for stage, at in mine.items():
            # Never inside the window, in the recipient's own time; each stage after the last.
            assert not QUIET.contains(local(at, zone).time()), (zone, stage, local(at, zone))
            assert at >= start
        assert mine[0] < mine[1] < mine[2]
        assert {s: received[s][rid] for s in (0, 1, 2)} == {0: 1, 1: 1, 2: 1}
    # 21:30 UTC is 05:30 in Singapore and 22:30 (or 23:30) in Paris: both held to 08:00 local.
    # New York's 16:30 goes at once, and its stage 2 (22:30 there) is held to 08:00.
    ny, sg, paris = (sends_of(sends, ZONES[k]) for k in ("ny", "sg", "paris"))
    assert ny[0] - start < timedelta(seconds=5)
    for when, zone in ((sg[0], ZONES["sg"]), (paris[0], ZONES["paris"]), (ny[2], ZONES["ny"])):
        assert local(when, zone).time().replace(second=0, microsecond=0) == time(8), zone
        assert when - when.replace(second=0, microsecond=0) < timedelta(seconds=5)
    assert ny[1] - ny[0] == timedelta(hours=2) or abs(
        ny[1] - ny[0] - timedelta(hours=2)
    ) < timedelta(seconds=5)
    # The held slots were durable timers, and the API said when the first of them goes.
    assert timers(history) >= 4
    assert release is not None
    assert abs(datetime.fromisoformat(release) - min(sg[0], paris[0])) < timedelta(seconds=1)
    funnel = result.funnel.stages
    assert funnel[0].deferred == 2 and funnel[2].deferred >= 1


async def test_paris_across_the_march_and_october_changes(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    # Quiet 23:00-02:30: in March 02:30 does not exist (02:00 -> 03:00), in October it happens
    # twice (03:00 -> 02:00).
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        await set_policy(stack, {"quiet_hours": {"start": "23:00", "end": "02:30"}})
        await register(stack, {"paris-1": "Europe/Paris"})
        now = await clock_env.get_current_time()
        year = now.year + 1
        march = _last_sunday(year, 3)
        october = _last_sunday(year, 10)
        # Saturday 22:30 UTC: 23:30 in Paris (CET), quiet; the window ends in the gap.
        at = datetime.combine(march - timedelta(days=1), time(22, 30), UTC)
        await move_clock_to(clock_env, at)
        spring = await push(stack, clock_env, body(["paris-1"]))
        _, spring_history = await finish(clock_env, spring, timedelta(hours=6))
        # Saturday 22:00 UTC: 00:00 in Paris (CEST), quiet; the window ends in the repeated hour.
        at = datetime.combine(october - timedelta(days=1), time(22), UTC)
        await move_clock_to(clock_env, at)
        autumn = await push(stack, clock_env, body(["paris-1"]))
        _, autumn_history = await finish(clock_env, autumn, timedelta(hours=6))
        got = [len(stack.fleet.messages(m, 0)) for m in (spring, autumn)]

    assert got == [1, 1]
    ((spring_at, _, _),) = slot_sends(spring_history)
    ((autumn_at, _, _),) = slot_sends(autumn_history)
    # March: released when the gap ends, 03:00 CEST = 01:00 UTC.
    assert spring_at.replace(second=0, microsecond=0) == datetime.combine(march, time(1), UTC)
    assert local(spring_at, "Europe/Paris").time().hour == 3
    # October: at the first 02:30 (CEST), 00:30 UTC; never inside the window.
    assert autumn_at.replace(second=0, microsecond=0) == datetime.combine(october, time(0, 30), UTC)
    assert local(autumn_at, "Europe/Paris").utcoffset() == timedelta(hours=2)


def _last_sunday(year: int, month: int) -> Any:
    d = datetime(year, month + 1, 1) - timedelta(days=1)
    while d.weekday() != 6:
        d -= timedelta(days=1)
    return d.date()


async def test_local_time_reaches_each_zone_at_nine(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        await register(stack, ZONES)
        start = await next_utc(clock_env, 12, 0)
        await move_clock_to(clock_env, start)
        msg_id = await push(stack, clock_env, body(list(ZONES), local_time="09:00"))
        result, history = await finish(clock_env, msg_id, timedelta(days=2))
        got = {m["registration_id"]: m["received"] for m in stack.fleet.messages(msg_id, 0)}

    assert result.state == "completed"
    assert got == dict.fromkeys(ZONES, 1)
    sends = slot_sends(history)
    for zone in ZONES.values():
        at = sends_of(sends, zone)[0]
        assert local(at, zone).time().replace(second=0, microsecond=0) == time(9), zone
        assert timedelta(0) < at - start <= timedelta(days=1)
    assert len({at for at, _, _ in sends}) == 3  # three slots, three timers
    assert result.funnel.stages[0].deferred == 3


async def test_frequency_cap_across_pushes_and_transactional_pushes(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    rids = ["cap-1", "cap-2", "cap-3"]
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        await set_policy(stack, {"frequency_caps": [{"max": 2, "per": "1d"}]})
        funnels = []
        msg_ids = []
        for options in ({}, {"frequency_cap": False}, {}, {}):
            msg_id = await push(stack, clock_env, body(rids, **options))
            msg_ids.append(msg_id)
            result, _ = await finish(clock_env, msg_id)
            funnels.append(result.funnel.stages[0])
        await clock_env.sleep(timedelta(days=1))
        next_day = await push(stack, clock_env, body(rids))
        result, _ = await finish(clock_env, next_day)
        funnels.append(result.funnel.stages[0])
        events = (await stack.api.get(f"/v4/push/{msg_ids[3]}/callbacks")).json()["events"]

    # 1st counted, 2nd transactional (not capped, not counted), 3rd counted: two a day. The 4th
    # is skipped as capped; a day later the window has rolled on.
    assert [f.sent for f in funnels] == [3, 3, 3, 0, 3]
    assert funnels[3].skipped == 3
    assert funnels[3].skipped_by_reason == {"frequency_capped": 3}
    assert all(not f.skipped_by_reason for f in funnels[:3] + funnels[4:])
    # Each skipped recipient is a status event, and so a status callback, with its reason.
    skipped = {(e["registration_id"], e["error"]) for e in events if e["status"] == "skipped"}
    assert skipped == {(rid, "frequency_capped") for rid in rids}


async def test_throttle_spreads_600_sends_over_five_minutes(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    rids = [f"t-{i:03d}" for i in range(600)]
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        stack.settings.send_batch_size = 100
        msg_id = await push(stack, clock_env, body(rids, throttle_per_minute=120))
        result, history = await finish(clock_env, msg_id)
        got = Counter(m["received"] for m in stack.fleet.messages(msg_id, 0))

    assert got == {1: 600}
    sends = slot_sends(history)
    # Bucketed by each slice's own workflow time (the activity is scheduled a few ms later).
    start = sends[0][1].at
    assert start is not None
    per_minute: Counter[int] = Counter()
    before = 0
    for _, inp, res in sends:
        assert inp.at is not None
        per_minute[int((inp.at - start).total_seconds() // 60)] += res.sent - before
        before = res.sent
    assert sum(per_minute.values()) == 600
    assert max(per_minute.values()) <= 120
    assert sorted(k for k, v in per_minute.items() if v) == [0, 1, 2, 3, 4]
    assert result.funnel.stages[0].sent == 600
    # Five slices a minute apart; the last call (which finds nobody left) ends the 5th minute.
    assert timedelta(minutes=5) <= sends[-1][0] - start <= timedelta(minutes=5, seconds=5)
    slices = [inp.at for _, inp, _ in sends if inp.at is not None]
    assert all(b - a >= timedelta(minutes=1) for a, b in zip(slices, slices[1:], strict=False))
    assert timers(history) >= 5


async def test_a_click_while_held_removes_the_recipient_from_the_held_send(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    resend = {
        "trigger": {"condition": "not_clicked", "within": "1h"},
        "stages": [{"after": "9h"}],  # 13:00 Paris + 10h = 23:00 Paris: held to 08:00
    }
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        await set_policy(stack, {"quiet_hours": NIGHT})
        await register(stack, {"paris-a": "Europe/Paris", "paris-b": "Europe/Paris"})
        start = await next_utc(clock_env, 12, 0)
        await move_clock_to(clock_env, start)
        msg_id = await push(stack, clock_env, body(["paris-a", "paris-b"], resend))
        await eventually(lambda: len(stack.fleet.messages(msg_id, 0)) == 2)
        await clock_env.sleep(timedelta(hours=11))  # stage 1 is due, and held
        assert stack.fleet.messages(msg_id, 1) == []
        click = {"msg_id": msg_id, "registration_id": "paris-a", "status": "clicked", "stage": 0}
        r = await stack.api.post("/v4/events", json={"events": [click]})
        assert r.status_code == 200, r.text
        result, history = await finish(clock_env, msg_id, timedelta(hours=12))
        got = {m["registration_id"] for m in stack.fleet.messages(msg_id, 1)}

    assert result.state == "completed"
    assert got == {"paris-b"}
    ((at, inp, _),) = [s for s in slot_sends(history) if s[1].stage == 1]
    assert inp.held and local(at, "Europe/Paris").time().replace(second=0, microsecond=0) == time(8)


async def test_the_app_throttle_caps_all_its_pushes_together(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        await set_policy(stack, {"throttle_per_minute": 100})
        first = [f"a-{i:03d}" for i in range(150)]
        second = [f"b-{i:03d}" for i in range(150)]
        ids = [await push(stack, clock_env, body(rids)) for rids in (first, second)]
        done = [await finish(clock_env, m, timedelta(minutes=5)) for m in ids]
        got = [Counter(m["received"] for m in stack.fleet.messages(m, 0)) for m in ids]

    assert got == [{1: 150}, {1: 150}]
    per_minute: Counter[datetime] = Counter()
    for _, history in done:
        before = 0
        for _, inp, res in slot_sends(history):
            assert inp.at is not None
            per_minute[inp.at.replace(second=0, microsecond=0)] += res.sent - before
            before = res.sent
    assert sum(per_minute.values()) == 300
    assert max(per_minute.values()) <= 100
    assert len([n for n in per_minute.values() if n]) >= 3


async def test_eight_journeys_race_for_a_device_last_slot_and_exactly_one_sends(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        await set_policy(stack, {"frequency_caps": [{"max": 2, "per": "1d"}]})
        warmup = await push(stack, clock_env, body(["racer"]))
        await finish(clock_env, warmup, timedelta(minutes=1))  # one of its two sends used
        ids = await asyncio.gather(*(push(stack, clock_env, body(["racer"])) for _ in range(8)))
        results = [await finish(clock_env, m, timedelta(minutes=1)) for m in ids]
        received = sum(message["received"] for m in ids for message in stack.fleet.messages(m, 0))

    assert received == 1
    stages = [r.funnel.stages[0] for r, _ in results]
    assert sorted(s.sent for s in stages) == [0] * 7 + [1]
    assert sum(s.skipped_by_reason.get("frequency_capped", 0) for s in stages) == 7


async def test_send_at_holds_stage_0_and_resends_count_from_it(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    resend = {"trigger": {"condition": "not_clicked", "within": "1h"}, "stages": [{"after": "1h"}]}
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        await register(stack, {"s-1": "Europe/Paris"})
        now = await clock_env.get_current_time()
        send_at = (now + timedelta(hours=3)).replace(microsecond=0)
        payload = body(["s-1"], resend, send_at=send_at.isoformat())
        msg_id = await push(stack, clock_env, payload)
        await clock_env.sleep(timedelta(hours=2))
        assert stack.fleet.messages(msg_id, 0) == []  # not before send_at
        result, history = await finish(clock_env, msg_id, timedelta(hours=4))

    _held_to(send_at, result, history)


def _held_to(send_at: datetime, result: JourneyResult, history: WorkflowHistory) -> None:
    """Stage 0 held to `send_at`, and the resend (within 1h + after 1h) two hours after it."""
    assert result.state == "completed"
    (at0, inp0, _), (at1, inp1, _) = slot_sends(history)
    assert inp0.held and inp0.scheduled_at == send_at
    assert inp1.scheduled_at == send_at + timedelta(hours=2)  # within 1h + after 1h
    assert timedelta(0) <= at0 - send_at < timedelta(seconds=5)  # slept until then
    assert timedelta(0) <= at1 - (send_at + timedelta(hours=2)) < timedelta(seconds=5)
    assert [s.sent for s in result.funnel.stages] == [1, 1]


async def test_a_held_push_whose_api_died_before_its_start_is_repaired_still_held(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    """The API recorded a push with a send_at and died before starting its journey: the
    repair loop starts it with the push's timing, so stage 0 still waits for its send_at
    (the repair used to plan it without timing, and stage 0 went out at once)."""
    resend = {"trigger": {"condition": "not_clicked", "within": "1h"}, "stages": [{"after": "1h"}]}
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        await register(stack, {"r-1": "Europe/Paris"})
        now = await clock_env.get_current_time()
        send_at = (now + timedelta(hours=3)).replace(microsecond=0)
        request = PushRequest.model_validate(body(["r-1"], resend, send_at=send_at.isoformat()))
        msg_id = ledger.accept_push(stack.engine, stack.app_key, request).push.msg_id
        settings = stack.settings.model_copy(update={"journey_repair_after_seconds": 0})
        repairs = Repairs()
        assert await repair_journeys(clock_env.client, stack.engine, settings, repairs) == 1
        assert repairs.after is not None and repairs.after[1] == msg_id
        await clock_env.sleep(timedelta(hours=2))
        assert stack.fleet.messages(msg_id, 0) == []  # not before send_at
        result, history = await finish(clock_env, msg_id, timedelta(hours=4))

    _held_to(send_at, result, history)


async def test_a_held_journey_continues_as_new_and_keeps_its_slots(
    clock_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    async with inprocess_stack(clock_env.client, tmp_path, task_queue, NO_CLICKS) as stack:
        await register(stack, {"c-sg": "Asia/Singapore", "c-ny": "America/New_York"})
        start = await next_utc(clock_env, 21, 30)
        await move_clock_to(clock_env, start)
        request = PushRequest.model_validate(body(["c-sg", "c-ny"]))
        pushed = ledger.accept_push(stack.engine, stack.app_key, request).push
        timing = Timing(quiet_hours=QUIET)
        plan = plan_for(pushed.msg_id, stack.app_key, request, timing)
        handle = await start_journey(
            clock_env.client, task_queue, plan.model_copy(update={"signals_per_run": 3})
        )
        first_run = handle.result_run_id
        await eventually(lambda: len(stack.fleet.messages(pushed.msg_id, 0)) == 1)  # New York
        for _ in range(5):  # a storm of progress signals while Singapore is held
            await handle.signal(
                PushJourney.record_progress, ledger.progress(stack.engine, pushed.msg_id)
            )
        result = await handle.result()
        got = {m["registration_id"] for m in stack.fleet.messages(pushed.msg_id, 0)}
        first = clock_env.client.get_workflow_handle(handle.id, run_id=first_run)
        histories = [await first.fetch_history(), await handle.fetch_history()]

    assert result.state == "completed"
    assert got == {"c-sg", "c-ny"}
    sends = [s for h in histories for s in slot_sends(h)]
    assert [s[1].zones for s in sends] == [["America/New_York"], ["Asia/Singapore"]]
    assert local(sends[1][0], "Asia/Singapore").time().replace(second=0, microsecond=0) == time(8)
    replayer = Replayer(
        workflows=[PushJourney],
        data_converter=pydantic_data_converter,
        workflow_runner=SandboxedWorkflowRunner(),
    )
    for history in histories:
        await replayer.replay_workflow(history)
    prefix = os.environ.get("RELANCE_RECORD_HISTORIES")
    if prefix:  # when-held-continued.json, when-held-final.json
        for name, history in zip(("continued", "final"), histories, strict=True):
            (HISTORIES / f"{prefix}-held-{name}.json").write_text(history.to_json())
