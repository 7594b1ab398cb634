"""The device registry: registration ids with their platform, tags, alias and attributes, and
whether their token is still valid."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, delete, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance.db import Device, DeviceTag, reading, utcnow
from relance.ledger._base import (
    LedgerError,
    LimitExceeded,
    NotFound,
    chunks,
    insert_for,
    on_postgresql,
    unnest,
)
from relance.ledger.tags import (
    TOO_MANY_APP_ALIASES,
    Limits,
    check_limits,
    check_name,
    count_app_aliases,
    existing_tags,
    lock_app,
    of_devices,
    sync_json,
)
from relance.models import DeviceIn


def upsert_devices(
    engine: Engine, app_key: str, devices: list[DeviceIn], limits: Limits | None = None
) -> int:
    """Register or update devices; a re-registered token becomes valid again.

    With `limits`, the batch is held to EngageLab's tag and alias limits as the tag and device
    routes are: names first, then the write and the counts it may push over a limit in one
    transaction (the app locked), all of it refused if one is over."""
    if limits is not None:
        for i, d in enumerate(devices):
            for j, tag in enumerate(d.tags):
                check_name(f"devices[{i}].tags[{j}]", tag, limits.tag_max_bytes)
            if d.alias:
                check_name(f"devices[{i}].alias", d.alias, limits.alias_max_bytes, "alias")
    with Session(engine) as session:
        if limits is not None:
            lock_app(session, app_key)
            tags_before = existing_tags(session, app_key, [t for d in devices for t in d.tags])
            aliases_before = count_app_aliases(session, app_key)
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
            row.unsubscribed_at = None  # registering again opts back in
            if d.timezone is not None:  # a registration without one keeps the known zone
                row.timezone = d.timezone
            row.updated_at = utcnow()
        session.flush()  # every device has its id
        _replace_tags(session, app_key, list(known.values()))
        if limits is not None:
            tags = sorted({t for d in devices for t in d.tags})
            check_limits(
                session,
                app_key,
                limits,
                device_ids=[d.id for d in known.values() if d.id is not None],
                device_field="devices",
                tags=tags,
                tag_field="devices",
                new_tags=bool(set(tags) - tags_before),
            )
            if any(d.alias for d in devices):
                count = count_app_aliases(session, app_key)
                if count > max(aliases_before, limits.aliases_per_app):
                    raise LimitExceeded(
                        "devices",
                        f"the app would have {count} aliases; at most {limits.aliases_per_app}",
                        TOO_MANY_APP_ALIASES,
                    )
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


def unsubscribe(session: Session, app_key: str, at: dict[str, datetime]) -> None:
    """An `unsubscribed` event: these devices (registration id: when) are opted out of every
    later stage and push of the app until they register again (in the caller's transaction,
    in registration id order). The first opt-out's time is kept."""
    for registration_id, moment in sorted(at.items()):
        session.execute(
            update(Device)
            .where(
                col(Device.app_key) == app_key,
                col(Device.registration_id) == registration_id,
                col(Device.unsubscribed_at).is_(None),
            )
            .values(unsubscribed_at=moment, updated_at=utcnow())
        )


def invalidate_device(engine: Engine, app_key: str, registration_id: str, reason: str) -> None:
    """`invalidate` in a transaction of its own."""
    with Session(engine) as session:
        invalidate(session, app_key, registration_id, reason)
        session.commit()


# EngageLab's device routes: one device's tags and alias, its deletion, its online status, and
# vendor tokens registered as devices.


@dataclass
class DeviceInfo:
    tags: list[str]
    alias: str | None


def _one(session: Session, app_key: str, registration_id: str) -> Device:
    device = session.exec(
        select(Device).where(Device.app_key == app_key, Device.registration_id == registration_id)
    ).first()
    if device is None:
        raise NotFound("registration_id", f"no device {registration_id!r} for this app")
    return device


