"""The ledger side of when and how often: recipients' time zones (the facts release slots are
computed from), a slot's audience, claims that check frequency caps and count the send in one
atomic step, and the app throttle's per-minute tokens shared by all its pushes and workers."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from relance.db import Delivery, Device, DeviceSend, Push, Recipient, ThrottleMinute, utcnow
from relance.ledger._base import NotFound, chunks, insert_for, on_postgresql
from relance.ledger.events import event_key, store_events
from relance.ledger.groups import assign_in
from relance.ledger.sending import Outbound, Page, open_page
from relance.states import DeliveryStatus
from relance.timing import MAX_CAP_WINDOW, FrequencyCap


class SkipReason:
    stopped = "stopped"  # clicked (or reached the condition's status) or failed for good
    invalid_token = "invalid_token"
    frequency_capped = "frequency_capped"


def _app_key(session: Session, msg_id: str) -> str:
    app_key = session.execute(
        sa_select(col(Push.app_key)).where(col(Push.msg_id) == msg_id)
    ).scalar_one_or_none()
    if app_key is None:
        raise NotFound("msg_id", f"no push {msg_id!r}")
    return str(app_key)


def plan_zones(engine: Engine, msg_id: str, default_zone: str) -> list[str]:
    """Record each recipient's time zone (the device's, else the app's default) and return the
    distinct zones: what the journey computes its release slots from. Idempotent: a recipient
    keeps the zone it was planned with, so a device moving zone mid-journey is not lost
    between two zones' slots."""
    with Session(engine) as session:
        app_key = _app_key(session, msg_id)
        device_zone = (
            sa_select(col(Device.timezone))
            .where(
                col(Device.app_key) == app_key,
                col(Device.registration_id) == col(Recipient.registration_id),
            )
            .scalar_subquery()
        )
        session.execute(
            update(Recipient)
            .where(col(Recipient.msg_id) == msg_id, col(Recipient.timezone).is_(None))
            .values(timezone=func.coalesce(device_zone, default_zone))
        )
        zones = session.execute(
            sa_select(col(Recipient.timezone)).where(col(Recipient.msg_id) == msg_id).distinct()
        ).scalars()
        out = sorted(z for z in zones if z)
        session.commit()
    return out


def _in_zones(zones: list[str] | None) -> list[ColumnElement[bool]]:
    return [] if zones is None else [col(Recipient.timezone).in_(zones)]


def select_slot_audience(engine: Engine, msg_id: str, stage: int, zones: list[str] | None) -> int:
    """Queue resend stage `stage` for the recipients in `zones` who still match the trigger
    (idempotent: a retry inserts nothing twice)."""
    with Session(engine) as session:
        app_key = _app_key(session, msg_id)
        ids = list(
            session.execute(
                sa_select(col(Recipient.registration_id)).where(
                    col(Recipient.msg_id) == msg_id,
                    col(Recipient.stopped).is_(False),
                    *_in_zones(zones),
                    exists().where(
                        col(Device.app_key) == app_key,
                        col(Device.registration_id) == col(Recipient.registration_id),
                        col(Device.valid).is_(True),
                    ),
                )
            ).scalars()
        )
        for chunk in chunks(ids, 1000):
            session.execute(
                insert_for(session)(Delivery).on_conflict_do_nothing(),
                [{"msg_id": msg_id, "stage": stage, "registration_id": rid} for rid in chunk],
            )
        push = session.get(Push, msg_id)
        if push is not None:  # the stage's holdout and variants (pending rows not yet decided)
            assign_in(session, push, stage)
        session.commit()
        return len(ids)


@dataclass
class TimedPage(Page):
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass
class Claim:
    """What a timed claim needs beyond the page: the slot's zones and time, and the caps."""

    zones: list[str] | None
    at: datetime  # workflow time of the claim: what the caps' rolling windows end at
    held: bool = False
    caps: list[FrequencyCap] = field(default_factory=list)


