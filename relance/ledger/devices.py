"""The device registry: registration ids with their platform, tags, alias and attributes, and
whether their token is still valid."""

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance.db import Device, utcnow
from relance.models import DeviceIn


def upsert_devices(engine: Engine, app_key: str, devices: list[DeviceIn]) -> int:
    """Register or update devices; a re-registered token becomes valid again."""
    with Session(engine) as session:
        ids = [d.registration_id for d in devices]
        known = {
            d.registration_id: d
            for d in session.exec(
                select(Device).where(
                    Device.app_key == app_key, col(Device.registration_id).in_(ids)
                )
            )
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


def invalidate(session: Session, app_key: str, registration_id: str, reason: str | None) -> None:
    """A provider says this token is dead: keep it out of every later stage and push until
    the device registers again (in the caller's transaction)."""
    session.execute(
        update(Device)
        .where(col(Device.app_key) == app_key, col(Device.registration_id) == registration_id)
        .values(valid=False, invalid_reason=(reason or "")[:500] or None, updated_at=utcnow())
    )


def invalidate_device(engine: Engine, app_key: str, registration_id: str, reason: str) -> None:
    """`invalidate` in a transaction of its own."""
    with Session(engine) as session:
        invalidate(session, app_key, registration_id, reason)
        session.commit()
