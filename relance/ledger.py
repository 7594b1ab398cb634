"""The ledger: every read and write of pushes, recipients, deliveries and status events.

The ledger is the source of truth; the workflow only holds counters. Both the API and the
activities call these functions (synchronous: callers run them in a thread).
"""

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import and_, case, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased
from sqlmodel import Session

from relance import outbox
from relance.db import (
    App,
    Delivery,
    Device,
    ProviderConfig,
    Push,
    Recipient,
    StatusEvent,
    reading,
    utcnow,
)
from relance.journey import Funnel, Progress, StageFunnel
from relance.models import DeviceIn, EventStatus, PushRequest, StatusEventIn, TriggerCondition

STOP_STATUS = {
    TriggerCondition.not_clicked: EventStatus.clicked,
    TriggerCondition.not_displayed: EventStatus.displayed,
    TriggerCondition.not_delivered: EventStatus.delivered,
}
# A status implies the ones before it: a click that arrives first still counts as displayed.
IMPLIED = {
    EventStatus.clicked: (EventStatus.delivered, EventStatus.displayed, EventStatus.clicked),
    EventStatus.displayed: (EventStatus.delivered, EventStatus.displayed),
    EventStatus.delivered: (EventStatus.delivered,),
    EventStatus.failed: (EventStatus.failed,),
    EventStatus.sent: (),
}


class LedgerError(Exception):
    """A request the ledger refuses; `field` names what was wrong."""

    status_code = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(LedgerError):
    status_code = 404


# ---- apps and devices -------------------------------------------------------------------


def _hash_secret(secret: str) -> str:
    # Secrets are 32 random bytes: a plain SHA-256 is enough and keeps auth cheap per request.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_app(
    engine: Engine, name: str = "", app_key: str | None = None, secret: str | None = None
) -> tuple[str, str]:
    """Create (or, for a given key and secret, make sure of) an app; returns (key, secret)."""
    app_key = app_key or secrets.token_hex(12)
    secret = secret or secrets.token_urlsafe(32)
    with Session(engine) as session:
        existing = session.get(App, app_key)
        if existing is None:
            session.add(
                App(
                    app_key=app_key,
                    secret_hash=_hash_secret(secret),
                    name=name,
                    callback_secret=secrets.token_urlsafe(32),
                )
            )
        else:
            existing.secret_hash = _hash_secret(secret)
        session.commit()
    return app_key, secret


def get_app(engine: Engine, app_key: str) -> App:
    with Session(reading(engine)) as session:
        app = session.get(App, app_key)
    if app is None:
        raise NotFound("app_key", f"no app {app_key!r}")
    return app


def set_callbacks(
    engine: Engine, app_key: str, urls: list[str], username: str | None, secret: str | None
) -> App:
    """The app's default callback URLs, and optionally the username and secret that sign them."""
    with Session(engine) as session:
        app = session.get(App, app_key)
        if app is None:
            raise NotFound("app_key", f"no app {app_key!r}")
        app.callback_urls = list(urls)
        if username is not None:
            app.callback_username = username
        if secret is not None:
            app.callback_secret = secret
        session.commit()
        session.refresh(app)
        return app


def set_provider(
    engine: Engine, app_key: str, provider: str, platforms: list[str], credentials: dict[str, Any]
) -> ProviderConfig:
    """Store (or replace) how the app reaches `platforms`; a platform moves from any other
    provider of the app to this one."""
    with Session(engine) as session:
        configs = {
            c.provider: c
            for c in session.exec(  # type: ignore[call-overload]
                select(ProviderConfig).where(ProviderConfig.app_key == app_key)
            ).scalars()
        }
        for other in configs.values():
            if other.provider != provider:
                other.platforms = [p for p in other.platforms if p not in platforms]
                other.updated_at = utcnow()
        config = configs.get(provider) or ProviderConfig(app_key=app_key, provider=provider)
        config.platforms, config.credentials, config.updated_at = platforms, credentials, utcnow()
        session.add(config)
        session.commit()
        session.refresh(config)
        return config


def provider_configs(engine: Engine, app_key: str) -> list[ProviderConfig]:
    with Session(reading(engine)) as session:
        return list(
            session.exec(  # type: ignore[call-overload]
                select(ProviderConfig)
                .where(ProviderConfig.app_key == app_key)
                .order_by(ProviderConfig.provider)
            ).scalars()
        )