def get_device(engine: Engine, app_key: str, registration_id: str) -> DeviceInfo:
    """The device's tags (from DeviceTag, sorted) and alias."""
    with Session(reading(engine)) as session:
        device = _one(session, app_key, registration_id)
        tags = session.execute(
            sa_select(col(DeviceTag.tag))
            .where(col(DeviceTag.device_id) == device.id)
            .order_by(col(DeviceTag.tag))
        ).scalars()
        return DeviceInfo(list(tags), device.alias)


def set_device(
    engine: Engine,
    app_key: str,
    registration_id: str,
    limits: Limits,
    *,
    add: list[str] | None = None,
    remove: list[str] | None = None,
    clear_tags: bool = False,
    alias: str | None = None,
) -> None:
    """Change one device's tags (clear them, then remove, then add) and alias (`""` unbinds
    it; None leaves it), all or none, within the app's limits."""
    add, remove = list(dict.fromkeys(add or [])), list(dict.fromkeys(remove or []))
    for field, tags in (("tags.add", add), ("tags.remove", remove)):
        for i, tag in enumerate(tags):
            check_name(f"{field}[{i}]", tag, limits.tag_max_bytes)
    both = set(add) & set(remove)
    if both:
        raise LedgerError("tags", f"{sorted(both)[0]!r} is both in add and in remove")
    if alias:
        check_name("alias", alias, limits.alias_max_bytes, "alias")
    with Session(engine) as session:
        lock_app(session, app_key)
        device = _one(session, app_key, registration_id)
        assert device.id is not None
        if clear_tags or remove:
            gone = delete(DeviceTag).where(col(DeviceTag.device_id) == device.id)
            if not clear_tags:
                gone = gone.where(col(DeviceTag.tag).in_(remove))
            session.execute(gone)
        new_tags = bool(set(add) - existing_tags(session, app_key, add))
        rows = [{"app_key": app_key, "tag": tag, "device_id": device.id} for tag in add]
        if rows:
            session.execute(insert_for(session)(DeviceTag).on_conflict_do_nothing(), rows)
        check_limits(
            session,
            app_key,
            limits,
            device_ids=[device.id] if add else [],
            device_field="tags.add",
            tags=add,
            tag_field="tags.add",
            new_tags=new_tags,
        )
        if alias is not None and alias != device.alias:
            new_alias = (
                alias
                and not session.execute(
                    sa_select(col(Device.id))
                    .where(col(Device.app_key) == app_key, col(Device.alias) == alias)
                    .limit(1)
                ).first()
            )
            device.alias = alias or None
            device.updated_at = utcnow()
            session.add(device)
            session.flush()
            if new_alias:
                count = count_app_aliases(session, app_key)
                if count > limits.aliases_per_app:
                    raise LimitExceeded(
                        "alias",
                        f"the app would have {count} aliases; at most {limits.aliases_per_app}",
                        TOO_MANY_APP_ALIASES,
                    )
        if clear_tags or add or remove:
            sync_json(session, [device.id])
        session.commit()


def delete_device(engine: Engine, app_key: str, registration_id: str) -> None:
    """Forget the device: its registry row, tags and alias go. What past and running pushes
    recorded of it (recipients, deliveries, status events: the funnel) stays, keyed by its
    registration id; a journey's later stages skip it, as they skip a device that is gone."""
    with Session(engine) as session:
        device = _one(session, app_key, registration_id)
        session.execute(delete(DeviceTag).where(col(DeviceTag.device_id) == device.id))
        session.execute(delete(Device).where(col(Device.id) == device.id))
        session.commit()


@dataclass
class DeviceStatus:
    registration_id: str
    online: bool
    last_online_time: datetime | None


