"""Pushes: accepting one (a registration id list with its recipients and stage-0 deliveries in
one transaction; a tag, alias or "all" push recorded for its journey to materialise), finding
it, and recording how its journey ended."""

import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select

from relance.db import (
    Delivery,
    Device,
    Push,
    Recipient,
    SendAhead,
    StatusEvent,
    reading,
    utcnow,
)
from relance.ledger._base import LedgerError, NotFound
from relance.ledger.audience import EMPTY, default_platform, has_audience, platforms_of
from relance.models import PushRequest
from relance.states import DeliveryStatus, JourneyState


def new_msg_id() -> str:
    """Numeric and time-ordered like EngageLab's: milliseconds then 6 random digits."""
    return f"{int(time.time() * 1000)}{secrets.randbelow(10**6):06d}"


@dataclass
class Accepted:
    push: Push
    created: bool


class _Listed:
    """The statements that accept a `registration_id` push, built once per dialect with bound
    parameters: SQLAlchemy then reuses their cache keys and compiled forms, where statements
    built per request cost as much to build and compile as to run (bench_small_pushes.py)."""

    def __init__(self, dialect: str) -> None:
        insert = (postgresql if dialect == "postgresql" else sqlite).insert
        # A registration id not seen before is registered on the spot (ON CONFLICT DO NOTHING:
        # two pushes racing to the same new device both succeed). Run with a list of rows.
        self.register = insert(Device).on_conflict_do_nothing(
            index_elements=["app_key", "registration_id"]
        )
        devices = sa_select(col(Device.registration_id), col(Device.platform)).where(
            col(Device.app_key) == bindparam("app_key"),
            col(Device.registration_id).in_(bindparam("ids", expanding=True)),
            col(Device.valid).is_(True),
            col(Device.unsubscribed_at).is_(None),  # opted out until it registers again
        )
        self.devices = devices
        self.devices_on = devices.where(
            col(Device.platform).in_(bindparam("platforms", expanding=True))
        )
        # The same request_id twice: the second insert does nothing (on PostgreSQL it waits for
        # the first transaction, then sees its row), and says so by its row count.
        self.push = (
            insert(Push)
            .on_conflict_do_nothing(index_elements=["app_key", "request_id"])
            .execution_options(preserve_rowcount=True)
        )
        self.recipients = insert(Recipient)
        self.deliveries = insert(Delivery)
        self.send_ahead = insert(SendAhead)


@cache
def _listed(dialect: str) -> _Listed:
    return _Listed(dialect)


def _push_row(app_key: str, request: PushRequest, recipients: int, ready: bool) -> Push:
    condition = request.resend.trigger.condition if request.resend else None
    return Push(
        msg_id=new_msg_id(),
        app_key=app_key,
        request_id=request.request_id,
        request=request.model_dump(mode="json", by_alias=True),
        condition=condition.value if condition else None,
        stage_count=len(request.resend.stages) if request.resend else 0,
        state=JourneyState.accepted.value,
        recipients=recipients,
        audience_ready=ready,
        created_at=utcnow(),
        seq=0,
        n_delivered=0,
        n_displayed=0,
        n_clicked=0,
        n_failed=0,
        n_stopped=0,
    )


def _insert_push(conn: Connection, statement: Any, push: Push) -> bool:
    """Insert the push's row; False when its request_id was already used by the app."""
    values = {c.name: getattr(push, c.name) for c in Push.__table__.columns}  # type: ignore[attr-defined]
    return bool(conn.execute(statement, values).rowcount)


def _existing(engine: Engine, app_key: str, request: PushRequest) -> Accepted:
    existing = find_push_by_request(engine, app_key, request.request_id or "")
    if existing is None:  # cannot happen: the insert did nothing because this row was there
        raise RuntimeError(f"no push for request_id {request.request_id!r} after a conflict")
    return Accepted(existing, created=False)


def _accept_listed(
    engine: Engine, app_key: str, request: PushRequest, listed: list[str], send_ahead: bool
) -> Accepted:
    """A registration id list: one write transaction registers the unknown ids, reads which
    devices are valid (and on the push's platforms), and records the push, its recipients and
    their stage-0 deliveries. The request_id check is the push's insert itself."""
    ids = list(dict.fromkeys(listed))
    platforms = platforms_of(request)
    q = _listed(engine.dialect.name)
    now = utcnow()
    platform = default_platform(request)
    with engine.begin() as conn:
        conn.execute(
            q.register,
            [
                {
                    "app_key": app_key,
                    "registration_id": rid,
                    "platform": platform,
                    "tags": [],
                    "attributes": {},
                    "valid": True,
                    "alias": None,
                    "invalid_reason": None,
                    "updated_at": now,
                }
                for rid in ids
            ],
        )
        params: dict[str, Any] = {"app_key": app_key, "ids": ids}
        if platforms is not None:
            params["platforms"] = platforms
        devices = conn.execute(q.devices if platforms is None else q.devices_on, params).all()
        if not devices:
            conn.rollback()
            if request.request_id is not None:
                existing = find_push_by_request(engine, app_key, request.request_id)
                if existing is not None:
                    return Accepted(existing, created=False)
            raise LedgerError("to", EMPTY)
        push = _push_row(app_key, request, len(devices), ready=True)
        if not _insert_push(conn, q.push, push):
            conn.rollback()
            return _existing(engine, app_key, request)
        msg_id = push.msg_id
        conn.execute(
            q.recipients,
            [
                {
                    "msg_id": msg_id,
                    "registration_id": rid,
                    "platform": device_platform,
                    "stopped": False,
                }
                for rid, device_platform in devices
            ],
        )
        conn.execute(
            q.deliveries,
            [
                {
                    "msg_id": msg_id,
                    "stage": 0,
                    "registration_id": rid,
                    "status": DeliveryStatus.pending.value,
                }
                for rid, _ in devices
            ],
        )
        if send_ahead:
            conn.execute(q.send_ahead, {"msg_id": msg_id, "due_at": now, "attempts": 0})
    return Accepted(push, created=True)


