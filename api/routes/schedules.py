"""EngageLab's scheduled pushes, `/v4/schedules`: each one a Temporal Schedule whose firings
each make a new push (its own msg_id and resend journey)."""

import uuid
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleState,
    ScheduleUpdateInput,
)
from temporalio.client import ScheduleUpdate as TemporalUpdate
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from api.deps import AppDep, ContextDep, temporal
from api.errors import ApiError
from api.routes.callbacks import check_urls
from relance import ledger
from relance.db import Schedule as ScheduleRow
from relance.db import utcnow
from relance.ledger.schedules import pages
from relance.scheduling import (
    PAGE_SIZE,
    FiringInput,
    ScheduleIn,
    ScheduleUpdate,
    check_future,
    temporal_spec,
)
from workflows.push_journey import APP
from workflows.scheduled_push import ScheduledPush, temporal_schedule_id

router = APIRouter(tags=["schedules"])

# A firing missed while Temporal was down is still made this long after its time; older ones are
# dropped (a morning push at night helps nobody).
CATCHUP = timedelta(hours=1)


class ScheduleCreated(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"schedule_id": "0eac1b80-c2ac-4b69-948b-c65b34b96512", "name": "morning_briefing"}
            ]
        }
    )

    schedule_id: str
    name: str


_EXAMPLE: dict[str, Any] = {
    "schedule_id": "0eac1b80-c2ac-4b69-948b-c65b34b96512",
    "name": "morning_briefing",
    "enabled": True,
    "trigger": {
        "periodical": {
            "start": "2026-12-01 00:00:00",
            "end": "2027-06-01 00:00:00",
            "time": "08:30:00",
            "time_unit": "day",
            "frequency": 1,
            "zone_type": 1,
        }
    },
    "push": {
        "from": "push",
        "to": {"tag": ["news"]},
        "body": {"platform": "android", "notification": {"alert": "Your morning briefing"}},
    },
    "temporal_schedule_id": "schedule-3f2a9c-0eac1b80-c2ac-4b69-948b-c65b34b96512",
}


class ScheduleOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})

    schedule_id: str
    name: str
    enabled: bool
    trigger: dict[str, Any]
    push: dict[str, Any]
    temporal_schedule_id: str = Field(description="The Temporal Schedule that runs it.")


class ScheduleList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"total_count": 1, "total_pages": 1, "page": 1, "schedules": [_EXAMPLE]}]
        }
    )

    total_count: int
    total_pages: int
    page: int
    schedules: list[ScheduleOut]


class Deleted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"schedule_id": "0eac1b80-c2ac-4b69-948b-c65b34b96512", "deleted": True}]
        }
    )

    schedule_id: str
    deleted: bool


class Firing(BaseModel):
    msg_id: str | None = Field(description="The push this firing made (none: see `error`).")
    scheduled_at: str
    fired_at: str
    error: str | None = None


class FiringList(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "count": 1,
                    "MsgIds": [
                        {
                            "msg_id": "1795429543454486250",
                            "scheduled_at": "2026-12-01T08:30:00+00:00",
                            "fired_at": "2026-12-01T08:30:00.412000+00:00",
                            "error": None,
                        }
                    ],
                }
            ]
        },
    )

    count: int
    msg_ids: list[Firing] = Field(alias="MsgIds")


def _out(row: ScheduleRow) -> ScheduleOut:
    return ScheduleOut(
        schedule_id=row.schedule_id,
        name=row.name,
        enabled=row.enabled,
        trigger=row.trigger,
        push=row.push,
        temporal_schedule_id=temporal_schedule_id(row.app_key, row.schedule_id),
    )


def _temporal_schedule(
    app_key: str, schedule_id: str, data: ScheduleIn, zone: str, task_queue: str
) -> Schedule:
    """The Temporal Schedule of an EngageLab schedule: its action carries names only."""
    single = data.trigger.single is not None
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ScheduledPush.run,
            FiringInput(app_key=app_key, schedule_id=schedule_id),
            id=temporal_schedule_id(app_key, schedule_id),
            task_queue=task_queue,
            typed_search_attributes=TypedSearchAttributes([SearchAttributePair(APP, app_key)]),
        ),
        spec=temporal_spec(data.trigger, zone),
        # Firings are independent pushes: one never waits for, nor skips because of, another.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.ALLOW_ALL, catchup_window=CATCHUP),
        state=ScheduleState(
            paused=not data.enabled,
            note=f"EngageLab schedule {data.name}",
            limited_actions=single,
            remaining_actions=1 if single else 0,
        ),
    )


async def _checked(app_key: str, data: ScheduleIn, ctx: ContextDep, new_trigger: bool) -> str:
    """The app's zone, once a new trigger is known to fire in the future (a schedule that has
    fired its single time may still be renamed)."""
    zone = await run_in_threadpool(ledger.app_timezone, ctx.engine, app_key)
    problem = check_future(data.trigger, zone, utcnow()) if new_trigger else None
    if problem is not None:
        raise ApiError(400, f"{problem[0]}: {problem[1]}", problem[0])
    await check_urls(ctx, data.push.callback_url or [], "push.callback_url")
    return zone


def _stored(data: ScheduleIn) -> tuple[dict[str, Any], dict[str, Any]]:
    trigger = data.trigger.model_dump(mode="json", exclude_none=True)
    push = data.push.model_dump(mode="json", by_alias=True, exclude_none=True)
    return trigger, push


