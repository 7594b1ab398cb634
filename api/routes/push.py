"""POST /v4/push and friends: accept a push, start its journey, query and stop it."""

import logging
from datetime import datetime, timedelta

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import MAX_ID, AppDep, ContextDep, temporal
from api.errors import ApiError, responses
from api.journeys import journey_plan, start_journey, workflow_id
from api.routes.callbacks import check_urls
from relance import ledger
from relance.db import App, Push, utcnow
from relance.describe import journey_labels
from relance.journey import Funnel, JourneyStatus, Progress, can_send_ahead, plan_for
from relance.ledger.apps import policy_of
from relance.ledger.outbox import utc
from relance.models import PushAccepted, PushRequest
from relance.report import Report
from relance.schedule import stage_offsets, stage_times
from relance.states import TERMINAL_STATES, JourneyState
from relance.timing import Timing, timing_for
from workflows.push_journey import PushJourney

router = APIRouter(tags=["push"])
log = logging.getLogger("relance.api")


class PushValidated(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "12345678",
                    "msg_id": "0",
                    "recipients": 200,
                    "schedule": [
                        "2026-11-23T10:00:00Z",
                        "2026-11-23T18:00:00Z",
                        "2026-11-23T21:00:00Z",
                    ],
                }
            ]
        }
    )

    request_id: str | None = None
    msg_id: str = Field("0", description='Always "0": validating makes no push.')
    recipients: int
    schedule: list[datetime]


class PushStatusOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "msg_id": "1795429543454486250",
                    "request_id": "12345678",
                    "state": "waiting",
                    "next_stage": 1,
                    "next_stage_at": "2026-11-23T18:00:00Z",
                    "funnel": {
                        "msg_id": "1795429543454486250",
                        "state": "accepted",
                        "recipients": 200,
                        "delivered": 196,
                        "displayed": 167,
                        "clicked": 35,
                        "failed": 4,
                        "clicked_after_resend": 0,
                        "stages": [
                            {
                                "stage": 0,
                                "targeted": 200,
                                "sent": 200,
                                "failed": 4,
                                "skipped": 0,
                                "delivered": 196,
                                "displayed": 167,
                                "clicked": 35,
                                "delivered_rate": 0.98,
                                "displayed_rate": 0.835,
                                "clicked_rate": 0.175,
                            }
                        ],
                    },
                    "temporal_ui": "http://localhost:8233/namespaces/default/workflows/push-1795429543454486250",
                }
            ]
        }
    )

    msg_id: str
    request_id: str | None
    state: str
    error: str | None = Field(None, description="Why the journey failed, when it did.")
    next_stage: int | None = None
    next_stage_at: datetime | None = None
    next_release_at: datetime | None = Field(
        None, description="When the next recipients held by quiet hours or local time go."
    )
    observe_until: datetime | None = Field(
        None, description="After the last stage: observing its outcomes until then."
    )
    funnel: Funnel
    temporal_ui: str = Field(description="The journey in the Temporal Web UI.")


class CallbackEvent(BaseModel):
    id: int
    event_id: str
    registration_id: str
    stage: int
    status: str
    at: datetime
    error: str | None = None


class CallbackPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "msg_id": "1795429543454486250",
                    "events": [
                        {
                            "id": 17,
                            "event_id": "5f0c…",
                            "registration_id": "120c83f760363f06840",
                            "stage": 0,
                            "status": "clicked",
                            "at": "2026-11-23T10:03:00Z",
                        }
                    ],
                    "next_cursor": None,
                }
            ]
        }
    )

    msg_id: str
    events: list[CallbackEvent]
    next_cursor: int | None = Field(None, description="Pass as `cursor` for the next page.")


class Cancelled(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"msg_id": "1795429543454486250", "state": "cancelling"}]}
    )

    msg_id: str
    state: str