def delete_provider(engine: Engine, app_key: str, provider: str) -> bool:
    with Session(engine) as session:
        config = (
            session.exec(  # type: ignore[call-overload]
                select(ProviderConfig).where(
                    ProviderConfig.app_key == app_key, ProviderConfig.provider == provider
                )
            )
            .scalars()
            .first()
        )
        if config is None:
            return False
        session.delete(config)
        session.commit()
        return True


def invalidate_device(engine: Engine, app_key: str, registration_id: str, reason: str) -> None:
    """A provider says this token is dead: keep it out of every later stage and push until
    the device registers again."""
    with Session(engine) as session:
        session.execute(
            update(Device)
            .where(Device.app_key == app_key, Device.registration_id == registration_id)  # type: ignore[arg-type]
            .values(valid=False, invalid_reason=reason[:500], updated_at=utcnow())
        )
        session.commit()


def authenticate(engine: Engine, app_key: str, secret: str) -> App | None:
    with Session(reading(engine)) as session:
        app = session.get(App, app_key)
    if app is None or not hmac.compare_digest(app.secret_hash, _hash_secret(secret)):
        return None
    return app


def upsert_devices(engine: Engine, app_key: str, devices: list[DeviceIn]) -> int:
    """Register or update devices; a re-registered token becomes valid again."""
    with Session(engine) as session:
        ids = [d.registration_id for d in devices]
        known = {
            d.registration_id: d
            for d in session.exec(  # type: ignore[call-overload]
                select(Device).where(Device.app_key == app_key, Device.registration_id.in_(ids))
            ).scalars()
        }
        for d in devices:
            row = known.get(d.registration_id)
            if row is None:
                row = Device(app_key=app_key, registration_id=d.registration_id)
                known[d.registration_id] = row
                session.add(row)
            row.platform, row.tags, row.alias = d.platform, d.tags, d.alias
            row.attributes, row.valid, row.invalid_reason = d.attributes, True, None
            row.updated_at = utcnow()
        session.commit()
    return len(devices)


# ---- pushes ----------------------------------------------------------------------------


def new_msg_id() -> str:
    """Numeric and time-ordered like EngageLab's: milliseconds then 6 random digits."""
    return f"{int(time.time() * 1000)}{secrets.randbelow(10**6):06d}"


@dataclass
class Accepted:
    push: Push
    created: bool


def _platforms(request: PushRequest) -> set[str] | None:
    platform = request.body.platform
    if platform == "all":
        return None
    return {platform} if isinstance(platform, str) else set(platform)


def _audience(session: Session, app_key: str, request: PushRequest) -> list[Device]:
    query = select(Device).where(Device.app_key == app_key, Device.valid.is_(True))  # type: ignore[attr-defined]
    to = request.to
    if to != "all" and to.registration_id is not None:
        ids = list(dict.fromkeys(to.registration_id))
        # A registration id not seen before is registered on the spot, on the push's platform
        # (ON CONFLICT DO NOTHING: two pushes racing to the same new device both succeed).
        platform = request.body.platform
        default_platform = (
            platform if isinstance(platform, str) and platform != "all" else "android"
        )
        now = utcnow()
        session.execute(
            _insert(session)(Device.__table__)  # type: ignore[attr-defined]
            .values(
                [
                    {
                        "app_key": app_key,
                        "registration_id": rid,
                        "platform": default_platform,
                        "tags": [],
                        "attributes": {},
                        "valid": True,
                        "updated_at": now,
                    }
                    for rid in ids
                ]
            )
            .on_conflict_do_nothing(index_elements=["app_key", "registration_id"])
        )
        known = {
            d.registration_id: d
            for d in session.exec(query.where(Device.registration_id.in_(ids))).scalars()  # type: ignore[call-overload]
        }
        devices = [known[rid] for rid in ids if rid in known]
    elif to != "all" and to.alias is not None:
        devices = list(session.exec(query.where(Device.alias.in_(to.alias))).scalars())  # type: ignore[call-overload,union-attr]
    elif to != "all" and to.tag is not None:
        wanted = set(to.tag)
        devices = [d for d in session.exec(query).scalars() if wanted & set(d.tags)]  # type: ignore[call-overload]
    else:
        devices = list(session.exec(query).scalars())  # type: ignore[call-overload]
    platforms = _platforms(request)
    return [d for d in devices if platforms is None or d.platform in platforms]


