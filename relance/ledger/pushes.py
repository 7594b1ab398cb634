"""Pushes: accepting one (a registration id list with its recipients and stage-0 deliveries in
one transaction; a tag, alias or "all" push recorded for its journey to materialise), finding
it, and recording how its journey ended."""

import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from relance.db import Delivery, Device, Push, Recipient, StatusEvent, reading, utcnow
from relance.ledger._base import LedgerError, NotFound, insert_for
from relance.ledger.audience import (
    EMPTY,
    audience_query,
    default_platform,
    has_audience,
    insert_audience,
)
from relance.models import PushRequest
from relance.states import JourneyState


def new_msg_id() -> str:
    """Numeric and time-ordered like EngageLab's: milliseconds then 6 random digits."""
    return f"{int(time.time() * 1000)}{secrets.randbelow(10**6):06d}"


@dataclass
class Accepted:
    push: Push
    created: bool


def _register_unknown(session: Session, app_key: str, request: PushRequest, ids: list[str]) -> None:
    """A registration id not seen before is registered on the spot, on the push's platform (ON
    CONFLICT DO NOTHING: two pushes racing to the same new device both succeed)."""
    now = utcnow()
    session.execute(
        insert_for(session)(Device)
        .values(
            [
                {
                    "app_key": app_key,
                    "registration_id": rid,
                    "platform": default_platform(request),
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


def accept_push(engine: Engine, app_key: str, request: PushRequest) -> Accepted:
    """Record a push, at a cost that does not grow with its audience.

    A `registration_id` list (at most 1,000) gets its recipients and stage-0 deliveries in the
    same transaction, unknown ids registered on the spot. A tag, alias or "all" push is only
    checked to reach someone (one row read) and recorded with `audience_ready` False: its
    journey materialises the audience (`materialise_page`, `finish_materialise`).

    The same request_id from the same app returns the first push (even when two race)."""
    if request.request_id is not None:
        existing = find_push_by_request(engine, app_key, request.request_id)
        if existing is not None:
            return Accepted(existing, created=False)
    to = request.to
    listed = None if to == "all" else to.registration_id
    if listed is None and not has_audience(engine, app_key, request):
        raise LedgerError("to", EMPTY)
    msg_id = new_msg_id()
    condition = request.resend.trigger.condition if request.resend else None
    with Session(engine) as session:
        push = Push(
            msg_id=msg_id,
            app_key=app_key,
            request_id=request.request_id,
            request=request.model_dump(mode="json", by_alias=True),
            condition=condition.value if condition else None,
            stage_count=len(request.resend.stages) if request.resend else 0,
            recipients=0,
            audience_ready=listed is not None,
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
        if listed is not None:
            ids = list(dict.fromkeys(listed))
            _register_unknown(session, app_key, request, ids)
            devices = [col(Device.app_key) == app_key, col(Device.registration_id).in_(ids)]
            push.recipients = insert_audience(
                session, msg_id, audience_query(app_key, request), devices
            )
            if not push.recipients:
                session.rollback()
                raise LedgerError("to", EMPTY)
        session.commit()
        session.refresh(push)
        return Accepted(push, created=True)


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
