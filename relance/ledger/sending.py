"""Sending a stage: who it goes to, the next page of deliveries, and each provider outcome
recorded so that a crashed attempt resumes without sending anyone the stage twice."""

from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance.db import Delivery, Device, Push, Recipient, reading, utcnow
from relance.ledger._base import NotFound, chunks, insert_for
from relance.ledger.devices import invalidate
from relance.ledger.events import event_key, store_events
from relance.ledger.transitions import apply_status, bump_counts
from relance.models import EventStatus
from relance.states import OPEN_DELIVERIES, DeliveryStatus


def select_resend_audience(engine: Engine, msg_id: str, stage: int) -> int:
    """Queue stage `stage` for every recipient that still matches the trigger (idempotent)."""
    with Session(engine) as session:
        push = session.get(Push, msg_id)
        if push is None:
            raise NotFound("msg_id", f"no push {msg_id!r}")
        already = session.execute(
            sa_select(func.count())
            .select_from(Delivery)
            .where(col(Delivery.msg_id) == msg_id, col(Delivery.stage) == stage)
        ).scalar_one()
        if already:
            return int(already)
        matching = select(Recipient.registration_id).where(
            Recipient.msg_id == msg_id,
            col(Recipient.stopped).is_(False),
            exists().where(
                col(Device.app_key) == push.app_key,
                col(Device.registration_id) == col(Recipient.registration_id),
                col(Device.valid).is_(True),
            ),
        )
        ids = list(session.exec(matching))
        for chunk in chunks(ids, 1000):
            session.execute(
                insert_for(session)(Delivery),
                [{"msg_id": msg_id, "stage": stage, "registration_id": rid} for rid in chunk],
            )
        session.commit()
        return len(ids)


@dataclass
class Outbound:
    delivery_id: int
    registration_id: str
    platform: str
    attributes: dict[str, Any]
    resend: bool  # already marked "sending" by an attempt that may have reached the provider


def next_batch(
    engine: Engine, msg_id: str, stage: int, after_id: int, limit: int
) -> tuple[list[Outbound], int | None]:
    """The next deliveries to send after `after_id`, and the last id read (None at the end).

    Those that stopped matching, or whose device became invalid, are marked skipped."""
    with Session(engine) as session:
        push = session.get(Push, msg_id)
        if push is None:
            return [], None
        rows = session.exec(
            select(Delivery, Recipient, Device)
            .join(
                Recipient,
                and_(
                    col(Recipient.msg_id) == col(Delivery.msg_id),
                    col(Recipient.registration_id) == col(Delivery.registration_id),
                ),
            )
            .join(
                Device,
                and_(
                    col(Device.app_key) == push.app_key,
                    col(Device.registration_id) == col(Delivery.registration_id),
                ),
                isouter=True,
            )
            .where(
                Delivery.msg_id == msg_id,
                Delivery.stage == stage,
                col(Delivery.id) > after_id,
                col(Delivery.status).in_(OPEN_DELIVERIES),
            )
            .order_by(col(Delivery.id))
            .limit(limit)
        ).all()
        out: list[Outbound] = []
        skipped: list[int] = []
        for delivery, recipient, device in rows:
            assert delivery.id is not None
            if device is None or not device.valid or (stage > 0 and recipient.stopped):
                skipped.append(delivery.id)
                continue
            out.append(
                Outbound(
                    delivery.id,
                    delivery.registration_id,
                    recipient.platform,
                    dict(device.attributes or {}),
                    delivery.status == DeliveryStatus.sending,
                )
            )
        if skipped:
            session.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(skipped))
                .values(status=DeliveryStatus.skipped.value)
            )
            session.commit()
        return out, (rows[-1][0].id if rows else None)


def mark_sending(engine: Engine, contents: dict[int, tuple[str | None, str]]) -> None:
    """Record, before the provider call, that these deliveries may reach devices."""
    with Session(engine) as session:
        for delivery_id, (title, alert) in contents.items():
            session.execute(
                update(Delivery)
                .where(
                    col(Delivery.id) == delivery_id,
                    col(Delivery.status) == DeliveryStatus.pending.value,
                )
                .values(status=DeliveryStatus.sending.value, title=title, alert=alert)
            )
        session.commit()


@dataclass
class SendOutcomeRow:
    delivery_id: int
    registration_id: str
    ok: bool
    error: str | None = None
    token_invalid: bool = False
    # Not sent yet: back to pending, to be sent again after this many seconds.
    retry_after: float | None = None


def record_outcomes(
    engine: Engine, msg_id: str, stage: int, outcomes: list[SendOutcomeRow]
) -> None:
    """Record the provider's answers: sent; not yet (back to pending, for a later try); or
    failed (a dead token also invalidates the device)."""
    now = utcnow()
    later = [o.delivery_id for o in outcomes if not o.ok and o.retry_after is not None]
    outcomes = [o for o in outcomes if o.ok or o.retry_after is None]
    failed = [o for o in outcomes if not o.ok]
    with Session(engine) as session:
        push = session.get(Push, msg_id)
        if push is None:
            raise NotFound("msg_id", f"no push {msg_id!r}")
        if later:
            session.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(later))
                .values(status=DeliveryStatus.pending.value)
            )
        ok_ids = [o.delivery_id for o in outcomes if o.ok]
        if ok_ids:
            session.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(ok_ids))
                .values(status=DeliveryStatus.sent.value, sent_at=now)
            )
        events = [
            {
                "event_id": event_key(msg_id, o.registration_id, stage, status),
                "msg_id": msg_id,
                "registration_id": o.registration_id,
                "stage": stage,
                "status": status,
                "at": now,
                "error": None if o.ok else o.error,
                "received_at": now,
            }
            for o in outcomes
            for status in (EventStatus.sent.value if o.ok else EventStatus.failed.value,)
        ]
        store_events(session, push, events)
        counts: Counter[str] = Counter()
        if failed:
            deliveries = {
                d.id: d
                for d in session.exec(
                    select(Delivery).where(col(Delivery.id).in_([o.delivery_id for o in failed]))
                )
            }
            recipients = {
                r.registration_id: r
                for r in session.exec(
                    select(Recipient).where(
                        Recipient.msg_id == msg_id,
                        col(Recipient.registration_id).in_([o.registration_id for o in failed]),
                    )
                )
            }
            for o in failed:
                delivery = deliveries[o.delivery_id]
                delivery.status = DeliveryStatus.failed.value
                apply_status(
                    push.condition,
                    recipients[o.registration_id],
                    delivery,
                    EventStatus.failed,
                    now,
                    o.error,
                    counts,
                )
            for o in failed:
                if o.token_invalid:
                    invalidate(session, push.app_key, o.registration_id, o.error)
        session.flush()
        bump_counts(session, msg_id, counts)
        session.commit()


def stage_counts(engine: Engine, msg_id: str, stage: int) -> dict[str, int]:
    """How many of the stage's deliveries are in each DeliveryStatus."""
    with Session(reading(engine)) as session:
        rows = session.execute(
            sa_select(col(Delivery.status), func.count())
            .where(col(Delivery.msg_id) == msg_id, col(Delivery.stage) == stage)
            .group_by(col(Delivery.status))
        ).all()
    return {status: int(n) for status, n in rows}