def accept_push(engine: Engine, app_key: str, request: PushRequest) -> Accepted:
    """Record a push with its audience and stage-0 deliveries, in one transaction.

    The same request_id from the same app returns the first push (even when two race)."""
    if request.request_id is not None:
        existing = find_push_by_request(engine, app_key, request.request_id)
        if existing is not None:
            return Accepted(existing, created=False)
    msg_id = new_msg_id()
    condition = request.resend.trigger.condition if request.resend else None
    with Session(engine) as session:
        devices = _audience(session, app_key, request)
        if not devices:
            raise LedgerError("to", "expected at least one valid device; the audience is empty")
        push = Push(
            msg_id=msg_id,
            app_key=app_key,
            request_id=request.request_id,
            request=request.model_dump(mode="json", by_alias=True),
            condition=condition.value if condition else None,
            stage_count=len(request.resend.stages) if request.resend else 0,
            recipients=len(devices),
        )
        session.add(push)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            existing = find_push_by_request(engine, app_key, request.request_id or "")
            if existing is None:
                raise
            return Accepted(existing, created=False)
        rows = [
            {"msg_id": msg_id, "registration_id": d.registration_id, "platform": d.platform}
            for d in devices
        ]
        for chunk in _chunks(rows, 500):
            session.execute(Recipient.__table__.insert(), chunk)  # type: ignore[attr-defined]
            session.execute(
                Delivery.__table__.insert(),  # type: ignore[attr-defined]
                [
                    {"msg_id": msg_id, "stage": 0, "registration_id": r["registration_id"]}
                    for r in chunk
                ],
            )
        session.commit()
        session.refresh(push)
        return Accepted(push, created=True)


def count_audience(engine: Engine, app_key: str, request: PushRequest) -> int:
    """How many devices a push would reach; stores nothing."""
    with Session(engine) as session:
        count = len(_audience(session, app_key, request))
        session.rollback()
    if not count:
        raise LedgerError("to", "expected at least one valid device; the audience is empty")
    return count


def find_push_by_request(engine: Engine, app_key: str, request_id: str) -> Push | None:
    with Session(reading(engine)) as session:
        return (
            session.exec(  # type: ignore[call-overload,no-any-return]
                select(Push).where(Push.app_key == app_key, Push.request_id == request_id)
            )
            .scalars()
            .first()
        )


def get_push(engine: Engine, app_key: str | None, msg_id: str) -> Push:
    """The push; another app's msg_id is as unknown as one that never existed."""
    with Session(reading(engine)) as session:
        push = session.get(Push, msg_id)
    if push is None or (app_key is not None and push.app_key != app_key):
        raise NotFound("msg_id", f"no push {msg_id!r} for this app")
    return push


def forget_push(engine: Engine, msg_id: str) -> None:
    """Remove a push whose journey could not be started, so no half-done push stays."""
    with Session(engine) as session:
        for table in (StatusEvent, Delivery, Recipient):
            session.execute(table.__table__.delete().where(table.msg_id == msg_id))  # type: ignore[attr-defined]
        session.execute(Push.__table__.delete().where(Push.msg_id == msg_id))  # type: ignore[attr-defined]
        session.commit()


def set_state(engine: Engine, msg_id: str, state: str, error: str | None = None) -> None:
    with Session(engine) as session:
        session.execute(
            update(Push).where(Push.msg_id == msg_id).values(state=state, error=error)  # type: ignore[arg-type]
        )
        session.commit()


# ---- status events ---------------------------------------------------------------------


def event_key(msg_id: str, registration_id: str, stage: int, status: str) -> str:
    """The dedup key of a status transition: one per recipient, stage and status."""
    raw = f"{msg_id}\x1f{registration_id}\x1f{stage}\x1f{status}"
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