def accept_push(
    engine: Engine, app_key: str, request: PushRequest, send_ahead: bool = False
) -> Accepted:
    """Record a push, at a cost that does not grow with its audience.

    A `registration_id` list (at most 1,000) gets its recipients and stage-0 deliveries in the
    same transaction, unknown ids registered on the spot. A tag, alias or "all" push is only
    checked to reach someone (one row read) and recorded with `audience_ready` False: its
    journey materialises the audience (`materialise_page`, `finish_materialise`).

    The same request_id from the same app returns the first push (even when two race).

    `send_ahead` (a registration_id push only): queued in the same transaction for a worker to
    send stage 0 at once (relance.ledger.send_ahead); `forget_push` undoes it while no worker
    has taken it."""
    to = request.to
    if to != "all" and to.registration_id is not None:
        return _accept_listed(engine, app_key, request, to.registration_id, send_ahead)
    if request.request_id is not None:
        existing = find_push_by_request(engine, app_key, request.request_id)
        if existing is not None:
            return Accepted(existing, created=False)
    if not has_audience(engine, app_key, request):
        raise LedgerError("to", EMPTY)
    push = _push_row(app_key, request, 0, ready=False)
    with engine.begin() as conn:
        inserted = _insert_push(conn, _listed(engine.dialect.name).push, push)
    return Accepted(push, created=True) if inserted else _existing(engine, app_key, request)


def find_push_by_request(engine: Engine, app_key: str, request_id: str) -> Push | None:
    with Session(reading(engine)) as session:
        return session.exec(
            select(Push).where(Push.app_key == app_key, Push.request_id == request_id)
        ).first()


def get_push(engine: Engine, app_key: str | None, msg_id: str) -> Push:
    """The push; another app's msg_id is as unknown as one that never existed."""
    with Session(reading(engine)) as session:
        push = session.get(Push, msg_id)
    if push is None or (app_key is not None and push.app_key != app_key):
        raise NotFound("msg_id", f"no push {msg_id!r} for this app")
    return push


def forget_push(engine: Engine, msg_id: str, sent_ahead: bool = False) -> bool:
    """Remove a push whose journey could not be started, so no half-done push stays. A push
    `sent_ahead` is removed only while no worker has taken it: its queue row, untaken, is
    deleted first (under its row lock on PostgreSQL, so no worker takes it after). Returns
    False, removing nothing, when a worker took it: stage 0 may be with devices already."""
    with Session(engine) as session:
        if sent_ahead:
            untaken = session.execute(
                delete(SendAhead).where(
                    col(SendAhead.msg_id) == msg_id, col(SendAhead.attempts) == 0
                )
            )
            if not untaken.rowcount:  # type: ignore[attr-defined]
                session.rollback()
                return False
        session.execute(delete(StatusEvent).where(col(StatusEvent.msg_id) == msg_id))
        session.execute(delete(Delivery).where(col(Delivery.msg_id) == msg_id))
        session.execute(delete(Recipient).where(col(Recipient.msg_id) == msg_id))
        session.execute(delete(Push).where(col(Push.msg_id) == msg_id))
        session.commit()
    return True


def unfinished_pushes(
    engine: Engine,
    after: tuple[datetime, str],
    created_before: datetime,
    limit: int = 500,
) -> list[Push]:
    """Pushes whose journey has not ended (their ledger state is still `accepted` until it
    does), recorded after `after` (created_at, msg_id: where the last page ended) and no later
    than `created_before`, in that order: the candidates for a journey that an API killed
    between recording a push and starting its journey never started."""
    at, msg_id = after
    created = col(Push.created_at)
    with Session(reading(engine)) as session:
        return list(
            session.exec(
                select(Push)
                .where(
                    Push.state == JourneyState.accepted.value,
                    or_(created > at, and_(created == at, col(Push.msg_id) > msg_id)),
                    created <= created_before,
                )
                .order_by(created, col(Push.msg_id))
                .limit(limit)
            )
        )


def set_state(engine: Engine, msg_id: str, state: JourneyState, error: str | None = None) -> None:
    with Session(engine) as session:
        session.execute(
            update(Push).where(col(Push.msg_id) == msg_id).values(state=state.value, error=error)
        )
        session.commit()


def journeys_by_state(engine: Engine) -> dict[str, int]:
    """How many pushes are in each journey state: one aggregate over the push table."""
    with Session(reading(engine)) as session:
        rows = session.execute(select(Push.state, func.count()).group_by(Push.state)).all()
    return {state: int(n) for state, n in rows}


def list_pushes(
    engine: Engine,
    app_key: str,
    state: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
) -> list[Push]:
    """The app's pushes, newest first: in `state` when given, created in [since, until)."""
    query = select(Push).where(col(Push.app_key) == app_key)
    if state is not None:
        query = query.where(col(Push.state) == state)
    if since is not None:
        query = query.where(col(Push.created_at) >= since)
    if until is not None:
        query = query.where(col(Push.created_at) < until)
    with Session(reading(engine)) as session:
        return list(session.exec(query.order_by(col(Push.created_at).desc()).limit(limit)))