async def accept_and_start(ctx: ContextDep, app: App, request: PushRequest) -> PushAccepted:
    """Record a push and start its journey: what POST /v4/push and each request of a batch
    push do. Nothing half-done is left when the journey cannot start: the push is forgotten
    (503), unless it is sent ahead. Then a worker sends its stage 0 whatever becomes of the
    start, the POST answers once the push is recorded, and the start runs after it (and the
    repair loop's, if it fails)."""
    timing = _timing(app, request)
    client = temporal(ctx)
    await check_urls(ctx, request.callback_url or [], "callback_url")
    # Sent ahead: stage 0 by a worker as soon as the push is recorded, the journey from the end
    # of the trigger window (README "Send ahead"). The plan gets its msg_id once recorded.
    plan = plan_for("", app.app_key, request, timing)
    ahead = ctx.settings.send_ahead and can_send_ahead(plan, request)
    accepted = await run_in_threadpool(ledger.accept_push, ctx.engine, app.app_key, request, ahead)
    push = accepted.push
    if not accepted.created:
        # A retry of a request_id already recorded: its journey is the first request's, whatever
        # this body says (a client that changed the body under the same request_id gets the
        # push it first made, as from EngageLab, never a journey planned from the new body).
        # Planned as the repair loop plans a recorded push.
        request = PushRequest.model_validate(push.request)
        plan = journey_plan(ctx.settings, push, request, policy_of(app))
        timing, ahead = plan.timing, plan.sent_ahead_at is not None
    labels = journey_labels(push.msg_id, request, timing, app.name)
    plan.msg_id = push.msg_id
    if ahead:
        # Recorded with its send-ahead row: a worker sends stage 0 whatever becomes of the
        # start, so the POST answers now. A start that fails is the repair loop's to make.
        plan.sent_ahead_at = push.created_at
        await ctx.ahead_starts.start(client, ctx.settings.task_queue, plan, labels)
        if accepted.created:  # the same line as any push's: `relance dev` and its readers
            log.info("push %s accepted: %s", push.msg_id, labels.summary)
        return _accepted(push, request, accepted.created)
    try:
        await start_journey(client, ctx.settings.task_queue, plan, labels)
        ctx.repairs.saw_started(push.msg_id, push.created_at)
    except WorkflowAlreadyStartedError:
        pass  # the journey of this request already ran to its end
    except Exception as exc:
        if accepted.created and request.request_id is None:
            # No request_id to retry with: leave nothing half-done behind.
            await run_in_threadpool(ledger.forget_push, ctx.engine, push.msg_id)
        raise ApiError(503, f"could not start the journey, retry the same request: {exc}") from exc
    if accepted.created:
        log.info("push %s accepted: %s", push.msg_id, labels.summary)
    return _accepted(push, request, accepted.created)


def _accepted(push: Push, request: PushRequest, created: bool) -> PushAccepted:
    sent_at = utcnow() if created else push.created_at
    return PushAccepted(
        msg_id=push.msg_id,
        request_id=push.request_id,
        schedule=stage_times(sent_at, stage_offsets(request.resend)),
    )


@router.post("/v4/push", response_model=PushAccepted)
async def create_push(request: PushRequest, app: AppDep, ctx: ContextDep) -> PushAccepted:
    """Send a push and start its resend journey; returns the msg_id and each stage's planned time.

    Stage timing: the trigger window closes `within` after stage 0 is sent, and each resend
    stage's `after` counts from that moment (within 2h, after 1h and 3h: send+3h and send+5h).
    The same `request_id` from the same app returns the same msg_id and starts nothing new."""
    return await accept_and_start(ctx, app, request)


@router.post("/v4/push/validate", response_model=PushValidated)
async def validate_push(request: PushRequest, app: AppDep, ctx: ContextDep) -> PushValidated:
    """Run every check of POST /v4/push without sending or storing anything. Answers as
    EngageLab does (`request_id`, `msg_id`; `msg_id` is "0": no push was made), plus the
    audience size and the schedule the push would have."""
    _timing(app, request)
    await check_urls(ctx, request.callback_url or [], "callback_url")
    recipients = await run_in_threadpool(ledger.count_audience, ctx.engine, app.app_key, request)
    return PushValidated(
        request_id=request.request_id,
        msg_id="0",
        recipients=recipients,
        schedule=stage_times(utcnow(), stage_offsets(request.resend)),
    )