def claim_timed(
    engine: Engine, msg_id: str, stage: int, after_id: int, limit: int, claim: Claim
) -> TimedPage:
    """`claim_batch` for a timed journey: the next open deliveries of the slot's zones, those
    that stopped matching, lost their token or are over a frequency cap marked skipped with the
    reason, the others marked `sending` and counted against the caps, all in one transaction.

    The caps' check and count are one atomic step: on PostgreSQL the devices' rows are locked
    (in id order) before their sends are counted, on SQLite the transaction holds the write
    lock from its start, so two journeys racing for a device's last slot cannot both take it."""
    with Session(engine) as session:
        app_key = _app_key(session, msg_id)
        rows = open_page(session, app_key, msg_id, stage, after_id, limit, _in_zones(claim.zones))
        skipped: dict[str, list[int]] = {}
        candidates = []
        for delivery_id, rid, status, platform, stopped, valid, attributes, _ in rows:
            if not valid:
                skipped.setdefault(SkipReason.invalid_token, []).append(delivery_id)
            elif stage > 0 and stopped:
                skipped.setdefault(SkipReason.stopped, []).append(delivery_id)
            else:
                candidates.append((delivery_id, rid, status, platform, attributes))
        if claim.caps and candidates:
            allowed = _within_caps(session, app_key, candidates, claim)
            capped = [c[0] for c in candidates if c[0] not in allowed]
            if capped:
                skipped[SkipReason.frequency_capped] = capped
            candidates = [c for c in candidates if c[0] in allowed]
        items, claimed = [], []
        variant_of = {row[0]: row[7] for row in rows}
        for delivery_id, rid, status, platform, attributes in candidates:
            resend = status == DeliveryStatus.sending
            if not resend:
                claimed.append(delivery_id)
            items.append(
                Outbound(
                    delivery_id,
                    rid,
                    platform,
                    dict(attributes or {}),
                    resend,
                    variant_of[delivery_id],
                )
            )
        held = {"held_until": claim.at} if claim.held else {}
        if skipped:
            _skip_events(session, msg_id, stage, rows, skipped, claim.at)
        for reason, ids in skipped.items():
            session.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(ids))
                .values(status=DeliveryStatus.skipped.value, skip_reason=reason, **held)
            )
        if claimed:
            session.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(claimed))
                .values(status=DeliveryStatus.sending.value, **held)
            )
        session.commit()
    return TimedPage(
        items,
        rows[-1][0] if rows else None,
        len(rows) < limit,
        Counter({reason: len(ids) for reason, ids in skipped.items()}),
    )


def _skip_events(
    session: Session,
    msg_id: str,
    stage: int,
    rows: Sequence[Any],
    skipped: dict[str, list[int]],
    at: datetime,
) -> None:
    """A `skipped` status event per skipped recipient, with its reason: stored, and queued for
    the push's callback URLs, in the claim's transaction."""
    push = session.get(Push, msg_id)
    assert push is not None
    rid_of = {row[0]: row[1] for row in rows}
    now = utcnow()
    events = [
        {
            "event_id": event_key(msg_id, rid_of[delivery_id], stage, "skipped"),
            "msg_id": msg_id,
            "registration_id": rid_of[delivery_id],
            "stage": stage,
            "status": "skipped",
            "at": at,
            "error": reason,
            "received_at": now,
        }
        for reason, ids in skipped.items()
        for delivery_id in ids
    ]
    store_events(session, push, events, new_ones=False)


