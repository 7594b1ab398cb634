"""The device registry: registration ids with their platform, tags, alias and attributes, and
whether their token is still valid."""

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance.db import Device, DeviceTag, utcnow
from relance.ledger._base import chunks, insert_for
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
            if d.timezone is not None:  # a registration without one keeps the known zone
                row.timezone = d.timezone
            row.updated_at = utcnow()
        session.flush()  # every device has its id
        _replace_tags(session, app_key, list(known.values()))
        session.commit()
    return len(devices)


def _replace_tags(session: Session, app_key: str, devices: list[Device]) -> None:
    """DeviceTag follows each device's tags as just registered (the last registration of a
    device wins): its old rows go, its new ones come, in the caller's transaction."""
    ids = [d.id for d in devices if d.id is not None]
    for some in chunks(ids, 1000):
        session.execute(delete(DeviceTag).where(col(DeviceTag.device_id).in_(some)))
    rows = [
        {"app_key": app_key, "tag": tag, "device_id": d.id}
        for d in devices
        for tag in dict.fromkeys(d.tags)
    ]
    for chunk in chunks(rows, 1000):
        session.execute(insert_for(session)(DeviceTag).on_conflict_do_nothing(), chunk)


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