@router.get("/v4/push/{msg_id}", response_model=PushStatusOut)
async def get_push(msg_id: str, app: AppDep, ctx: ContextDep) -> PushStatusOut:
    """State, next stage and its time, and the funnel so far."""
    push = await run_in_threadpool(ledger.get_push, ctx.engine, app.app_key, msg_id)
    funnel = await run_in_threadpool(ledger.funnel, ctx.engine, msg_id)
    state, next_stage, next_at, release_at, observe = push.state, None, None, None, None
    if push.state not in TERMINAL_STATES and ctx.client is not None:
        live = await _live_status(ctx, app, push)
        if live is not None:
            state, next_stage, next_at = live.state, live.next_stage, live.next_stage_at
            release_at, observe = live.next_release_at, live.observe_until
    namespace = f"{ctx.settings.temporal_ui_url}/namespaces/{ctx.settings.temporal_namespace}"
    ui = f"{namespace}/workflows/{workflow_id(msg_id)}"
    return PushStatusOut(
        msg_id=msg_id,
        request_id=push.request_id,
        state=state,
        error=push.error,
        next_stage=next_stage,
        next_stage_at=next_at,
        next_release_at=release_at,
        observe_until=observe,
        funnel=funnel,
        temporal_ui=ui,
    )


@router.get("/v4/push/{msg_id}/report", response_model=Report)
async def get_report(msg_id: str, app: AppDep, ctx: ContextDep) -> Report:
    """Did the resend work? Per stage and variant: targeted, sent, delivered, displayed,
    clicked, converted (and value), unsubscribed and their rates; per resend stage the lift of
    the resend over its holdout on click and on conversion (difference and relative lift with
    95% intervals, p-value); per stage with variants, each against the first and a winner only
    when significant. Too-small samples say "not enough data" instead of a number."""
    await run_in_threadpool(ledger.get_push, ctx.engine, app.app_key, msg_id)  # this app's
    return await run_in_threadpool(ledger.report, ctx.engine, msg_id)


def _timing(app: App, request: PushRequest) -> Timing | None:
    """The push's effective timing: the app's policy (read with its credentials, so no round
    trip) with the push's `body.options` overrides. A `send_at` in the past is refused here,
    not in the model: a stored request is read again after its send_at has passed."""
    options = request.body.options
    if options.send_at is not None and options.send_at < utcnow():
        field = "body.options.send_at"
        raise ApiError(400, f"{field}: expected an instant in the future", field)
    return timing_for(policy_of(app), options.overrides())


def _sent_ahead(ctx: ContextDep, app: App, push: Push) -> bool:
    request = PushRequest.model_validate(push.request)
    return journey_plan(ctx.settings, push, request, policy_of(app)).sent_ahead_at is not None


async def _live_status(ctx: ContextDep, app: App, push: Push) -> JourneyStatus | None:
    assert ctx.client is not None
    request = PushRequest.model_validate(push.request)
    plan = journey_plan(ctx.settings, push, request, policy_of(app))
    ahead = plan.sent_ahead_at is not None
    if ahead and utcnow() < utc(push.created_at) + timedelta(seconds=plan.within_seconds):
        # Within its window, the journey of a push sent ahead has had no workflow task, so
        # there is nothing to ask it; and the server may hold such a query until the window
        # ends instead of refusing it at once (seen on the dev server: a GET took 3 s).
        return _waiting(push, request)
    await ctx.ahead_starts.settled(push.msg_id)
    handle = ctx.client.get_workflow_handle(workflow_id(push.msg_id))
    try:
        return await handle.query(PushJourney.status, rpc_timeout=timedelta(seconds=5))
    except Exception as exc:  # noqa: BLE001 — the ledger answers when the journey cannot
        # Sent ahead, and its journey has not run: its start is still delayed, or it failed
        # and the repair loop has yet to make it (Temporal down or refusing). Its stage 0 is
        # out all the same, so it waits for stage 1, not in `accepted`.
        if ahead and (
            (isinstance(exc, RPCError) and "not scheduled yet" in exc.message)
            or push.state == JourneyState.accepted
        ):
            return _waiting(push, request)
        return None