def _insert(session: Session) -> Any:
    return (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert


def _chunks(rows: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


@dataclass
class IngestResult:
    accepted: int
    duplicates: int
    msg_ids: set[str]
    callbacks_queued: int = 0


def ingest_events(engine: Engine, app_key: str, events: list[StatusEventIn]) -> IngestResult:
    """Store a batch of status events idempotently and apply them, all in one transaction."""
    now = utcnow()
    with Session(engine) as session:
        msg_ids = {e.msg_id for e in events}
        pushes = {
            p.msg_id: p
            for p in session.exec(select(Push).where(Push.msg_id.in_(msg_ids))).scalars()  # type: ignore[call-overload,attr-defined]
        }
        for i, e in enumerate(events):
            push = pushes.get(e.msg_id)
            if push is None or push.app_key != app_key:
                raise NotFound(f"events[{i}].msg_id", f"no push {e.msg_id!r} for this app")
        pairs = {(e.msg_id, e.registration_id) for e in events}
        recipients = {
            (r.msg_id, r.registration_id): r
            for r in session.exec(  # type: ignore[call-overload]
                select(Recipient).where(
                    Recipient.msg_id.in_(msg_ids),  # type: ignore[attr-defined]
                    Recipient.registration_id.in_({rid for _, rid in pairs}),  # type: ignore[attr-defined]
                )
            ).scalars()
        }
        for i, e in enumerate(events):
            if (e.msg_id, e.registration_id) not in recipients:
                raise LedgerError(
                    f"events[{i}].registration_id",
                    f"{e.registration_id!r} is not a recipient of push {e.msg_id!r}",
                )
        deliveries: dict[tuple[str, str, int], Delivery] = {
            (d.msg_id, d.registration_id, d.stage): d
            for d in session.exec(  # type: ignore[call-overload]
                select(Delivery).where(
                    Delivery.msg_id.in_(msg_ids),  # type: ignore[attr-defined]
                    Delivery.registration_id.in_({rid for _, rid in pairs}),  # type: ignore[attr-defined]
                )
            ).scalars()
        }

        # An event without a stage counts for the latest stage sent to that device.
        latest_sent: dict[tuple[str, str], int] = {}
        for (m, r, s), d in deliveries.items():
            if d.status in ("sent", "sending") and s > latest_sent.get((m, r), -1):
                latest_sent[(m, r)] = s

        def stage_of(e: StatusEventIn) -> int:
            if e.stage is not None:
                return e.stage
            return latest_sent.get((e.msg_id, e.registration_id), 0)

        rows = []
        for e in events:
            stage = stage_of(e)
            rows.append(
                {
                    "event_id": event_key(e.msg_id, e.registration_id, stage, e.status.value),
                    "msg_id": e.msg_id,
                    "registration_id": e.registration_id,
                    "stage": stage,
                    "status": e.status.value,
                    "at": (e.at or now).astimezone(UTC),
                    "error": e.error,
                    "received_at": now,
                }
            )
        rows = list({r["event_id"]: r for r in rows}.values())  # duplicates inside one batch
        inserted: set[str] = set()
        queued = 0
        by_push: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_push.setdefault(r["msg_id"], []).append(r)
        for msg_id, mine in by_push.items():
            new, rows_queued = _store_events(session, pushes[msg_id], mine)
            inserted, queued = inserted | new, queued + rows_queued
        bumps: dict[str, dict[str, int]] = {}
        for row in rows:
            if row["event_id"] not in inserted:
                continue
            status = EventStatus(row["status"])
            key = (row["msg_id"], row["registration_id"])
            recipient, push = recipients[key], pushes[row["msg_id"]]
            delivery = deliveries.get((*key, row["stage"]))
            bump = bumps.setdefault(row["msg_id"], {})
            for implied in IMPLIED[status]:
                column = f"{implied.value}_at"
                if delivery is not None and getattr(delivery, column) is None:
                    setattr(delivery, column, row["at"])
                    if implied is EventStatus.failed:
                        delivery.error = row["error"]
                if getattr(recipient, column) is None:
                    setattr(recipient, column, row["at"])
                    if implied is EventStatus.failed:
                        recipient.error = row["error"]
                    bump[f"n_{implied.value}"] = bump.get(f"n_{implied.value}", 0) + 1
            if not recipient.stopped and _stops(push.condition, recipient):
                recipient.stopped = True
                bump["n_stopped"] = bump.get("n_stopped", 0) + 1
        session.flush()
        for msg_id, bump in bumps.items():
            if bump:
                _bump(session, msg_id, bump)
        session.commit()
        return IngestResult(
            len(inserted), len(events) - len(inserted), {r["msg_id"] for r in rows}, queued
        )


def _store_events(
    session: Session, push: Push, events: list[dict[str, Any]]
) -> tuple[set[str], int]:
    """Insert status events, ignoring ones already stored; queue the new ones for callbacks.
    Returns the event_ids that were new and how many callback rows were queued."""
    table = StatusEvent.__table__  # type: ignore[attr-defined]
    inserted: set[str] = set()
    for chunk in _chunks(events, 500):
        stmt = (
            _insert(session)(table)
            .values(chunk)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(table.c.event_id)
        )
        inserted.update(session.execute(stmt).scalars())
    queued = outbox.enqueue(
        session, push, [e for e in events if e["event_id"] in inserted], _insert(session)
    )
    return inserted, queued


def _stops(condition: str | None, recipient: Recipient) -> bool:
    """A recipient stops when it no longer matches the trigger, or failed for good."""
    if recipient.failed_at is not None and recipient.delivered_at is None:
        return True
    status = STOP_STATUS.get(TriggerCondition(condition)) if condition else EventStatus.clicked
    return getattr(recipient, f"{status.value}_at") is not None


def _bump(session: Session, msg_id: str, bump: dict[str, int]) -> None:
    values: dict[str, Any] = {k: getattr(Push, k) + v for k, v in bump.items()}
    values["seq"] = Push.seq + 1
    session.execute(update(Push).where(Push.msg_id == msg_id).values(**values))  # type: ignore[arg-type]


def progress(engine: Engine, msg_id: str) -> Progress:
    with Session(reading(engine)) as session:
        push = session.get(Push, msg_id)
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


def list_events(engine: Engine, msg_id: str, after_id: int, limit: int) -> list[StatusEvent]:
    with Session(reading(engine)) as session:
        return list(
            session.exec(  # type: ignore[call-overload]
                select(StatusEvent)
                .where(StatusEvent.msg_id == msg_id, StatusEvent.id > after_id)  # type: ignore[operator]
                .order_by(StatusEvent.id)  # type: ignore[arg-type]
                .limit(limit)
            ).scalars()
        )


# ---- sending ---------------------------------------------------------------------------


def select_resend_audience(engine: Engine, msg_id: str, stage: int) -> int:
    """Queue stage `stage` for every recipient that still matches the trigger (idempotent)."""
    with Session(engine) as session:
        push = session.get(Push, msg_id)
        if push is None:
            raise NotFound("msg_id", f"no push {msg_id!r}")
        already = session.execute(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.msg_id == msg_id, Delivery.stage == stage)
        ).scalar_one()
        if already:
            return int(already)
        matching = select(Recipient.registration_id).where(
            Recipient.msg_id == msg_id,
            Recipient.stopped.is_(False),  # type: ignore[attr-defined]
            exists().where(
                Device.app_key == push.app_key,
                Device.registration_id == Recipient.registration_id,
                Device.valid.is_(True),  # type: ignore[attr-defined]
            ),
        )
        ids = list(session.execute(matching).scalars())
        for chunk in _chunks(ids, 1000):
            session.execute(
                Delivery.__table__.insert(),  # type: ignore[attr-defined]
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
        rows = session.execute(
            select(Delivery, Recipient, Device)
            .join(
                Recipient,
                and_(
                    Recipient.msg_id == Delivery.msg_id,
                    Recipient.registration_id == Delivery.registration_id,
                ),
            )
            .join(
                Device,
                and_(
                    Device.app_key == push.app_key,
                    Device.registration_id == Delivery.registration_id,
                ),
                isouter=True,
            )
            .where(
                Delivery.msg_id == msg_id,
                Delivery.stage == stage,
                Delivery.id > after_id,  # type: ignore[operator]
                Delivery.status.in_(("pending", "sending")),  # type: ignore[attr-defined]
            )
            .order_by(Delivery.id)  # type: ignore[arg-type]
            .limit(limit)
        ).all()
        out, skipped = [], []
        for delivery, recipient, device in rows:
            if device is None or not device.valid or (stage > 0 and recipient.stopped):
                skipped.append(delivery.id)
                continue
            out.append(
                Outbound(
                    delivery.id,
                    delivery.registration_id,
                    recipient.platform,
                    dict(device.attributes or {}),
                    delivery.status == "sending",
                )
            )
        if skipped:
            session.execute(
                update(Delivery).where(Delivery.id.in_(skipped)).values(status="skipped")  # type: ignore[union-attr]
            )
            session.commit()
        return out, (rows[-1][0].id if rows else None)


def mark_sending(engine: Engine, contents: dict[int, tuple[str | None, str]]) -> None:
    """Record, before the provider call, that these deliveries may reach devices."""
    with Session(engine) as session:
        for delivery_id, (title, alert) in contents.items():
            session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id, Delivery.status == "pending")  # type: ignore[arg-type]
                .values(status="sending", title=title, alert=alert)
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
    with Session(engine) as session:
        push = session.get(Push, msg_id)
        assert push is not None
        if later:
            session.execute(
                update(Delivery).where(Delivery.id.in_(later)).values(status="pending")  # type: ignore[union-attr]
            )
        ok_ids = [o.delivery_id for o in outcomes if o.ok]
        if ok_ids:
            session.execute(
                update(Delivery).where(Delivery.id.in_(ok_ids)).values(status="sent", sent_at=now)  # type: ignore[union-attr]
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
            for status in ("sent" if o.ok else "failed",)
        ]
        _store_events(session, push, events)
        failed = [o for o in outcomes if not o.ok]
        bump: dict[str, int] = {}
        for o in failed:
            session.execute(
                update(Delivery)
                .where(Delivery.id == o.delivery_id)  # type: ignore[arg-type]
                .values(status="failed", failed_at=now, error=o.error)
            )
            recipient = session.execute(
                select(Recipient).where(
                    Recipient.msg_id == msg_id, Recipient.registration_id == o.registration_id
                )
            ).scalar_one()
            if recipient.failed_at is None:
                recipient.failed_at, recipient.error = now, o.error
                bump["n_failed"] = bump.get("n_failed", 0) + 1
            if not recipient.stopped and _stops(push.condition, recipient):
                recipient.stopped = True
                bump["n_stopped"] = bump.get("n_stopped", 0) + 1
            if o.token_invalid:
                session.execute(
                    update(Device)
                    .where(
                        Device.app_key == push.app_key, Device.registration_id == o.registration_id
                    )  # type: ignore[arg-type]
                    .values(valid=False, invalid_reason=o.error, updated_at=now)
                )
        session.flush()
        if bump:
            _bump(session, msg_id, bump)
        session.commit()


def stage_counts(engine: Engine, msg_id: str, stage: int) -> dict[str, int]:
    with Session(reading(engine)) as session:
        rows = session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.msg_id == msg_id, Delivery.stage == stage)
            .group_by(Delivery.status)
        ).all()
    return {status: int(n) for status, n in rows}


