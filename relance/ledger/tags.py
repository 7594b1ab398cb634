"""Tags and aliases as EngageLab's tag and alias routes see them, and the limits every write of
them is held to.

`DeviceTag` is the truth about tags; `Device.tags` (JSON) is kept in step as a copy by every
write here (`sync_json`), one statement per thousand devices. A write and the check of its
limits are one step: the app is locked first (`lock_app`: a row lock on PostgreSQL; SQLite's
writers are serialised by BEGIN IMMEDIATE already), the write is made, the counts it may have
pushed past a limit are read in the same transaction, and the whole transaction is rolled back
if one is over. Two concurrent writes can never both squeeze under a limit.

EngageLab's public documentation states the limits but no error code for them; relance answers
HTTP 400 with these codes (and 21003 for a name that is too long or malformed)."""

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, text, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from relance.db import App, Device, DeviceTag, reading, utcnow
from relance.ledger._base import (
    LedgerError,
    LimitExceeded,
    NotFound,
    chunks,
    insert_for,
    on_postgresql,
)

TOO_MANY_APP_TAGS = 27001
TOO_MANY_DEVICE_TAGS = 27002
TOO_MANY_TAG_DEVICES = 27003
TOO_MANY_APP_ALIASES = 27004


@dataclass(frozen=True)
class Limits:
    """EngageLab's per-app limits (relance.settings holds the configured values)."""

    tags_per_app: int = 100_000
    tag_max_bytes: int = 40
    tags_per_device: int = 100
    devices_per_tag: int = 100_000
    aliases_per_app: int = 100_000
    alias_max_bytes: int = 40


# Whitespace and control characters, and the separators of paths and of list query parameters.
_FORBIDDEN = re.compile(r"[\s/,\x00-\x1f\x7f]")


def check_name(field: str, value: str, max_bytes: int, what: str = "tag") -> None:
    """A tag or alias: not empty, at most `max_bytes` of UTF-8, no whitespace, '/' or ','."""
    if not value:
        raise LedgerError(field, f"expected a non-empty {what}")
    size = len(value.encode())
    if size > max_bytes:
        raise LedgerError(field, f"{what} {value!r} is {size} bytes; at most {max_bytes}")
    if _FORBIDDEN.search(value):
        raise LedgerError(field, f"{what} {value!r} may not contain whitespace, '/' or ','")


def lock_app(session: Session, app_key: str) -> None:
    """Serialise the app's tag and alias writes, so that a limit check and its write are one
    step (SQLite: BEGIN IMMEDIATE has serialised every writer already)."""
    if on_postgresql(session):
        session.execute(
            sa_select(col(App.app_key)).where(col(App.app_key) == app_key).with_for_update()
        )


_SYNC = {
    "sqlite": "UPDATE device SET tags = (SELECT json_group_array(tag) FROM (SELECT tag FROM "
    "devicetag WHERE devicetag.device_id = device.id ORDER BY tag)), updated_at = :now "
    "WHERE id IN :ids",
    "postgresql": "UPDATE device SET tags = (SELECT coalesce(json_agg(tag ORDER BY tag), "
    "'[]'::json) FROM devicetag WHERE devicetag.device_id = device.id), updated_at = :now "
    "WHERE id IN :ids",
}


def sync_json(session: Session, device_ids: list[int]) -> None:
    """`Device.tags` of these devices becomes their DeviceTag rows, sorted."""
    statement = text(_SYNC["postgresql" if on_postgresql(session) else "sqlite"]).bindparams(
        bindparam("ids", expanding=True)
    )
    now = utcnow()
    for some in chunks(sorted(set(device_ids)), 1000):
        session.execute(statement, {"ids": some, "now": now})


def existing_tags(session: Session, app_key: str, tags: list[str]) -> set[str]:
    found: set[str] = set()
    for some in chunks(tags, 1000):
        found.update(
            session.execute(
                sa_select(col(DeviceTag.tag))
                .where(col(DeviceTag.app_key) == app_key, col(DeviceTag.tag).in_(some))
                .distinct()
            ).scalars()
        )
    return found


