"""The models a journey's workflow, its activities and the API exchange (one input model each)."""

from datetime import datetime

from pydantic import BaseModel, Field

from relance.models import PushRequest, TriggerCondition
from relance.states import JourneyState
from relance.timing import FrequencyCap, Slot, Timing


def shard_queue(task_queue: str) -> str:
    """The task queue of a big stage's shards: beside the journey's own, served by every worker
    with a few slots of its own (settings.send_shard_slots), so the shards queued at once spread
    over the workers instead of going to whichever polls first with free slots."""
    return f"{task_queue}-shards"


class StageProgress(BaseModel):
    """One stage's deliveries as last read from the ledger (the held-out not counted), the
    figures the final funnel gives that stage."""

    stage: int
    delivered: int = 0
    displayed: int = 0
    clicked: int = 0
    deferred: int = 0  # held for quiet hours, a local time or a cap


class Progress(BaseModel):
    """Recipient-level counts of a push, as of ledger version `seq` (absolute, so a repeated or
    late signal changes nothing: the workflow keeps the highest `seq`); with `stages`, the
    per-stage counts of the same reading (empty: not read this time, the journey keeps its
    last ones)."""

    seq: int = 0
    recipients: int = 0
    delivered: int = 0
    displayed: int = 0
    clicked: int = 0
    failed: int = 0
    stopped: int = 0
    stages: list[StageProgress] = Field(default_factory=list)


class DelayGroup(BaseModel):
    """The variants of a stage sent this long after the stage's time."""

    delay_seconds: float
    variants: list[str]


class JourneyPlan(BaseModel):
    msg_id: str
    app_key: str
    condition: TriggerCondition | None = None
    within_seconds: float = 0
    # Offsets of resend stages 1..N from the send of stage 0 (see relance.schedule).
    stage_offsets_seconds: list[float] = Field(default_factory=list)
    # Temporal caps a run at 10,000 signals; the journey continues-as-new well before.
    signals_per_run: int = Field(5_000, ge=1, le=9_000)
    # A few known devices: each stage is first tried as a local activity, inside the workflow
    # task, which saves a round of activity and workflow tasks per stage.
    local_send: bool = False
    # A tag, alias or "all" push: its first activity writes the audience into the ledger.
    materialise: bool = False
    # ...and stage 0 starts on each chunk of the audience as soon as it is written, while the
    # next chunk is written (no timing, no A/B variants). False: the whole audience, then stage 0.
    stream_audience: bool = False
    # Quiet hours, local time, send_at, caps or throttles (relance.timing); None: none apply,
    # and the journey takes its fast path.
    timing: Timing | None = None
    # After the last stage, how long the journey keeps observing before it completes (0: not).
    observe_seconds: float = 0
    # Per stage ("0", "1"...): its A/B variants' names by delay in seconds, when some variant
    # has a delay (the others are sent at the stage's time). Absent: one send per stage.
    variant_delays: dict[str, list[DelayGroup]] = Field(default_factory=dict)
    # Sent ahead (RELANCE_SEND_AHEAD): a worker sent stage 0 at this time, outside the journey,
    # and Temporal starts the journey when the trigger window ends. Its stage 0 then only
    # checks the ledger (and sends whatever a dead worker left), and the window counts from
    # this time. None: the journey sends stage 0 itself.
    sent_ahead_at: datetime | None = None


class StageCounts(BaseModel):
    """What happened to one stage's deliveries: queued (targeted), and each DeliveryStatus end."""

    targeted: int = 0  # every delivery of the stage, the held-out included
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    held_out: int = 0  # in the stage's random holdout: never sent, still observed


class StageSummary(StageCounts):
    stage: int
    scheduled_at: datetime
    sent_at: datetime


class JourneyCarry(BaseModel):
    """What a journey carries over continue-as-new."""

    next_stage: int
    sent_at: datetime | None = None
    progress: Progress
    stages: list[StageSummary]
    cancelled: bool = False
    # A timed journey: the release slots still to send.
    slots: list[Slot] | None = None
    # Observing after the last stage, until then.
    observe_until: datetime | None = None