# ---- reporting -------------------------------------------------------------------------


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def funnel(engine: Engine, msg_id: str) -> Funnel:
    """Delivered, displayed and clicked per stage, and what the resends added."""
    with Session(reading(engine)) as session:
        push = session.get(Push, msg_id)
        if push is None:
            raise NotFound("msg_id", f"no push {msg_id!r}")
        d = Delivery
        rows = session.execute(
            select(
                d.stage,
                func.count(),
                func.sum(case((d.status == "sent", 1), else_=0)),
                func.count(d.failed_at),
                func.sum(case((d.status == "skipped", 1), else_=0)),
                func.count(d.delivered_at),
                func.count(d.displayed_at),
                func.count(d.clicked_at),
            )
            .where(d.msg_id == msg_id)
            .group_by(d.stage)
            .order_by(d.stage)
        ).all()
        first = aliased(Delivery)
        added = session.execute(
            select(func.count(func.distinct(d.registration_id))).where(
                d.msg_id == msg_id,
                d.stage > 0,
                d.clicked_at.is_not(None),  # type: ignore[union-attr]
                ~exists().where(
                    first.msg_id == msg_id,
                    first.stage == 0,
                    first.registration_id == d.registration_id,
                    first.clicked_at.is_not(None),  # type: ignore[union-attr]
                ),
            )
        ).scalar_one()
    stages = []
    for stage, targeted, sent, failed, skipped, delivered, displayed, clicked in rows:
        sent = int(sent or 0)
        stages.append(
            StageFunnel(
                stage=stage,
                targeted=targeted,
                sent=sent,
                failed=int(failed or 0),
                skipped=int(skipped or 0),
                delivered=delivered,
                displayed=displayed,
                clicked=clicked,
                delivered_rate=_rate(delivered, sent),
                displayed_rate=_rate(displayed, sent),
                clicked_rate=_rate(clicked, sent),
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