def _within_caps(
    session: Session,
    app_key: str,
    candidates: list[tuple[int, str, str, str, object]],
    claim: Claim,
) -> set[int]:
    """The deliveries among `candidates` that the caps allow, each counted (in the caller's
    transaction). A delivery counted by an earlier attempt is allowed without a second count."""
    rids = sorted({c[1] for c in candidates})
    if on_postgresql(session):
        session.execute(  # the devices' rows: racing claims for one device queue here
            sa_select(col(Device.id))
            .where(col(Device.app_key) == app_key, col(Device.registration_id).in_(rids))
            .order_by(col(Device.id))
            .with_for_update()
        ).all()
    ids = [c[0] for c in candidates]
    counted = set(
        session.execute(
            sa_select(col(DeviceSend.delivery_id)).where(col(DeviceSend.delivery_id).in_(ids))
        ).scalars()
    )
    windows: list[tuple[FrequencyCap, Counter[str]]] = []
    for cap in claim.caps:
        sent = session.execute(
            sa_select(col(DeviceSend.registration_id), func.count())
            .where(
                col(DeviceSend.app_key) == app_key,
                col(DeviceSend.registration_id).in_(rids),
                col(DeviceSend.at) > claim.at - cap.per,
            )
            .group_by(col(DeviceSend.registration_id))
        ).all()
        windows.append((cap, Counter({rid: int(n) for rid, n in sent})))
    allowed, new = set(), []
    for delivery_id, rid, *_ in candidates:
        if delivery_id in counted:
            allowed.add(delivery_id)
            continue
        if any(n[rid] >= cap.max for cap, n in windows):
            continue
        for _, n in windows:
            n[rid] += 1
        allowed.add(delivery_id)
        new.append(
            {"delivery_id": delivery_id, "app_key": app_key, "registration_id": rid, "at": claim.at}
        )
    if new:
        session.execute(insert_for(session)(DeviceSend).on_conflict_do_nothing(), new)
    session.execute(  # older than any window (90 days at most): nothing reads them again
        delete(DeviceSend).where(
            col(DeviceSend.app_key) == app_key,
            col(DeviceSend.registration_id).in_(rids),
            col(DeviceSend.at) < claim.at - MAX_CAP_WINDOW,
        )
    )
    return allowed


def uncount(engine: Engine, delivery_ids: list[int]) -> None:
    """Sends that failed for good do not count against the caps."""
    if not delivery_ids:
        return
    with Session(engine) as session:
        session.execute(delete(DeviceSend).where(col(DeviceSend.delivery_id).in_(delivery_ids)))
        session.commit()


def take_tokens(engine: Engine, app_key: str, minute: datetime, want: int, per_minute: int) -> int:
    """Take up to `want` of the app's `per_minute` sends in `minute`; returns how many were
    granted (0: the minute is full). One row per app and minute, locked while it is read and
    bumped, so concurrent pushes on any number of workers share it."""
    if want <= 0:
        return 0
    with Session(engine) as session:
        opened = (
            session.connection()
            .execute(
                insert_for(session)(ThrottleMinute)
                .on_conflict_do_nothing()
                .execution_options(preserve_rowcount=True),
                {"app_key": app_key, "minute": minute, "used": 0},
            )
            .rowcount
        )
        if opened:  # a new minute: the app's minutes of more than an hour ago go
            session.execute(
                delete(ThrottleMinute).where(
                    col(ThrottleMinute.app_key) == app_key,
                    col(ThrottleMinute.minute) < minute - timedelta(hours=1),
                )
            )
        query = sa_select(col(ThrottleMinute.used)).where(
            col(ThrottleMinute.app_key) == app_key, col(ThrottleMinute.minute) == minute
        )
        used = int(session.execute(query.with_for_update()).scalar_one())
        granted = max(0, min(want, per_minute - used))
        if granted:
            session.execute(
                update(ThrottleMinute)
                .where(col(ThrottleMinute.app_key) == app_key, col(ThrottleMinute.minute) == minute)
                .values(used=used + granted)
            )
        session.commit()
    return granted


def give_back(engine: Engine, app_key: str, minute: datetime, n: int) -> None:
    """Tokens taken but not used (fewer deliveries left than granted)."""
    if n <= 0:
        return
    with Session(engine) as session:
        session.execute(
            update(ThrottleMinute)
            .where(col(ThrottleMinute.app_key) == app_key, col(ThrottleMinute.minute) == minute)
            .values(used=col(ThrottleMinute.used) - n)
        )
        session.commit()