class JourneyInput(BaseModel):
    plan: JourneyPlan
    carry: JourneyCarry | None = None


class JourneyStatus(BaseModel):
    msg_id: str
    state: JourneyState
    next_stage: int | None = None
    next_stage_at: datetime | None = None
    progress: Progress
    stages: list[StageSummary]
    # Held recipients (quiet hours, local_time, send_at): when the next of them is released.
    next_release_at: datetime | None = None
    # After the last stage: observing its outcomes until then, before completing.
    observe_until: datetime | None = None


class MaterialiseInput(BaseModel):
    msg_id: str


class MaterialiseResult(BaseModel):
    # The push's recipients, all in the ledger with their stage-0 deliveries.
    recipients: int


class AudienceChunkInput(BaseModel):
    msg_id: str
    # The chunk's devices come after this device id (the previous chunk's cursor).
    after_device_id: int = 0
    # How many devices it writes, as the previous chunk said (None: RELANCE_SEND_SHARD_SIZE).
    limit: int | None = None


class AudienceChunkResult(BaseModel):
    # Where the next chunk starts; None: the whole audience is written.
    cursor: int | None
    # The push's highest stage-0 delivery id once this chunk is written: the chunk's deliveries
    # are those with ids in (the previous chunk's upto_id, upto_id].
    upto_id: int
    # The push's recipients, once all are written.
    recipients: int | None = None
    # How many devices the next chunk writes. The first chunk counts what is left and sizes
    # the others so that the audience comes in at most RELANCE_SEND_MAX_SHARDS chunks: each
    # chunk is one send, and each activity costs Temporal and the worker a little.
    next_limit: int | None = None


class SendStageInput(BaseModel):
    msg_id: str
    stage: int
    # When the stage was due (workflow time): what its lateness is measured against.
    scheduled_at: datetime | None = None
    # A local activity's attempt: one pass, no waiting out a provider's Retry-After (what is
    # still pending is left to a regular activity, which may wait as long as it takes).
    one_pass: bool = False
    # A timed journey's slot: its recipients' zones (None: all), workflow time, whether it was
    # held, at most how many to send now (throttle), caps, the app's throttle.
    timed: bool = False
    zones: list[str] | None = None
    at: datetime | None = None
    held: bool = False
    limit: int | None = None
    caps: list[FrequencyCap] = Field(default_factory=list)
    app_throttle_per_minute: int | None = None
    # Only these A/B variants' deliveries (a group sent after its delay); None: all.
    variants: list[str] | None = None
    # One shard of a big stage: its deliveries with ids in (after_id, upto_id]; None: all.
    after_id: int = 0
    upto_id: int | None = None
    shard: str | None = None  # "2/4", for the logs and the timeline
    # False: one chunk of a streamed stage 0, which does not count the whole stage when it
    # ends (the journey reads it once, after every chunk's send: read_stage).
    tally: bool = True
    # Stage 0 of a push sent ahead, run by its journey when the window ends: what the worker
    # that sent it ahead left (usually nothing). Its lateness was measured by that send.
    check: bool = False


class StageShard(BaseModel):
    after_id: int
    upto_id: int


class PlanZonesInput(BaseModel):
    msg_id: str
    default_zone: str


class SendStageResult(StageCounts):
    stage: int
    # Deliveries still open (a provider asked to try later): only a one-pass send leaves any,
    # with the wait the provider asked for.
    pending: int = 0
    retry_in: float | None = None
    progress: Progress
    # A provider's configuration is wrong (credentials, topic...): what a human must fix.
    config_error: str | None = None
    # A timed slot: some of its recipients are left for a later call (throttled).
    more: bool = False
    # The check of stage 0 of a push sent ahead: when its last delivery was sent, whoever sent
    # it (None: none was). A journey whose stage 0 went out late counts the window from it.
    last_sent_at: datetime | None = None


class FinishInput(BaseModel):
    msg_id: str
    state: JourneyState
    error: str | None = None


