"""Pushes: accepting one (its audience and stage-0 deliveries in one transaction), finding it,
and recording how its journey ended."""

import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from relance.db import Delivery, Device, Push, Recipient, StatusEvent, reading, utcnow
from relance.ledger._base import LedgerError, NotFound, chunks, insert_for
from relance.models import PushRequest
from relance.states import JourneyState


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


def _register_unknown(session: Session, app_key: str, request: PushRequest, ids: list[str]) -> None:
    """A registration id not seen before is registered on the spot, on the push's platform (ON
    CONFLICT DO NOTHING: two pushes racing to the same new device both succeed)."""
    platform = request.body.platform
    default_platform = platform if isinstance(platform, str) and platform != "all" else "android"
    now = utcnow()
    session.execute(
        insert_for(session)(Device)
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


def _audience(session: Session, app_key: str, request: PushRequest) -> list[Device]:
    query = select(Device).where(Device.app_key == app_key, col(Device.valid).is_(True))
    to = request.to
    if to != "all" and to.registration_id is not None:
        ids = list(dict.fromkeys(to.registration_id))
        _register_unknown(session, app_key, request, ids)
        known = {
            d.registration_id: d
            for d in session.exec(query.where(col(Device.registration_id).in_(ids)))
        }
        devices = [known[rid] for rid in ids if rid in known]
    elif to != "all" and to.alias is not None:
        devices = list(session.exec(query.where(col(Device.alias).in_(to.alias))))
    elif to != "all" and to.tag is not None:
        wanted = set(to.tag)
        devices = [d for d in session.exec(query) if wanted & set(d.tags)]
    else:
        devices = list(session.exec(query))
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
        for chunk in chunks(rows, 500):
            session.execute(insert_for(session)(Recipient), chunk)
            session.execute(
                insert_for(session)(Delivery),
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


def forget_push(engine: Engine, msg_id: str) -> None:
    """Remove a push whose journey could not be started, so no half-done push stays."""
    with Session(engine) as session:
        session.execute(delete(StatusEvent).where(col(StatusEvent.msg_id) == msg_id))
        session.execute(delete(Delivery).where(col(Delivery.msg_id) == msg_id))
        session.execute(delete(Recipient).where(col(Recipient.msg_id) == msg_id))
        session.execute(delete(Push).where(col(Push.msg_id) == msg_id))
        session.commit()


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
