"""Starting a journey: one place for the workflow id, the conflict policy and search attributes;
and the repair of a push recorded whose journey never started (its API was killed in between)."""

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.engine import Engine
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from relance import ledger
from relance.db import App, Push, utcnow
from relance.describe import JourneyLabels, journey_labels
from relance.journey import JourneyInput, JourneyPlan, JourneyResult, can_send_ahead, plan_for
from relance.ledger.outbox import utc
from relance.models import PushRequest
from relance.settings import Settings
from relance.states import JourneyState
from relance.timing import AppPolicy, timing_for
from workflows.push_journey import PushJourney, search_attributes

log = logging.getLogger("relance.api")


def workflow_id(msg_id: str) -> str:
    return f"push-{msg_id}"


async def start_journey(
    client: Client, task_queue: str, plan: JourneyPlan, labels: JourneyLabels | None = None
) -> WorkflowHandle[PushJourney, JourneyResult]:
    """Start PushJourney; a retried request reuses the running journey instead of a second one.
    `labels`: what the Temporal UI shows of it (relance.describe.journey_labels).

    A push sent ahead (`plan.sent_ahead_at`) starts delayed to the end of its trigger window,
    counted from the accept (a journey the repair loop starts late waits only what is left):
    Temporal keeps the start as a durable timer, holds the signals that come meanwhile, and
    runs the journey's first workflow task only then (the UI shows it as waiting)."""
    ahead = plan.sent_ahead_at is not None
    delay = None
    if plan.sent_ahead_at is not None:
        left = timedelta(seconds=plan.within_seconds) - (utcnow() - plan.sent_ahead_at)
        delay = left if left > timedelta(0) else None
    return await client.start_workflow(
        PushJourney.run,
        JourneyInput(plan=plan),
        id=workflow_id(plan.msg_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=search_attributes(
            plan.msg_id,
            plan.app_key,
            JourneyState.waiting if ahead else JourneyState.sending,
        ),
        static_summary=labels.summary if labels else None,
        static_details=labels.details if labels else None,
        start_delay=delay,
    )


def journey_plan(
    settings: Settings, push: Push, request: PushRequest, policy: AppPolicy
) -> JourneyPlan:
    """The plan of a recorded push, for a journey started after its POST: by the repair loop,
    or by a cancel that finds none. Its timing is the app's `policy` with the push's options,
    as the POST had it (a push held by quiet hours or a send_at stays held). A push sent
    ahead (the same decision the API took) gets its journey's stage-0 check, which sends only
    what no worker holds or has sent."""
    timing = timing_for(policy, request.body.options.overrides())
    plan = plan_for(push.msg_id, push.app_key, request, timing)
    if settings.send_ahead and can_send_ahead(plan, request):
        plan.sent_ahead_at = push.created_at
    return plan


class AheadStarts:
    """The journeys of pushes sent ahead whose start is in flight in this API process. Their
    POST answers once the push and its send-ahead row are committed: stage 0 does not need the
    journey, and a start that fails is made by the repair loop (`repair_journeys`), delayed to
    what is left of the window. At most `limit` starts are in flight: beyond, a POST waits for
    a place, so a slow Temporal slows the API down instead of piling starts up in memory."""

    def __init__(self, limit: int = 64) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.repairs: Repairs | None = None  # told of each start made, so its loop skips it

    async def start(
        self, client: Client, task_queue: str, plan: JourneyPlan, labels: JourneyLabels
    ) -> None:
        await self.slots.acquire()
        task = asyncio.create_task(self._start(client, task_queue, plan, labels))
        self.tasks[plan.msg_id] = task
        task.add_done_callback(partial(self._done, plan.msg_id))

    def _done(self, msg_id: str, _task: "asyncio.Task[None]") -> None:
        self.tasks.pop(msg_id, None)
        self.slots.release()

    async def _start(
        self, client: Client, task_queue: str, plan: JourneyPlan, labels: JourneyLabels
    ) -> None:
        try:
            await start_journey(client, task_queue, plan, labels)
        except WorkflowAlreadyStartedError:
            pass  # it ran to its end
        except Exception as exc:  # noqa: BLE001 — the repair loop starts it once Temporal answers
            log.warning("journey of push %s not started yet (sent ahead): %s", plan.msg_id, exc)
            return
        if self.repairs is not None and plan.sent_ahead_at is not None:
            self.repairs.saw_started(plan.msg_id, plan.sent_ahead_at)

    async def settled(self, msg_id: str) -> None:
        """Once this process's start of the push's journey, if any, has ended."""
        task = self.tasks.get(msg_id)
        if task is not None:
            await asyncio.wait([task])


PAGE = 500  # unfinished pushes read at a time by the repair loop


class Repairs:
    """What this API process's repair loop knows. `started`: the journeys this process's POSTs
    started (msg_id -> the push's created_at): a push whose POST started its journey needs no
    repair, so the loop skips it without asking Temporal. `after`: how far through the
    unfinished pushes the loop has looked (created_at, msg_id), so each pass goes on from
    there. Before both, every push cost one more start (USE_EXISTING) 30 s after its POST,
    and a pass read the same 500 oldest unfinished pushes again and again: with more than
    500 journeys waiting, a push whose API died was never reached."""

    def __init__(self) -> None:
        self.started: dict[str, datetime] = {}
        self.after: tuple[datetime, str] | None = None

    def saw_started(self, msg_id: str, created_at: datetime) -> None:
        self.started[msg_id] = created_at

    def _passed(self, push: Push) -> None:
        self.after = (push.created_at, push.msg_id)
        self.started.pop(push.msg_id, None)

    def _forget_behind(self, floor: datetime) -> None:
        """Drop what the loop will not look at again: started before the cursor or the window
        (a push that ended before the loop reached it is never listed, so never popped)."""
        edge = max(floor, utc(self.after[0])) if self.after else floor
        for msg_id in [m for m, at in self.started.items() if utc(at) < edge]:
            del self.started[msg_id]


async def repair_journeys(
    client: Client, engine: Engine, settings: Settings, repairs: Repairs, calls: int = 500
) -> int:
    """Start the journey of every push recorded between `journey_repair_window_seconds` and
    `journey_repair_after_seconds` ago whose journey has not ended, unless this process saw it
    started, going on from where the last pass ended. USE_EXISTING makes a start a no-op for a
    journey that runs, and REJECT_DUPLICATE for one that ended: only a push whose API died
    between recording it and starting its journey (or whose start Temporal refused) gets one.
    At most `calls` starts per pass (after an API restart, every push in the window is one).
    A start that fails ends the pass there, so the next pass tries that push again. Returns
    how many starts it made."""
    now = utcnow()
    floor = now - timedelta(seconds=settings.journey_repair_window_seconds)
    upto = now - timedelta(seconds=settings.journey_repair_after_seconds)
    made = 0
    apps: dict[str, App] = {}
    while True:
        after = repairs.after
        if after is None or utc(after[0]) < floor:
            after = (floor, "")
        pushes = await run_in_threadpool(ledger.unfinished_pushes, engine, after, upto, PAGE)
        for push in pushes:
            if push.msg_id not in repairs.started:
                if made >= calls:
                    break
                request = PushRequest.model_validate(push.request)
                if push.app_key not in apps:
                    apps[push.app_key] = await run_in_threadpool(
                        ledger.get_app, engine, push.app_key
                    )
                app = apps[push.app_key]
                plan = journey_plan(settings, push, request, ledger.policy_of(app))
                made += 1
                try:
                    await start_journey(
                        client,
                        settings.task_queue,
                        plan,
                        journey_labels(push.msg_id, request, plan.timing, app.name),
                    )
                except WorkflowAlreadyStartedError:
                    pass  # it ran to its end
            repairs._passed(push)
        if made >= calls or len(pushes) < PAGE:
            break
    repairs._forget_behind(floor)
    return made


async def repair_journeys_forever(
    get_client: Callable[[], Client | None], engine: Engine, settings: Settings, repairs: Repairs
) -> None:
    """The API's repair loop (see repair_journeys): every `journey_repair_interval_seconds`,
    while Temporal is reachable."""
    while True:
        await asyncio.sleep(settings.journey_repair_interval_seconds)
        client = get_client()
        if client is None:
            continue
        try:
            await repair_journeys(client, engine, settings, repairs)
        except Exception as exc:  # noqa: BLE001 — Temporal or the ledger is down: next round
            log.warning("journey repair skipped a round: %s", exc)