def check_limits(
    session: Session,
    app_key: str,
    limits: Limits,
    *,
    device_ids: list[int],
    device_field: str,
    tags: list[str],
    tag_field: str,
    new_tags: bool,
) -> None:
    """After a write, in its transaction: refuse it if a device of `device_ids` has too many
    tags, a tag of `tags` too many devices, or (when it made a tag) the app too many tags."""
    for ids in chunks(sorted(set(device_ids)), 1000):
        over = session.execute(
            sa_select(col(Device.registration_id), func.count())
            .select_from(DeviceTag)
            .join(Device, col(Device.id) == col(DeviceTag.device_id))
            .where(col(DeviceTag.device_id).in_(ids))
            .group_by(col(Device.registration_id))
            .having(func.count() > limits.tags_per_device)
            .limit(1)
        ).first()
        if over is not None:
            raise LimitExceeded(
                device_field,
                f"device {over[0]!r} would have {over[1]} tags; "
                f"at most {limits.tags_per_device} per device",
                TOO_MANY_DEVICE_TAGS,
            )
    for some in chunks(sorted(set(tags)), 1000):
        over = session.execute(
            sa_select(col(DeviceTag.tag), func.count())
            .where(col(DeviceTag.app_key) == app_key, col(DeviceTag.tag).in_(some))
            .group_by(col(DeviceTag.tag))
            .having(func.count() > limits.devices_per_tag)
            .limit(1)
        ).first()
        if over is not None:
            raise LimitExceeded(
                tag_field,
                f"tag {over[0]!r} would have {over[1]} devices; "
                f"at most {limits.devices_per_tag} per tag",
                TOO_MANY_TAG_DEVICES,
            )
    if new_tags:
        count = count_app_tags(session, app_key)
        if count > limits.tags_per_app:
            raise LimitExceeded(
                tag_field,
                f"the app would have {count} tags; at most {limits.tags_per_app}",
                TOO_MANY_APP_TAGS,
            )


def count_app_tags(session: Session, app_key: str) -> int:
    tags = sa_select(col(DeviceTag.tag)).where(col(DeviceTag.app_key) == app_key).distinct()
    return int(session.execute(sa_select(func.count()).select_from(tags.subquery())).scalar_one())


def count_app_aliases(session: Session, app_key: str) -> int:
    aliases = (
        sa_select(col(Device.alias))
        .where(col(Device.app_key) == app_key, col(Device.alias).is_not(None))
        .distinct()
    )
    return int(
        session.execute(sa_select(func.count()).select_from(aliases.subquery())).scalar_one()
    )


def _platforms(query: Any, platforms: list[str] | None) -> Any:
    return query if platforms is None else query.where(col(Device.platform).in_(platforms))


def list_tags(engine: Engine, app_key: str) -> list[str]:
    """Every tag of the app, sorted (read from DeviceTag's (app_key, tag) index)."""
    with Session(reading(engine)) as session:
        return list(
            session.execute(
                sa_select(col(DeviceTag.tag))
                .where(col(DeviceTag.app_key) == app_key)
                .distinct()
                .order_by(col(DeviceTag.tag))
            ).scalars()
        )


def of_devices(
    session: Session, app_key: str, registration_ids: list[str], column: Any, field: str
) -> dict[str, Any]:
    """registration_id: `column` of that device of the app, read a thousand ids at a time; an
    unknown one is refused, naming its place in `field`."""
    found: dict[str, Any] = {}
    for some in chunks(list(dict.fromkeys(registration_ids)), 1000):
        found.update(
            session.execute(
                sa_select(col(Device.registration_id), column).where(
                    col(Device.app_key) == app_key, col(Device.registration_id).in_(some)
                )
            ).all()
        )
    for i, rid in enumerate(registration_ids):
        if rid not in found:
            raise NotFound(f"{field}[{i}]", f"no device {rid!r} for this app")
    return found


def _device_ids(
    session: Session, app_key: str, registration_ids: list[str], field: str
) -> dict[str, int]:
    """registration_id: device id; an unknown one is refused, naming its place in `field`."""
    return of_devices(session, app_key, registration_ids, col(Device.id), field)


def set_tag(
    engine: Engine,
    app_key: str,
    tag: str,
    add: list[str],
    remove: list[str],
    limits: Limits,
) -> None:
    """Add the tag to the devices of `add` and take it from those of `remove`, all or none."""
    check_name("tag", tag, limits.tag_max_bytes)
    both = set(add) & set(remove)
    if both:
        raise LedgerError("registration_ids", f"{sorted(both)[0]!r} is both in add and in remove")
    with Session(engine) as session:
        lock_app(session, app_key)
        adding = _device_ids(session, app_key, add, "registration_ids.add")
        removing = _device_ids(session, app_key, remove, "registration_ids.remove")
        new_tag = bool(adding) and not existing_tags(session, app_key, [tag])
        if removing:
            session.execute(
                delete(DeviceTag).where(
                    col(DeviceTag.app_key) == app_key,
                    col(DeviceTag.tag) == tag,
                    col(DeviceTag.device_id).in_(list(removing.values())),
                )
            )
        rows = [{"app_key": app_key, "tag": tag, "device_id": d} for d in adding.values()]
        for chunk in chunks(rows, 1000):
            session.execute(insert_for(session)(DeviceTag).on_conflict_do_nothing(), chunk)
        check_limits(
            session,
            app_key,
            limits,
            device_ids=list(adding.values()),
            device_field="registration_ids.add",
            tags=[tag] if adding else [],
            tag_field="registration_ids.add",
            new_tags=new_tag,
        )
        sync_json(session, [*adding.values(), *removing.values()])
        session.commit()