class StageFunnel(StageCounts):
    stage: int
    deferred: int = Field(0, description="Held by quiet hours, local_time or send_at.")
    skipped_by_reason: dict[str, int] = Field(default_factory=dict)
    delivered: int = 0
    displayed: int = 0
    clicked: int = 0
    delivered_rate: float = 0.0
    displayed_rate: float = 0.0
    clicked_rate: float = 0.0
    # The truth of the funnel: those held out of the stage (never sent, observed; not in the
    # counts above, see the report's `holdout`), conversions attributed to the stage and their
    # value, unsubscribes at the stage; rates over those sent.
    held_out: int = 0
    converted: int = 0
    conversion_value: float = 0.0
    unsubscribed: int = 0
    converted_rate: float = 0.0
    unsubscribed_rate: float = 0.0
    variants: dict[str, "VariantFunnel"] = Field(default_factory=dict)


class VariantFunnel(BaseModel):
    """One A/B variant of a stage: sent, clicked and converted, and their rates."""

    sent: int = 0
    clicked: int = 0
    converted: int = 0
    conversion_value: float = 0.0
    unsubscribed: int = 0
    clicked_rate: float = 0.0
    converted_rate: float = 0.0
    unsubscribed_rate: float = 0.0


class Funnel(BaseModel):
    msg_id: str
    state: JourneyState
    recipients: int
    delivered: int
    displayed: int
    clicked: int
    failed: int
    stages: list[StageFunnel]
    clicked_after_resend: int = Field(
        0, description="Recipients whose click came on a resend stage: what the resends added."
    )


class JourneyResult(BaseModel):
    state: JourneyState
    stages: list[StageSummary]
    funnel: Funnel


# Up to this many devices, a stage fits in a local activity: one provider batch, well within
# a workflow task's timeout.
LOCAL_SEND_MAX = 50


def plan_for(
    msg_id: str, app_key: str, request: PushRequest, timing: Timing | None = None
) -> JourneyPlan:
    """The journey plan of an accepted push request (timing from relance.schedule)."""
    from relance.schedule import stage_offsets

    resend = request.resend
    ids = request.to.registration_id if request.to != "all" else None
    return JourneyPlan(
        msg_id=msg_id,
        app_key=app_key,
        condition=resend.trigger.condition if resend else None,
        within_seconds=resend.trigger.within.total_seconds() if resend else 0,
        stage_offsets_seconds=[o.total_seconds() for o in stage_offsets(resend)],
        local_send=ids is not None and len(ids) <= LOCAL_SEND_MAX,
        materialise=ids is None,
        stream_audience=ids is None and timing is None and not request.variants,
        timing=timing,
        observe_seconds=resend.observe_window.total_seconds() if resend else 0,
        variant_delays=variant_delays(request),
    )


def can_send_ahead(plan: JourneyPlan, request: PushRequest) -> bool:
    """A push whose stage 0 a worker may send before its journey starts: a few listed devices,
    stage 0 without A/B variants, no timing, and a trigger window to wait
    (without one, the journey has nothing to wait for and sends stage 0 itself at once)."""
    resend = request.resend
    return (
        plan.local_send
        and plan.timing is None
        and not plan.materialise
        and not request.variants
        and plan.condition is not None
        and plan.within_seconds > 0
        and resend is not None
    )


def variant_delays(request: PushRequest) -> dict[str, list[DelayGroup]]:
    """The stages whose variants do not all go at the stage's time: their groups by delay."""
    out: dict[str, list[DelayGroup]] = {}
    for stage, variants in enumerate(request.stage_variants()):
        if not variants or all(v.delay.total_seconds() == 0 for v in variants):
            continue
        groups: dict[float, list[str]] = {}
        for v in variants:
            groups.setdefault(v.delay.total_seconds(), []).append(v.name)
        out[str(stage)] = [
            DelayGroup(delay_seconds=d, variants=n) for d, n in sorted(groups.items())
        ]
    return out


class ForwarderInput(BaseModel):
    app_key: str
    # The forwarder ends after this long with nothing to deliver; new rows start it again.
    idle_seconds: float = 300


class DeliverInput(BaseModel):
    app_key: str
    # Workflow time: what "due" means, so the retry schedule holds on a time-skipping server.
    now: datetime


class DeliverResult(BaseModel):
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    next_due: datetime | None = None
