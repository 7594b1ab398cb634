"""Scheduled pushes: the schedules an app keeps (name, trigger, push body) and the firings that
made pushes. Temporal runs the timing; the ledger is what the API lists and a firing reads."""

import math
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance.db import Schedule, ScheduleFiring, reading, utcnow
from relance.ledger._base import NotFound, insert_for
from relance.ledger.apps import get_app


def app_timezone(engine: Engine, app_key: str) -> str:
    """The app's time zone: what a zone_type 1 trigger's wall times mean, from the app's policy
    (`PUT /v4/app/policy`; UTC until it sets one). The one place schedules read it from."""
    return get_app(engine, app_key).timezone or "UTC"


def create_schedule(
    engine: Engine,
    app_key: str,
    schedule_id: str,
    name: str,
    enabled: bool,
    trigger: dict[str, Any],
    push: dict[str, Any],
) -> Schedule:
    row = Schedule(
        schedule_id=schedule_id,
        app_key=app_key,
        name=name,
        enabled=enabled,
        trigger=trigger,
        push=push,
    )
    with Session(engine, expire_on_commit=False) as session:
        session.add(row)
        session.commit()
    return row


def get_schedule(engine: Engine, app_key: str, schedule_id: str) -> Schedule:
    with Session(reading(engine), expire_on_commit=False) as session:
        row = session.get(Schedule, schedule_id)
    if row is None or row.app_key != app_key:
        raise NotFound("schedule_id", f"no schedule {schedule_id!r}")
    return row


def list_schedules(
    engine: Engine, app_key: str, page: int, size: int
) -> tuple[int, list[Schedule]]:
    """(total, the page's schedules), oldest first."""
    with Session(reading(engine)) as session:
        total = session.exec(
            select(func.count()).select_from(Schedule).where(col(Schedule.app_key) == app_key)
        ).one()
        rows = session.exec(
            select(Schedule)
            .where(col(Schedule.app_key) == app_key)
            .order_by(col(Schedule.created_at), col(Schedule.schedule_id))
            .offset((page - 1) * size)
            .limit(size)
        ).all()
    return int(total), list(rows)


def pages(total: int, size: int) -> int:
    return math.ceil(total / size)


def update_schedule(
    engine: Engine,
    app_key: str,
    schedule_id: str,
    name: str,
    enabled: bool,
    trigger: dict[str, Any],
    push: dict[str, Any],
) -> Schedule:
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(Schedule, schedule_id)
        if row is None or row.app_key != app_key:
            raise NotFound("schedule_id", f"no schedule {schedule_id!r}")
        row.name, row.enabled, row.trigger, row.push = name, enabled, trigger, push
        row.updated_at = utcnow()
        session.add(row)
        session.commit()
    return row


def delete_schedule(engine: Engine, app_key: str, schedule_id: str) -> bool:
    """Forget a schedule and its firings (the pushes they made stay); False if there was none."""
    with Session(engine) as session:
        row = session.get(Schedule, schedule_id)
        if row is None or row.app_key != app_key:
            return False
        session.execute(
            delete(ScheduleFiring).where(col(ScheduleFiring.schedule_id) == schedule_id)
        )
        session.delete(row)
        session.commit()
    return True


def record_firing(
    engine: Engine,
    schedule_id: str,
    firing_key: str,
    scheduled_at: datetime,
    msg_id: str | None,
    error: str | None = None,
) -> None:
    """One row per firing: a retried firing finds its row and changes nothing."""
    with Session(engine) as session:
        insert = insert_for(session)
        session.execute(
            insert(ScheduleFiring)
            .values(
                schedule_id=schedule_id,
                firing_key=firing_key,
                msg_id=msg_id,
                error=error[:500] if error else None,
                scheduled_at=scheduled_at,
                fired_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["schedule_id", "firing_key"])
        )
        session.commit()


def list_firings(engine: Engine, app_key: str, schedule_id: str) -> list[ScheduleFiring]:
    get_schedule(engine, app_key, schedule_id)
    with Session(reading(engine)) as session:
        rows = session.exec(
            select(ScheduleFiring)
            .where(col(ScheduleFiring.schedule_id) == schedule_id)
            .order_by(col(ScheduleFiring.scheduled_at), col(ScheduleFiring.id))
        ).all()
    return list(rows)