def delete_tag(
    engine: Engine, app_key: str, tag: str, platforms: list[str] | None, limits: Limits
) -> int:
    """Take the tag from every device of the app (of `platforms`, if given); returns how many.
    A tag nobody has is no error: deleting twice is deleting once."""
    check_name("tag", tag, limits.tag_max_bytes)
    with Session(engine) as session:
        lock_app(session, app_key)
        query = sa_select(col(DeviceTag.device_id)).where(
            col(DeviceTag.app_key) == app_key, col(DeviceTag.tag) == tag
        )
        if platforms is not None:
            query = query.join(Device, col(Device.id) == col(DeviceTag.device_id)).where(
                col(Device.platform).in_(platforms)
            )
        ids = list(session.execute(query).scalars())
        for some in chunks(ids, 1000):
            session.execute(
                delete(DeviceTag).where(
                    col(DeviceTag.app_key) == app_key,
                    col(DeviceTag.tag) == tag,
                    col(DeviceTag.device_id).in_(some),
                )
            )
        sync_json(session, ids)
        session.commit()
        return len(ids)


def count_tags(
    engine: Engine, app_key: str, tags: list[str], platforms: list[str] | None
) -> dict[str, int]:
    """How many devices (of `platforms`, if given) have each tag; 0 for a tag nobody has."""
    with Session(reading(engine)) as session:
        query = (
            sa_select(col(DeviceTag.tag), func.count())
            .select_from(DeviceTag)
            .join(Device, col(Device.id) == col(DeviceTag.device_id))
            .where(col(DeviceTag.app_key) == app_key, col(DeviceTag.tag).in_(tags))
            .group_by(col(DeviceTag.tag))
        )
        counted = dict(session.execute(_platforms(query, platforms)).all())
    return {tag: int(counted.get(tag, 0)) for tag in tags}


def device_has_tag(engine: Engine, app_key: str, tag: str, registration_id: str) -> bool:
    with Session(reading(engine)) as session:
        device_id = _device_ids(session, app_key, [registration_id], "registration_id")[
            registration_id
        ]
        return (
            session.execute(
                sa_select(col(DeviceTag.device_id)).where(
                    col(DeviceTag.app_key) == app_key,
                    col(DeviceTag.tag) == tag,
                    col(DeviceTag.device_id) == device_id,
                )
            ).first()
            is not None
        )


def quota(
    engine: Engine, app_key: str, tags: list[str], platforms: list[str] | None, limits: Limits
) -> dict[str, Any]:
    """EngageLab's TagQuotaData: the app's tags and aliases against their limits, and for each
    of `tags` its devices against the per-tag limit."""
    per_tag = count_tags(engine, app_key, tags, platforms) if tags else {}
    with Session(reading(engine)) as session:
        return {
            "totalTagQuota": limits.tags_per_app,
            "useTagQuota": count_app_tags(session, app_key),
            "totalAliasQuota": limits.aliases_per_app,
            "useAliasQuota": count_app_aliases(session, app_key),
            "tagUidQuotaDetail": [
                {"tagName": tag, "totalUidQuota": limits.devices_per_tag, "useUidQuota": n}
                for tag, n in per_tag.items()
            ],
        }


def alias_devices(
    engine: Engine, app_key: str, alias: str, platforms: list[str] | None
) -> list[str]:
    """The registration ids of the app's devices with this alias (of `platforms`, if given)."""
    with Session(reading(engine)) as session:
        query = (
            sa_select(col(Device.registration_id))
            .where(col(Device.app_key) == app_key, col(Device.alias) == alias)
            .order_by(col(Device.id))
        )
        return list(session.execute(_platforms(query, platforms)).scalars())


def delete_alias(engine: Engine, app_key: str, alias: str, platforms: list[str] | None) -> int:
    """Unbind the alias from the app's devices (of `platforms`, if given); returns how many. An
    alias nobody has is no error."""
    with Session(engine) as session:
        query = update(Device).where(col(Device.app_key) == app_key, col(Device.alias) == alias)
        if platforms is not None:
            query = query.where(col(Device.platform).in_(platforms))
        done = session.connection().execute(
            query.values(alias=None, updated_at=utcnow()).execution_options(preserve_rowcount=True)
        )
        session.commit()
        return int(done.rowcount or 0)
