"""EngageLab's statistics (`/v4/status/*`) read from the ledger: a push's totals with the funnel
per stage, and one push's lifecycle on given devices. Another app's msg_id is as unknown as one
that never existed."""

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from relance.db import Delivery, Push, reading
from relance.journey import StageFunnel
from relance.ledger.funnel import funnel
from relance.ledger.pushes import get_push
from relance.states import DeliveryStatus


class MessageStats(BaseModel):
    """One push in EngageLab's words (recipient-level: a device counts once however many
    stages reached it), with relance's funnel per stage alongside."""

    targets: int = Field(description="Devices the push was addressed to.")
    sent: int = Field(description="Devices at least one stage was handed to a provider for.")
    delivered: int
    impressions: int = Field(description="Devices that displayed the notification.")
    clicks: int
    failed: int
    state: str = Field(description="relance: the journey's state.")
    clicked_after_resend: int = Field(description="relance: clicks that came on a resend stage.")
    stages: list[StageFunnel] = Field(description="relance: the funnel of each stage.")


def message_stats(engine: Engine, app_key: str, msg_ids: Sequence[str]) -> dict[str, MessageStats]:
    """The statistics of each of `msg_ids` that belongs to the app, keyed by msg_id."""
    with Session(reading(engine)) as session:
        own = set(
            session.execute(
                sa_select(col(Push.msg_id)).where(
                    col(Push.msg_id).in_(list(msg_ids)), col(Push.app_key) == app_key
                )
            ).scalars()
        )
        sent = dict(
            session.execute(
                sa_select(col(Delivery.msg_id), func.count(func.distinct(Delivery.registration_id)))
                .where(
                    col(Delivery.msg_id).in_(sorted(own)),
                    col(Delivery.status) == DeliveryStatus.sent.value,
                )
                .group_by(col(Delivery.msg_id))
            ).all()
        )
    out = {}
    for msg_id in dict.fromkeys(msg_ids):  # the caller's order, each once
        if msg_id not in own:
            continue
        f = funnel(engine, msg_id)
        out[msg_id] = MessageStats(
            targets=f.recipients,
            sent=int(sent.get(msg_id, 0)),
            delivered=f.delivered,
            impressions=f.displayed,
            clicks=f.clicked,
            failed=f.failed,
            state=f.state,
            clicked_after_resend=f.clicked_after_resend,
            stages=f.stages,
        )
    return out


class StageLifecycle(BaseModel):
    stage: int
    status: str = Field(description="pending, sending, sent, failed or skipped.")
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    displayed_at: datetime | None = None
    clicked_at: datetime | None = None
    failed_at: datetime | None = None
    error: str | None = None


class DeviceLifecycle(BaseModel):
    status: str | None = Field(
        description="The furthest point reached, in EngageLab's callback words (sent, "
        "delivered, display, click, sent_failed); null if the push did not target the device "
        "or nothing was sent yet."
    )
    stages: list[StageLifecycle]


def _furthest(stages: list[StageLifecycle]) -> str | None:
    if any(s.clicked_at for s in stages):
        return "click"
    if any(s.displayed_at for s in stages):
        return "display"
    if any(s.delivered_at for s in stages):
        return "delivered"
    if any(s.status == DeliveryStatus.sent for s in stages):
        return "sent"
    if any(s.status == DeliveryStatus.failed for s in stages):
        return "sent_failed"
    return None


def message_lifecycle(
    engine: Engine, app_key: str, msg_id: str, registration_ids: Sequence[str]
) -> dict[str, DeviceLifecycle]:
    """Each stage of one push on each given device; raises NotFound for an unknown msg_id."""
    get_push(engine, app_key, msg_id)
    wanted = list(dict.fromkeys(registration_ids))
    d = Delivery
    with Session(reading(engine)) as session:
        rows = session.execute(
            sa_select(
                col(d.registration_id),
                col(d.stage),
                col(d.status),
                col(d.sent_at),
                col(d.delivered_at),
                col(d.displayed_at),
                col(d.clicked_at),
                col(d.failed_at),
                col(d.error),
            )
            .where(col(d.msg_id) == msg_id, col(d.registration_id).in_(wanted))
            .order_by(col(d.registration_id), col(d.stage))
        ).all()
    stages: dict[str, list[StageLifecycle]] = {rid: [] for rid in wanted}
    for (
        rid,
        stage,
        status,
        sent_at,
        delivered_at,
        displayed_at,
        clicked_at,
        failed_at,
        error,
    ) in rows:
        stages[rid].append(
            StageLifecycle(
                stage=stage,
                status=status,
                sent_at=sent_at,
                delivered_at=delivered_at,
                displayed_at=displayed_at,
                clicked_at=clicked_at,
                failed_at=failed_at,
                error=error,
            )
        )
    return {rid: DeviceLifecycle(status=_furthest(s), stages=s) for rid, s in stages.items()}
