"""Scheduled pushes driven by EngageLab's official SDK (`client.schedule.*`) against the real API
over HTTP, with the worker, on the Temporal dev server (the time-skipping server does not run
Schedules): each EngageLab schedule is a Temporal Schedule, read back through its handle, and
firings triggered through that handle each make a push that reaches the devices."""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import engagelab
import pytest
from engagelab.errors import ApiError
from engagelab.schedule import (
    SchedulePushParam,
    ScheduleTrigger,
    TriggerPeriodical,
    TriggerSingle,
)
from sqlmodel import Session, col, select
from temporalio.client import ScheduleRange
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from relance.db import Push
from relance.simulator import Behaviour
from tests.stack import Stack, eventually, inprocess_stack
from workflows.scheduled_push import ScheduledPush

HISTORIES = Path(__file__).parent.parent / "histories"

RIDS = ["sched-a", "sched-b", "sched-c"]
PUSH = {
    "from": "push",
    "to": {"registration_id": RIDS},
    "body": {"platform": "android", "notification": {"android": {"alert": "Morning briefing"}}},
}


@pytest.fixture(scope="module")
async def stack(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    async with inprocess_stack(
        dev_server.client,
        tmp_path_factory.mktemp("schedules"),
        f"sched-{uuid.uuid4()}",
        Behaviour(p_fail=0, min_delay_ms=0, max_delay_ms=20),
    ) as s:
        yield s


def sdk(stack: Stack) -> engagelab.Client:
    return engagelab.Client(
        stack.app_key, stack.master_secret, base_url=stack.settings.api_url, timeout=30
    )


def daily(start: datetime, days: int = 30, time: str = "08:30:00") -> ScheduleTrigger:
    end = start + timedelta(days=days)
    return ScheduleTrigger(
        periodical=TriggerPeriodical(
            start=start.strftime("%Y-%m-%d %H:%M:%S"),
            end=end.strftime("%Y-%m-%d %H:%M:%S"),
            time=time,
            time_unit="day",
            frequency=1,
        )
    )


async def call(fn: Any, *args: Any) -> Any:
    """The SDK is synchronous (urllib): off the event loop that serves the API."""
    return await asyncio.to_thread(fn, *args)


def temporal_id(stack: Stack, schedule_id: str) -> str:
    return f"schedule-{stack.app_key}-{schedule_id}"


async def test_a_daily_schedule_is_a_temporal_schedule_and_each_firing_is_a_push(
    stack: Stack, dev_server: WorkflowEnvironment
) -> None:
    client = sdk(stack)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    created = await call(
        client.schedule.create,
        SchedulePushParam(name="morning_briefing", enabled=True, trigger=daily(start), push=PUSH),
    )
    assert created.schedule_id and created.name == "morning_briefing"

    # The Temporal Schedule: a calendar at 08:30:00 every day, in the app's zone, bounded.
    handle = dev_server.client.get_schedule_handle(temporal_id(stack, created.schedule_id))
    described = await handle.describe()
    spec = described.schedule.spec
    assert spec.time_zone_name == "UTC"
    assert len(spec.calendars) == 1
    calendar = spec.calendars[0]
    assert (calendar.hour, calendar.minute, calendar.second) == (
        (ScheduleRange(8),),
        (ScheduleRange(30),),
        (ScheduleRange(0),),
    )
    assert calendar.day_of_week == (ScheduleRange(0, 6),)  # every day
    assert spec.start_at == start
    assert spec.end_at == start + timedelta(days=30)
    assert not described.schedule.state.paused
    # Names only in the action: no master secret, no credentials.
    assert stack.master_secret not in repr(described.schedule.action)

    # Three firings through the schedule handle: three pushes, each its own msg_id.
    msg_ids: list[str] = []
    for n in range(1, 4):
        await handle.trigger()

        async def listed(n: int = n) -> list[str] | None:
            got = await call(client.schedule.get_msg_ids, created.schedule_id)
            ids = [f["msg_id"] for f in got.msg_ids or [] if f["msg_id"]]
            return ids if len(ids) >= n else None

        msg_ids = await eventually(listed, timeout=30)
        # Temporal names a firing by its second: the next trigger must fall in another one.
        await asyncio.sleep(1.1)
    assert len(msg_ids) == 3 and len(set(msg_ids)) == 3
    listed_now = await call(client.schedule.get_msg_ids, created.schedule_id)
    assert listed_now.count == 3

    # Each push has its own journey, and its stage 0 reached every device of the fake provider.
    def received() -> bool:
        return all(stack.fleet.received[(m, 0, rid)] == 1 for m in msg_ids for rid in RIDS)

    await eventually(received, timeout=30)
    for msg_id in msg_ids:
        journey = await dev_server.client.get_workflow_handle(f"push-{msg_id}").describe()
        assert journey.workflow_type == "PushJourney"
    with Session(stack.engine) as session:
        pushes = session.exec(select(Push).where(col(Push.msg_id).in_(msg_ids))).all()
    assert {p.request["body"]["notification"]["android"]["alert"] for p in pushes} == {
        "Morning briefing"
    }

    # The firings' workflow replays deterministically, in the sandbox.
    firings = [
        w
        async for w in dev_server.client.list_workflows(
            f"WorkflowType = 'ScheduledPush' AND RelanceApp = '{stack.app_key}'"
        )
    ]
    assert len(firings) >= 3
    history = await dev_server.client.get_workflow_handle(firings[0].id).fetch_history()
    await Replayer(
        workflows=[ScheduledPush],
        data_converter=pydantic_data_converter,
        workflow_runner=SandboxedWorkflowRunner(),
    ).replay_workflow(history)
    if os.environ.get("RELANCE_RECORD_HISTORIES"):
        (HISTORIES / "scheduled-push.json").write_text(history.to_json())

    got = await call(client.schedule.get, created.schedule_id)
    assert got["name"] == "morning_briefing" and got["enabled"] is True
    assert got["trigger"]["periodical"]["time_unit"] == "day"
    page = await call(client.schedule.list, 1)
    assert created.schedule_id in [s["schedule_id"] for s in page.schedules or []]
    assert page.page == 1 and page.total_count >= 1 and page.total_pages >= 1


async def test_enabled_false_pauses_put_updates_and_delete_removes_from_temporal(
    stack: Stack, dev_server: WorkflowEnvironment
) -> None:
    client = sdk(stack)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    created = await call(
        client.schedule.create,
        SchedulePushParam(name="weekly_digest", enabled=True, trigger=daily(start), push=PUSH),
    )
    handle = dev_server.client.get_schedule_handle(temporal_id(stack, created.schedule_id))

    updated = await call(
        client.schedule.update, created.schedule_id, SchedulePushParam(enabled=False)
    )
    assert updated.enabled is False and updated.name == "weekly_digest"
    assert (await handle.describe()).schedule.state.paused

    weekly = ScheduleTrigger(
        periodical=TriggerPeriodical(
            start=start.strftime("%Y-%m-%d %H:%M:%S"),
            end=(start + timedelta(days=60)).strftime("%Y-%m-%d %H:%M:%S"),
            time="18:05:30",
            time_unit="WEEK",
            frequency=1,
            point=["MON", "FRI"],
        )
    )
    await call(
        client.schedule.update,
        created.schedule_id,
        SchedulePushParam(enabled=True, trigger=weekly),
    )
    described = await handle.describe()
    assert not described.schedule.state.paused
    calendar = described.schedule.spec.calendars[0]
    assert calendar.day_of_week == (
        ScheduleRange(1),
        ScheduleRange(5),
    )
    assert (calendar.hour, calendar.minute, calendar.second) == (
        (ScheduleRange(18),),
        (ScheduleRange(5),),
        (ScheduleRange(30),),
    )
    assert (await call(client.schedule.get, created.schedule_id))["enabled"] is True

    await call(client.schedule.delete, created.schedule_id)
    with pytest.raises(RPCError) as gone:
        await handle.describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND
    with pytest.raises(ApiError) as missing:
        await call(client.schedule.get, created.schedule_id)
    assert missing.value.status_code == 404


async def test_a_device_time_zone_single_schedule_fires_once_with_local_time(
    stack: Stack, dev_server: WorkflowEnvironment
) -> None:
    """zone_type 2: one push, fired when the wall time comes in the earliest zone (UTC+14), a
    minute early, carrying `options.local_time` so each recipient gets it at their own 09:00."""
    client = sdk(stack)
    day = (datetime.now(UTC) + timedelta(days=3)).date()
    created = await call(
        client.schedule.create,
        SchedulePushParam(
            name="local_nine",
            enabled=True,
            trigger=ScheduleTrigger(single=TriggerSingle(time=f"{day} 09:00:00", zone_type=2)),
            push=PUSH,
        ),
    )
    handle = dev_server.client.get_schedule_handle(temporal_id(stack, created.schedule_id))
    described = await handle.describe()
    fires = datetime(day.year, day.month, day.day, 9, tzinfo=ZoneInfo("Etc/GMT-14")) - timedelta(
        minutes=1
    )
    assert described.schedule.spec.time_zone_name == "UTC"
    calendar = described.schedule.spec.calendars[0]
    at = fires.astimezone(UTC)
    assert (calendar.year, calendar.month, calendar.day_of_month, calendar.hour) == (
        (ScheduleRange(at.year),),
        (ScheduleRange(at.month),),
        (ScheduleRange(at.day),),
        (ScheduleRange(at.hour),),
    )
    assert described.info.next_action_times[:1] == [at]
    assert described.schedule.state.limited_actions
    assert described.schedule.state.remaining_actions == 1

    await handle.trigger()

    async def pushed() -> list[Any] | None:
        got = await call(client.schedule.get_msg_ids, created.schedule_id)
        return got.msg_ids or None

    firings = await eventually(pushed, timeout=30)
    with Session(stack.engine) as session:
        push = session.get(Push, firings[0]["msg_id"])
    assert push is not None
    assert push.request["body"]["options"]["local_time"] == "09:00"


def _error(exc: ApiError) -> tuple[int, int, str]:
    return exc.status_code, exc.error.code, exc.error.message


async def test_bad_schedules_are_refused_naming_the_field(
    stack: Stack, dev_server: WorkflowEnvironment
) -> None:
    client = sdk(stack)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    fmt = "%Y-%m-%d %H:%M:%S"
    cases: list[tuple[Any, str]] = [
        (
            {
                "periodical": {
                    "start": start.strftime(fmt),
                    "end": (start + timedelta(days=3)).strftime(fmt),
                    "time": "08:00:00",
                    "frequency": 1,
                }
            },
            "trigger.periodical.time_unit",
        ),
        ({"single": {"time": "2030-2-15 13:16", "zone_type": 1}}, "trigger.single.time"),
        (
            {
                "periodical": {
                    "start": start.strftime(fmt),
                    "end": (start - timedelta(days=1)).strftime(fmt),
                    "time": "08:00:00",
                    "time_unit": "day",
                }
            },
            "trigger.periodical.end",
        ),
        (
            {
                "periodical": {
                    "start": start.strftime(fmt),
                    "end": (start + timedelta(days=3)).strftime(fmt),
                    "time": "25:00:00",
                    "time_unit": "day",
                }
            },
            "trigger.periodical.time",
        ),
        ({"single": {"time": "2020-01-01 09:00:00", "zone_type": 1}}, "trigger.single.time"),
        ({"intelligent": {"backup_time": "2030-01-01 09:00:00"}}, "trigger.intelligent"),
    ]
    for trigger, field in cases:
        param = SchedulePushParam(name="bad", enabled=True, trigger=trigger, push=PUSH)
        with pytest.raises(ApiError) as refused:
            await call(client.schedule.create, param)
        status, code, message = _error(refused.value)
        assert (status, code) == (400, 21003), (trigger, message)
        assert message.startswith(f"{field}:"), (field, message)
    with pytest.raises(ApiError) as unsupported:
        await call(
            client.schedule.create,
            SchedulePushParam(name="smart", enabled=True, trigger={"intelligent": {}}, push=PUSH),
        )
    assert "not supported" in unsupported.value.error.message
    # A PUT is checked the same way, and a refused one changes nothing, in Temporal either.
    good = await call(
        client.schedule.create,
        SchedulePushParam(name="good", enabled=True, trigger=daily(start), push=PUSH),
    )
    for trigger, field in cases[:3]:
        with pytest.raises(ApiError) as refused:
            await call(client.schedule.update, good.schedule_id, SchedulePushParam(trigger=trigger))
        status, code, message = _error(refused.value)
        assert (status, code) == (400, 21003) and message.startswith(f"{field}:"), message
    handle = dev_server.client.get_schedule_handle(temporal_id(stack, good.schedule_id))
    described = await handle.describe()
    assert described.schedule.spec.calendars[0].minute == (ScheduleRange(30),)
    assert (await call(client.schedule.get, good.schedule_id))["trigger"]["periodical"][
        "time_unit"
    ] == "day"
    await call(client.schedule.delete, good.schedule_id)
    # Nothing was kept of any refused schedule.
    page = await call(client.schedule.list, 1)
    assert "bad" not in [s["name"] for s in page.schedules or []]