def _waiting(push: Push, request: PushRequest) -> JourneyStatus:
    """The status of a push sent ahead whose journey has not run yet: it starts when the
    trigger window ends (or, its start failed, when the repair loop makes it), and stage 1 is
    due at the window's end plus its `after` (relance.schedule), counted from the accept."""
    offsets = stage_offsets(request.resend)
    return JourneyStatus(
        msg_id=push.msg_id,
        state=JourneyState.waiting,
        next_stage=1 if offsets else None,
        next_stage_at=push.created_at + offsets[0] if offsets else None,
        progress=Progress(),
        stages=[],
    )


@router.get("/v4/push/{msg_id}/callbacks", response_model=CallbackPage)
async def list_callbacks(
    msg_id: str,
    app: AppDep,
    ctx: ContextDep,
    cursor: int = Query(0, ge=0, le=MAX_ID, description="The `next_cursor` of the previous page."),
    limit: int = Query(100, ge=1, le=1000),
) -> CallbackPage:
    """The status events of one push, oldest first, a page at a time."""
    await run_in_threadpool(ledger.get_push, ctx.engine, app.app_key, msg_id)
    rows = await run_in_threadpool(ledger.list_events, ctx.engine, msg_id, cursor, limit)
    events = [CallbackEvent.model_validate(r, from_attributes=True) for r in rows]
    return CallbackPage(
        msg_id=msg_id, events=events, next_cursor=events[-1].id if len(events) == limit else None
    )


async def _stop(ctx: ContextDep, app: App, msg_id: str, again_ok: bool) -> None:
    """Signal the journey to stop pending resends. A push already withdrawn is fine when
    `again_ok`; a journey that ended otherwise answers 409."""
    push = await run_in_threadpool(ledger.get_push, ctx.engine, app.app_key, msg_id)
    if push.state in TERMINAL_STATES:
        if again_ok and push.state == JourneyState.cancelled:
            return
        raise ApiError(409, f"msg_id: the journey already ended ({push.state})", "msg_id")
    await ctx.ahead_starts.settled(msg_id)
    handle = temporal(ctx).get_workflow_handle(workflow_id(msg_id))
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND or not _sent_ahead(ctx, app, push):
            raise
        # Sent ahead, and its journey's start failed (the repair loop has not made it yet):
        # started here, as the repair loop would, so that it can be told to stop.
        request = PushRequest.model_validate(push.request)
        plan = journey_plan(ctx.settings, push, request, policy_of(app))
        await start_journey(
            temporal(ctx), ctx.settings.task_queue, plan, journey_labels(msg_id, request)
        )
        description = await handle.describe()
    if description.status != WorkflowExecutionStatus.RUNNING:
        if again_ok and description.status == WorkflowExecutionStatus.COMPLETED:
            push = await run_in_threadpool(ledger.get_push, ctx.engine, app.app_key, msg_id)
            if push.state == JourneyState.cancelled:
                return
        raise ApiError(409, "msg_id: the journey already ended", "msg_id")
    await handle.signal(PushJourney.cancel)


@router.delete("/v4/push/{msg_id}", response_model=Cancelled, responses=responses(409))
async def cancel_push(msg_id: str, app: AppDep, ctx: ContextDep) -> Cancelled:
    """Stop the pending resends of a push; its journey ends as cancelled."""
    await _stop(ctx, app, msg_id, again_ok=False)
    return Cancelled(msg_id=msg_id, state="cancelling")


class Withdrawn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"request_id": "12345678", "msg_id": "1795429543454486250"}]
        }
    )

    request_id: str | None = None
    msg_id: str


@router.delete("/v4/push/withdraw/{msg_id}", response_model=Withdrawn, responses=responses(409))
async def withdraw_push(msg_id: str, app: AppDep, ctx: ContextDep) -> Withdrawn:
    """EngageLab's withdraw: stops the push's pending resends, as `DELETE /v4/push/{msg_id}`
    does. It does not take back a notification a device already received. Withdrawing again
    answers the same (a retry after a lost answer must not fail); a journey that already ended
    by itself answers 409, as there is nothing left to withdraw."""
    await _stop(ctx, app, msg_id, again_ok=True)
    push = await run_in_threadpool(ledger.get_push, ctx.engine, app.app_key, msg_id)
    return Withdrawn(request_id=push.request_id, msg_id=msg_id)