@router.post("/v4/schedules", response_model=ScheduleCreated)
async def create_schedule(data: ScheduleIn, app: AppDep, ctx: ContextDep) -> ScheduleCreated:
    """Create a scheduled push: `single` (once, at `time` in the app's zone, or with
    `zone_type` 2 at that wall time in each device's zone) or `periodical` (at `time` every
    `frequency` days, weeks on `point` weekdays, or months on `point` days, from `start` to
    `end`). Each firing makes a new push with its own msg_id. `intelligent` is refused."""
    client = temporal(ctx)
    zone = await _checked(app.app_key, data, ctx, new_trigger=True)
    schedule_id = str(uuid.uuid4())
    trigger, push = _stored(data)
    await run_in_threadpool(
        ledger.create_schedule,
        ctx.engine,
        app.app_key,
        schedule_id,
        data.name,
        data.enabled,
        trigger,
        push,
    )
    try:
        await client.create_schedule(
            temporal_schedule_id(app.app_key, schedule_id),
            _temporal_schedule(app.app_key, schedule_id, data, zone, ctx.settings.task_queue),
            search_attributes=TypedSearchAttributes([SearchAttributePair(APP, app.app_key)]),
        )
    except Exception as exc:
        # Nothing half-done: a schedule the ledger lists but Temporal would never fire.
        await run_in_threadpool(ledger.delete_schedule, ctx.engine, app.app_key, schedule_id)
        raise ApiError(503, f"could not create the schedule in Temporal, retry: {exc}") from exc
    return ScheduleCreated(schedule_id=schedule_id, name=data.name)


@router.get("/v4/schedules", response_model=ScheduleList)
async def list_schedules(
    app: AppDep, ctx: ContextDep, page: int = Query(1, ge=1, description="From 1.")
) -> ScheduleList:
    """The app's schedules, oldest first, 50 a page."""
    total, rows = await run_in_threadpool(
        ledger.list_schedules, ctx.engine, app.app_key, page, PAGE_SIZE
    )
    return ScheduleList(
        total_count=total,
        total_pages=pages(total, PAGE_SIZE),
        page=page,
        schedules=[_out(r) for r in rows],
    )


@router.get("/v4/schedules/{schedule_id}", response_model=ScheduleOut)
async def get_schedule(schedule_id: str, app: AppDep, ctx: ContextDep) -> ScheduleOut:
    """One schedule: its name, whether it is enabled, its trigger and its push."""
    row = await run_in_threadpool(ledger.get_schedule, ctx.engine, app.app_key, schedule_id)
    return _out(row)


@router.put("/v4/schedules/{schedule_id}", response_model=ScheduleOut)
async def update_schedule(
    schedule_id: str, change: ScheduleUpdate, app: AppDep, ctx: ContextDep
) -> ScheduleOut:
    """Change a schedule: what the body gives replaces what was stored (`enabled: false`
    pauses it, `true` resumes it). A new push body applies from the next firing."""
    client = temporal(ctx)
    row = await run_in_threadpool(ledger.get_schedule, ctx.engine, app.app_key, schedule_id)
    merged = {
        "name": row.name if change.name is None else change.name,
        "enabled": row.enabled if change.enabled is None else change.enabled,
        "trigger": row.trigger if change.trigger is None else change.trigger,
        "push": row.push if change.push is None else change.push,
    }
    try:
        data = ScheduleIn.model_validate(merged)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    zone = await _checked(app.app_key, data, ctx, new_trigger=change.trigger is not None)
    new = _temporal_schedule(app.app_key, schedule_id, data, zone, ctx.settings.task_queue)

    def _replace(_: ScheduleUpdateInput) -> TemporalUpdate:
        return TemporalUpdate(schedule=new)

    handle = client.get_schedule_handle(temporal_schedule_id(app.app_key, schedule_id))
    try:
        await handle.update(_replace)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise ApiError(503, f"could not update the schedule in Temporal, retry: {exc}") from exc
        await _recreate(client, app.app_key, schedule_id, new)
    trigger, push = _stored(data)
    updated = await run_in_threadpool(
        ledger.update_schedule,
        ctx.engine,
        app.app_key,
        schedule_id,
        data.name,
        data.enabled,
        trigger,
        push,
    )
    return _out(updated)


async def _recreate(client: Client, app_key: str, schedule_id: str, new: Schedule) -> None:
    """The ledger has it but Temporal lost it (a new Temporal cluster): make it again."""
    await client.create_schedule(
        temporal_schedule_id(app_key, schedule_id),
        new,
        search_attributes=TypedSearchAttributes([SearchAttributePair(APP, app_key)]),
    )


@router.delete("/v4/schedules/{schedule_id}", response_model=Deleted)
async def delete_schedule(schedule_id: str, app: AppDep, ctx: ContextDep) -> Deleted:
    """Delete a schedule: no more firings. The pushes it already made go on."""
    client = temporal(ctx)
    await run_in_threadpool(ledger.get_schedule, ctx.engine, app.app_key, schedule_id)
    handle = client.get_schedule_handle(temporal_schedule_id(app.app_key, schedule_id))
    try:
        await handle.delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise ApiError(503, f"could not delete the schedule in Temporal, retry: {exc}") from exc
    await run_in_threadpool(ledger.delete_schedule, ctx.engine, app.app_key, schedule_id)
    return Deleted(schedule_id=schedule_id, deleted=True)


@router.get(
    "/v4/schedules/{schedule_id}/msg-ids", response_model=FiringList, response_model_by_alias=True
)
async def schedule_msg_ids(schedule_id: str, app: AppDep, ctx: ContextDep) -> FiringList:
    """The pushes this schedule's firings made, oldest first (`MsgIds`, as EngageLab names it)."""
    rows = await run_in_threadpool(ledger.list_firings, ctx.engine, app.app_key, schedule_id)
    firings = [
        Firing(
            msg_id=r.msg_id,
            scheduled_at=r.scheduled_at.isoformat(),
            fired_at=r.fired_at.isoformat(),
            error=r.error,
        )
        for r in rows
    ]
    return FiringList(count=len(firings), msg_ids=firings)
