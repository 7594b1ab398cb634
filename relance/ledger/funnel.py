"""What a push achieved: the recipient-level progress a journey waits on, and the funnel per
stage that the API and the journey's result report."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, case, exists, func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from relance.db import Delivery, Push, reading
from relance.journey import Funnel, Progress, StageFunnel, StageProgress, VariantFunnel
from relance.ledger._base import NotFound
from relance.ledger.report import report_rows
from relance.report import group_of
from relance.states import DeliveryStatus


def progress(engine: Engine, msg_id: str, stages_up_to: float | None = None) -> Progress:
    """The push's counts; with its per-stage counts too when it has at most `stages_up_to`
    recipients (None: not read; `math.inf`: whatever its size). That read grows with the
    push, so the API's signals take it only as often as its size allows."""
    with Session(reading(engine)) as session:
        push = session.get(Push, msg_id)
        result = progress_of(push)
        if push is not None and stages_up_to is not None and push.recipients <= stages_up_to:
            result.stages = stage_progress(session, msg_id)
        return result


def stage_progress(session: Session, msg_id: str) -> list[StageProgress]:
    """Delivered, displayed, clicked and deferred per stage, counted as the funnel counts
    them (the held-out excluded): one grouped read of the push's deliveries."""
    d = Delivery
    observed = col(d.status) != DeliveryStatus.held_out.value

    def seen(column: Any) -> Any:
        return func.sum(case((and_(observed, column.is_not(None)), 1), else_=0))

    rows = session.execute(
        sa_select(
            col(d.stage),
            seen(col(d.delivered_at)),
            seen(col(d.displayed_at)),
            seen(col(d.clicked_at)),
            func.count(col(d.held_until)),
        )
        .where(col(d.msg_id) == msg_id)
        .group_by(col(d.stage))
        .order_by(col(d.stage))
    ).all()
    return [
        StageProgress(
            stage=int(stage),
            delivered=int(delivered or 0),
            displayed=int(displayed or 0),
            clicked=int(clicked or 0),
            deferred=int(deferred or 0),
        )
        for stage, delivered, displayed, clicked, deferred in rows
    ]


def progress_of(push: Push | None) -> Progress:
    if push is None:
        return Progress()
    return Progress(
        seq=push.seq,
        recipients=push.recipients,
        delivered=push.n_delivered,
        displayed=push.n_displayed,
        clicked=push.n_clicked,
        failed=push.n_failed,
        stopped=push.n_stopped,
    )


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def funnel(engine: Engine, msg_id: str) -> Funnel:
    """Delivered, displayed and clicked per stage, and what the resends added."""
    d = Delivery
    with Session(reading(engine)) as session:
        push = session.get(Push, msg_id)
        if push is None:
            raise NotFound("msg_id", f"no push {msg_id!r}")
        rows = session.execute(
            sa_select(
                col(d.stage),
                func.count(),
                func.sum(case((col(d.status) == DeliveryStatus.sent.value, 1), else_=0)),
                func.count(col(d.failed_at)),
                func.sum(case((col(d.status) == DeliveryStatus.skipped.value, 1), else_=0)),
                func.count(col(d.delivered_at)),
                func.count(col(d.displayed_at)),
                func.count(col(d.clicked_at)),
                func.count(col(d.held_until)),
                func.sum(case((col(d.status) == DeliveryStatus.held_out.value, 1), else_=0)),
            )
            .where(col(d.msg_id) == msg_id)
            .group_by(col(d.stage))
            .order_by(col(d.stage))
        ).all()
        reasons: dict[int, dict[str, int]] = {}
        skips = any(row[4] for row in rows)  # no second statement unless someone was skipped
        for stage, reason, n in (
            []
            if not skips
            else session.execute(
                sa_select(col(d.stage), col(d.skip_reason), func.count())
                .where(col(d.msg_id) == msg_id, col(d.status) == DeliveryStatus.skipped.value)
                .group_by(col(d.stage), col(d.skip_reason))
            ).all()
        ):
            reasons.setdefault(stage, {})[reason or "not_matching"] = int(n)
        # What recipients did, from the report's own rows: the funnel and the report agree.
        outcomes = report_rows(session, msg_id)
        first = aliased(Delivery)
        added = session.execute(
            sa_select(func.count(func.distinct(col(d.registration_id)))).where(
                col(d.msg_id) == msg_id,
                col(d.stage) > 0,
                col(d.clicked_at).is_not(None),
                ~exists().where(
                    col(first.msg_id) == msg_id,
                    col(first.stage) == 0,
                    col(first.registration_id) == col(d.registration_id),
                    col(first.clicked_at).is_not(None),
                ),
            )
        ).scalar_one()
    stages = []
    for row in rows:
        stage, targeted, sent, failed, skipped, _, _, _, deferred = row[:9]
        sent = int(sent or 0)
        mine = [r for r in outcomes if r.stage == stage]
        seen = group_of(r for r in mine if r.status != DeliveryStatus.held_out.value)
        delivered, displayed, clicked = seen["delivered"], seen["displayed"], seen["clicked"]
        variants = {}
        for name in sorted({r.variant for r in mine if r.variant is not None}):
            v = group_of(
                r for r in mine if r.variant == name and r.status != DeliveryStatus.held_out.value
            )
            variants[name] = VariantFunnel(**{k: v[k] for k in VariantFunnel.model_fields})
        stages.append(
            StageFunnel(
                stage=stage,
                targeted=targeted,
                sent=sent,
                failed=int(failed or 0),
                skipped=int(skipped or 0),
                deferred=int(deferred or 0),
                held_out=int(row[9] or 0),
                skipped_by_reason=reasons.get(stage, {}),
                delivered=delivered,
                displayed=displayed,
                clicked=clicked,
                delivered_rate=_rate(delivered, sent),
                displayed_rate=_rate(displayed, sent),
                clicked_rate=_rate(clicked, sent),
                converted=seen["converted"],
                conversion_value=seen["conversion_value"],
                unsubscribed=seen["unsubscribed"],
                converted_rate=seen["converted_rate"],
                unsubscribed_rate=seen["unsubscribed_rate"],
                variants=variants,
            )
        )
    return Funnel(
        msg_id=msg_id,
        state=push.state,
        recipients=push.recipients,
        delivered=push.n_delivered,
        displayed=push.n_displayed,
        clicked=push.n_clicked,
        failed=push.n_failed,
        stages=stages,
        clicked_after_resend=int(added),
    )


class StageSlot(BaseModel):
    """The deliveries of one stage that go (or went) at one time: held ones at their release
    time, the others at `held_until` None."""

    stage: int
    held_until: datetime | None
    deliveries: int
    sent: int
    first_sent_at: datetime | None
    last_sent_at: datetime | None


def stage_slots(engine: Engine, msg_id: str) -> list[StageSlot]:
    """When each stage actually went, slot by slot (quiet hours and local time hold some
    recipients until a later slot): what a timeline draws against the planned times."""
    d = Delivery
    with Session(reading(engine)) as session:
        rows = session.execute(
            sa_select(
                col(d.stage),
                col(d.held_until),
                func.count(),
                func.count(col(d.sent_at)),
                func.min(col(d.sent_at)),
                func.max(col(d.sent_at)),
            )
            .where(col(d.msg_id) == msg_id)
            .group_by(col(d.stage), col(d.held_until))
            .order_by(col(d.stage), col(d.held_until))
        ).all()
    return [
        StageSlot(
            stage=stage,
            held_until=held,
            deliveries=n,
            sent=sent,
            first_sent_at=first,
            last_sent_at=last,
        )
        for stage, held, n, sent, first, last in rows
    ]