def device_status(
    engine: Engine, app_key: str, registration_ids: list[str], online_seconds: float
) -> list[DeviceStatus]:
    """Whether each device reported a status of its own (delivered, displayed, clicked) in the
    last `online_seconds`, and when it last did: relance holds no connection to devices, so
    the device's latest report is what it knows of its being online."""
    since = utcnow() - timedelta(seconds=online_seconds)
    with Session(reading(engine)) as session:
        seen = of_devices(
            session, app_key, registration_ids, col(Device.last_seen_at), "registration_ids"
        )
    out = []
    for rid in registration_ids:
        last = seen[rid]
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        out.append(DeviceStatus(rid, last is not None and last >= since, last))
    return out


# A device's last report is written at most once a minute: a storm of its events costs one
# UPDATE, not one per event.
SEEN_GRANULARITY = timedelta(seconds=60)
# Rows locked in id order first: concurrent batches on the same devices never deadlock.
_PG_MARK_SEEN = (
    f"WITH locked AS (SELECT d.id, v.at FROM {Device.__tablename__} AS d "
    f"JOIN {unnest({'rid': 'text', 'at': 'timestamptz'})} ON d.registration_id = v.rid "
    "WHERE d.app_key = %(app)s "
    "AND (d.last_seen_at IS NULL OR d.last_seen_at < v.at - %(granularity)s) "
    "ORDER BY d.id FOR UPDATE OF d) "
    f"UPDATE {Device.__tablename__} AS d SET last_seen_at = locked.at FROM locked "
    "WHERE d.id = locked.id"
)


def mark_seen(session: Session, app_key: str, seen: dict[str, datetime]) -> None:
    """Record when devices last reported a status of their own (in the caller's transaction);
    in registration id order, the one lock order of every batch."""
    if not seen:
        return
    ordered = sorted(seen.items())
    if on_postgresql(session):  # one statement over two arrays, as event ingest writes
        session.connection().exec_driver_sql(
            _PG_MARK_SEEN,
            {
                "app": app_key,
                "rid": [rid for rid, _ in ordered],
                "at": [at for _, at in ordered],
                "granularity": SEEN_GRANULARITY,
            },
        )
        return
    statement = (
        update(Device)
        .where(
            col(Device.app_key) == app_key,
            col(Device.registration_id) == bindparam("rid"),
            or_(
                col(Device.last_seen_at).is_(None),
                col(Device.last_seen_at) < bindparam("floor"),
            ),
        )
        .values(last_seen_at=bindparam("at"))
    )
    rows = [{"rid": rid, "at": at, "floor": at - SEEN_GRANULARITY} for rid, at in ordered]
    session.connection().execute(statement, rows)


def register_tokens(
    engine: Engine, app_key: str, platform: str, tokens: list[str]
) -> list[tuple[str, bool]]:
    """Vendor tokens as devices: a token is the registration id relance sends to (FCM token,
    APNs device token, Web Push subscription). Returns (token, is_new) for each; a known one is
    valid again, on `platform`, and keeps its tags and alias."""
    unique = list(dict.fromkeys(tokens))
    with Session(engine) as session:
        known: set[str] = set()
        for some in chunks(unique, 1000):
            known.update(
                session.execute(
                    sa_select(col(Device.registration_id)).where(
                        col(Device.app_key) == app_key, col(Device.registration_id).in_(some)
                    )
                ).scalars()
            )
        now = utcnow()
        new = [
            {"app_key": app_key, "registration_id": t, "platform": platform, "updated_at": now}
            for t in unique
            if t not in known
        ]
        for chunk in chunks(new, 1000):
            session.execute(
                insert_for(session)(Device).on_conflict_do_nothing(
                    index_elements=["app_key", "registration_id"]
                ),
                [{**row, "tags": [], "attributes": {}, "valid": True} for row in chunk],
            )
        for some in chunks(sorted(known), 1000):
            session.execute(
                update(Device)
                .where(col(Device.app_key) == app_key, col(Device.registration_id).in_(some))
                .values(
                    platform=platform,
                    valid=True,
                    invalid_reason=None,
                    unsubscribed_at=None,
                    updated_at=now,
                )
            )
        session.commit()
    return [(t, t not in known) for t in tokens]
