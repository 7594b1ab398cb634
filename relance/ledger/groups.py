"""A stage's random groups written into its deliveries: the holdout of a resend stage (status
`held_out`, never claimed, never sent) and each recipient's A/B variant (`Delivery.variant`).

The draws are relance.assignment's pure functions of msg_id, registration_id and stage, so
running this again (a retried activity, a replay) decides the same. Pages by delivery id, so a
million-recipient stage keeps memory flat: only one page of ids is in this process at a time."""

from collections import defaultdict
from typing import Any

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from relance.assignment import Split, held_out, sticky_splits, variant
from relance.db import Delivery, Push
from relance.models import PushRequest
from relance.states import DeliveryStatus

PAGE = 1000


def stage_groups(request: PushRequest, stage: int) -> tuple[float, Split | None]:
    """Stage `stage`'s holdout share (resend stages only) and its sticky variant split."""
    holdout = request.resend.holdout if request.resend and stage > 0 else 0.0
    per_stage = request.stage_variants()
    splits = sticky_splits([[(v.name, v.weight) for v in s] if s else None for s in per_stage])
    return holdout, splits[stage] if stage < len(splits) else None


def assign_in(session: Session, push: Push, stage: int) -> int:
    """Assign the stage's still-unassigned pending deliveries, in the caller's transaction.
    Returns how many were held out."""
    request = PushRequest.model_validate(push.request)
    holdout, split = stage_groups(request, stage)
    if holdout <= 0 and split is None:
        return 0
    msg_id, cursor, held = push.msg_id, 0, 0
    conditions: list[Any] = [
        col(Delivery.msg_id) == msg_id,
        col(Delivery.stage) == stage,
        col(Delivery.status) == DeliveryStatus.pending.value,
    ]
    if split is not None:
        conditions.append(col(Delivery.variant).is_(None))
    while True:
        rows = session.execute(
            sa_select(col(Delivery.id), col(Delivery.registration_id))
            .where(*conditions, col(Delivery.id) > cursor)
            .order_by(col(Delivery.id))
            .limit(PAGE)
        ).all()
        if not rows:
            return held
        cursor = rows[-1][0]
        out: list[int] = []
        by_variant: dict[str, list[int]] = defaultdict(list)
        for delivery_id, rid in rows:
            if held_out(msg_id, rid, stage, holdout):
                out.append(delivery_id)
            elif split is not None:
                by_variant[variant(msg_id, rid, split)].append(delivery_id)
        if out:
            session.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(out))
                .values(status=DeliveryStatus.held_out.value)
            )
            held += len(out)
        for name, ids in by_variant.items():
            session.execute(update(Delivery).where(col(Delivery.id).in_(ids)).values(variant=name))
        if len(rows) < PAGE:
            return held


def assign_groups(engine: Engine, msg_id: str, stage: int) -> int:
    """`assign_in` in its own transaction (stage 0's variants, before its first claim)."""
    with Session(engine) as session:
        push = session.get(Push, msg_id)
        if push is None:
            return 0
        held = assign_in(session, push, stage)
        session.commit()
        return held
