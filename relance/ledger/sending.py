"""Sending a stage: who it goes to, the next page of deliveries, and each provider outcome
recorded so that a crashed attempt resumes without sending anyone the stage twice."""

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, insert, literal
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance.db import Delivery, Device, Push, Recipient, reading, utcnow
from relance.journey import Progress
from relance.ledger._base import (
    NotFound,
    arrays,
    on_postgresql,
    placeholder,
    sqlite_time,
    sqlite_update_ids,
    unnest,
)
from relance.ledger.devices import invalidate
from relance.ledger.events import event_key, store_events
from relance.ledger.funnel import progress_of
from relance.ledger.groups import assign_in
from relance.ledger.outbox import utc
from relance.ledger.transitions import apply_status, bump_counts
from relance.models import EventStatus
from relance.states import OPEN_DELIVERIES, DeliveryStatus


def select_resend_audience(engine: Engine, msg_id: str, stage: int) -> int:
    """Queue stage `stage` for every recipient that still matches the trigger (idempotent)."""
    with Session(engine) as session:
        push = session.get(Push, msg_id)
        if push is None:
            raise NotFound("msg_id", f"no push {msg_id!r}")
        already = session.execute(
            sa_select(func.count())
            .select_from(Delivery)
            .where(col(Delivery.msg_id) == msg_id, col(Delivery.stage) == stage)
        ).scalar_one()
        if already:
            return int(already)
        # One INSERT ... SELECT in the database, in the recipients' order: no id of a
        # million-recipient stage passes through this process's memory.
        matching = (
            sa_select(
                literal(msg_id),
                literal(stage),
                col(Recipient.registration_id),
                literal(DeliveryStatus.pending.value),
            )
            .where(
                col(Recipient.msg_id) == msg_id,
                col(Recipient.stopped).is_(False),
                exists().where(
                    col(Device.app_key) == push.app_key,
                    col(Device.registration_id) == col(Recipient.registration_id),
                    col(Device.valid).is_(True),
                    col(Device.unsubscribed_at).is_(None),  # opted out by an unsubscribe
                ),
            )
            .order_by(col(Recipient.id))
        )
        session.connection().execute(
            insert(Delivery).from_select(["msg_id", "stage", "registration_id", "status"], matching)
        )
        # The stage's holdout and variants, in the same transaction (so decided exactly once).
        assign_in(session, push, stage)
        # Counted, not the INSERT's rowcount: psycopg reports none for an INSERT ... SELECT.
        queued = session.execute(
            sa_select(func.count())
            .select_from(Delivery)
            .where(col(Delivery.msg_id) == msg_id, col(Delivery.stage) == stage)
        ).scalar_one()
        session.commit()
        return int(queued)


@dataclass
class Outbound:
    delivery_id: int
    registration_id: str
    platform: str
    attributes: dict[str, Any]
    resend: bool  # already marked "sending" by an attempt that may have reached the provider
    variant: str | None = None  # its A/B variant at this stage


@dataclass
class Page:
    items: list[Outbound]
    last_id: int | None  # the last delivery read: where the next page starts (None: none read)
    exhausted: bool  # fewer rows than asked for: nothing is left after `last_id`


def open_page(
    session: Session,
    app_key: str,
    msg_id: str,
    stage: int,
    after_id: int,
    limit: int,
    extra: Sequence[ColumnElement[bool]] = (),
) -> list[Any]:
    """The stage's next open deliveries after `after_id` (narrowed by `extra`), each with what
    sending it needs: (id, registration_id, status, platform, stopped, device valid — None when
    the device is gone —, attributes, variant). What a timed stage's claim reads, narrowed to
    its time zones (`timing`); a plain claim reads the same columns with `_OPEN_PAGE`."""
    return list(
        session.connection()
        .execute(
            sa_select(
                col(Delivery.id),
                col(Delivery.registration_id),
                col(Delivery.status),
                col(Recipient.platform),
                col(Recipient.stopped),
                col(Device.valid),
                col(Device.attributes),
                col(Delivery.variant),
            )
            .join(
                Recipient,
                and_(
                    col(Recipient.msg_id) == col(Delivery.msg_id),
                    col(Recipient.registration_id) == col(Delivery.registration_id),
                ),
            )
            .join(
                Device,
                and_(
                    col(Device.app_key) == app_key,
                    col(Device.registration_id) == col(Delivery.registration_id),
                ),
                isouter=True,
            )
            .where(
                col(Delivery.msg_id) == msg_id,
                col(Delivery.stage) == stage,
                col(Delivery.id) > after_id,
                col(Delivery.status).in_(OPEN_DELIVERIES),
                *extra,
            )
            .order_by(col(Delivery.id))
            .limit(limit)
        )
        .all()
    )


_APP_KEY = "SELECT app_key FROM push WHERE msg_id = {p}"
_OPEN_PAGE = (
    "SELECT d.id, d.registration_id, d.status, r.platform, r.stopped, v.valid, v.attributes, "
    "d.variant FROM delivery AS d JOIN recipient AS r ON r.msg_id = d.msg_id AND "
    "r.registration_id = d.registration_id LEFT OUTER JOIN device AS v ON v.app_key = {p} AND "
    "v.registration_id = d.registration_id WHERE d.msg_id = {p} AND d.stage = {p} AND d.id > {p} "
    f"AND d.status IN ({', '.join(repr(s.value) for s in OPEN_DELIVERIES)})"
)


def _plain_open_page(
    session: Session,
    app_key: str,
    msg_id: str,
    stage: int,
    after_id: int,
    limit: int,
    variants: list[str] | None,
    upto_id: int | None,
) -> list[Any]:
    """`open_page` for a claim, as one plain statement: building and compiling the SELECT
    and handling each row through SQLAlchemy cost more of a fan-out's CPU than the database's
    own work (`bench/bench_ledger_send.py`), on SQLite and on PostgreSQL alike. SQLite hands
    attributes back as text: they are decoded only when a device has some."""
    p = placeholder(session)
    sql, params = _OPEN_PAGE.format(p=p), [app_key, msg_id, stage, after_id]
    if variants is not None:
        sql += f" AND d.variant IN ({', '.join(p for _ in variants)})" if variants else " AND 1 = 0"
        params += variants
    if upto_id is not None:
        sql += f" AND d.id <= {p}"
        params.append(upto_id)
    rows = session.connection().exec_driver_sql(f"{sql} ORDER BY d.id LIMIT {p}", (*params, limit))
    return [
        (i, reg, status, platform, stopped, valid, _attributes(attrs), variant)
        for i, reg, status, platform, stopped, valid, attrs, variant in rows
    ]


def _attributes(attrs: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if isinstance(attrs, str):  # SQLite's JSON text
        return None if attrs == "{}" else json.loads(attrs)
    return attrs or None


def _sqlite_mark(session: Session, ids: list[int], status: str, reason: str | None) -> None:
    if reason is None:
        sqlite_update_ids(session, "UPDATE delivery SET status = ? WHERE id IN ", (status,), ids)
    else:
        sql = "UPDATE delivery SET status = ?, skip_reason = ? WHERE id IN "
        sqlite_update_ids(session, sql, (status, reason), ids)


def claim_batch(
    engine: Engine,
    msg_id: str,
    stage: int,
    after_id: int,
    limit: int,
    variants: list[str] | None = None,
    upto_id: int | None = None,
) -> Page:
    """The next deliveries to send after `after_id` (up to `upto_id`, a shard's end, when
    given), marked `sending` in the same transaction:
    from here on they may reach devices, so a retry asks the provider before sending again.
    With `variants`, only those A/B variants' deliveries (a variant sent after a delay).

    Those that stopped matching, or whose device became invalid, are marked skipped. Rows, not
    ORM objects: this runs once per batch of a million-recipient stage."""
    with Session(engine) as session:
        page = _claim(session, msg_id, stage, after_id, limit, variants, upto_id)
        session.commit()
    return page


def record_and_claim(
    engine: Engine,
    msg_id: str,
    stage: int,
    outcomes: list["SendOutcomeRow"],
    after_id: int,
    limit: int,
    variants: list[str] | None = None,
    upto_id: int | None = None,
) -> tuple[int, Page]:
    """`record_outcomes` of one page and `claim_batch` of the next, in one transaction: a
    stage in flight takes SQLite's write lock (or a PostgreSQL transaction) and a worker
    thread once per page instead of twice. Returns the callback rows queued and the page."""
    with Session(engine) as session:
        queued, app_key = 0, None
        if outcomes:
            queued = _record(session, msg_id, stage, outcomes)
            # _record loaded the push: from the session's identity map, not a second read.
            app_key = session.get_one(Push, msg_id).app_key
        page = _claim(session, msg_id, stage, after_id, limit, variants, upto_id, app_key)
        session.commit()
    return queued, page


def _app_key(session: Session, msg_id: str) -> str | None:
    sql = _APP_KEY.format(p=placeholder(session))
    row = session.connection().exec_driver_sql(sql, (msg_id,)).first()
    return None if row is None else str(row[0])


def _claim(
    session: Session,
    msg_id: str,
    stage: int,
    after_id: int,
    limit: int,
    variants: list[str] | None,
    upto_id: int | None,
    app_key: str | None = None,
) -> Page:
    if app_key is None:  # unless the caller has the push
        app_key = _app_key(session, msg_id)
    if app_key is None:
        return Page([], None, True)
    rows = _plain_open_page(session, app_key, msg_id, stage, after_id, limit, variants, upto_id)
    items: list[Outbound] = []
    skipped: list[int] = []
    claimed: list[int] = []
    invalid: list[int] = []
    for (
        delivery_id,
        registration_id,
        status,
        platform,
        stopped,
        valid,
        attributes,
        name,
    ) in rows:
        if not valid:  # valid is None: the device is gone
            invalid.append(delivery_id)
            continue
        if stage > 0 and stopped:
            skipped.append(delivery_id)
            continue
        resend = status == DeliveryStatus.sending
        if not resend:
            claimed.append(delivery_id)
        items.append(
            Outbound(delivery_id, registration_id, platform, dict(attributes or {}), resend, name)
        )
    for ids, values in (
        (skipped, {"status": DeliveryStatus.skipped.value, "skip_reason": "stopped"}),
        (invalid, {"status": DeliveryStatus.skipped.value, "skip_reason": "invalid_token"}),
        (claimed, {"status": DeliveryStatus.sending.value}),
    ):
        if not ids:
            continue
        if on_postgresql(session):  # one array parameter, not one bound value per id
            session.connection().exec_driver_sql(_PG_MARK, {"reason": None, **values, "ids": ids})
        else:
            _sqlite_mark(session, ids, values["status"], values.get("skip_reason"))
    return Page(items, rows[-1][0] if rows else None, len(rows) < limit)


def stage_shards(
    engine: Engine, msg_id: str, stage: int, shard_size: int, max_shards: int
) -> list[tuple[int, int]]:
    """The stage's open deliveries cut into shards of about `shard_size` (at most `max_shards`),
    each (after_id, upto_id]: ranges of delivery ids that together cover every open delivery,
    so that several activities send one stage at once. Fewer than two shards' worth: []."""
    if shard_size <= 0 or max_shards < 2:
        return []
    d = Delivery
    where = (
        col(d.msg_id) == msg_id,
        col(d.stage) == stage,
        col(d.status).in_(OPEN_DELIVERIES),
    )
    with Session(reading(engine)) as session:
        n, last = session.execute(sa_select(func.count(), func.max(col(d.id))).where(*where)).one()
        k = min(max_shards, int(n or 0) // shard_size)
        if k < 2:
            return []
        cuts = [
            session.execute(
                sa_select(col(d.id))
                .where(*where)
                .order_by(col(d.id))
                .offset(i * n // k - 1)
                .limit(1)
            ).scalar_one()
            for i in range(1, k)
        ]
    bounds = [0, *cuts, int(last)]
    return list(zip(bounds, bounds[1:], strict=False))


_DELIVERY = Delivery.__tablename__
_PG_MARK = (
    f"UPDATE {_DELIVERY} SET status = %(status)s, "
    "skip_reason = coalesce(%(reason)s, skip_reason) WHERE id = ANY(%(ids)b::int[])"
)
# PostgreSQL: a page's outcomes as one array per column, joined by id in one UPDATE (psycopg
# sends each list as one binary array; an executemany bound and sent every row on its own).
_PG_OUTCOME_COLUMNS = {
    "id": "int",
    "title": "text",
    "alert": "text",
    "status": "text",
    "sent_at": "timestamptz",
}
_PG_RECORD = (
    f"UPDATE {_DELIVERY} AS d SET title = v.title, alert = v.alert, status = v.status, "
    f"sent_at = v.sent_at FROM {unnest(_PG_OUTCOME_COLUMNS)} WHERE d.id = v.id"
)


@dataclass
class SendOutcomeRow:
    delivery_id: int
    registration_id: str
    ok: bool
    error: str | None = None
    token_invalid: bool = False
    # Not sent yet: back to pending, to be sent again after this many seconds.
    retry_after: float | None = None
    # What the recipient was sent (or was to be sent), kept with the delivery.
    title: str | None = None
    alert: str | None = None


_SQLITE_RECORD = "UPDATE delivery SET status = ?, title = ?, alert = ?, sent_at = ? WHERE id IN "


def _sqlite_record(session: Session, rows: list[dict[str, Any]]) -> None:
    """The outcomes as one UPDATE per distinct (status, title, alert, sent_at), usually one per
    page: every recipient of a page sent the same content at the same moment."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for r in rows:
        key = (r["status"], r["title"], r["alert"], sqlite_time(r["sent_at"]))
        groups.setdefault(key, []).append(r["id"])
    for values, ids in groups.items():
        sqlite_update_ids(session, _SQLITE_RECORD, values, ids)


def record_outcomes(engine: Engine, msg_id: str, stage: int, outcomes: list[SendOutcomeRow]) -> int:
    """Record the provider's answers, in bulk: sent; not yet (back to pending, for a later
    try); or failed (a dead token also invalidates the device). Returns how many callback rows
    were queued for the push's callback URLs."""
    with Session(engine) as session:
        queued = _record(session, msg_id, stage, outcomes)
        session.commit()
    return queued


def _record(session: Session, msg_id: str, stage: int, outcomes: list[SendOutcomeRow]) -> int:
    now = utcnow()
    final = [o for o in outcomes if o.ok or o.retry_after is None]
    failed = [o for o in final if not o.ok]
    push = session.get(Push, msg_id)
    if push is None:
        raise NotFound("msg_id", f"no push {msg_id!r}")
    rows = [
        {
            "id": o.delivery_id,
            "title": o.title,
            "alert": o.alert,
            "status": (
                DeliveryStatus.sent
                if o.ok
                else DeliveryStatus.pending
                if o.retry_after is not None
                else DeliveryStatus.failed
            ).value,
            "sent_at": now if o.ok else None,
        }
        for o in outcomes
    ]
    if rows and on_postgresql(session):
        session.connection().exec_driver_sql(_PG_RECORD, arrays(rows, _PG_OUTCOME_COLUMNS))
    elif rows:
        _sqlite_record(session, rows)
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
        for o in final
        for status in (EventStatus.sent.value if o.ok else EventStatus.failed.value,)
    ]
    _, queued = store_events(session, push, events, new_ones=False)
    counts: Counter[str] = Counter()
    if failed:
        deliveries = {
            d.id: d
            for d in session.exec(
                select(Delivery).where(col(Delivery.id).in_([o.delivery_id for o in failed]))
            )
        }
        recipients = {
            r.registration_id: r
            for r in session.exec(
                select(Recipient)
                .where(
                    Recipient.msg_id == msg_id,
                    col(Recipient.registration_id).in_([o.registration_id for o in failed]),
                )
                .order_by(col(Recipient.id))
                .with_for_update()  # as event ingest does: one first failure, counted once
            )
        }
        for o in failed:
            apply_status(
                push.condition,
                recipients[o.registration_id],
                deliveries[o.delivery_id],
                EventStatus.failed,
                now,
                o.error,
                counts,
            )
            if o.token_invalid:
                invalidate(session, push.app_key, o.registration_id, o.error)
    session.flush()
    bump_counts(session, msg_id, counts)
    return queued


def last_sent(engine: Engine, msg_id: str, stage: int) -> datetime | None:
    """When the stage's last delivery was sent (UTC), or None when none was."""
    with Session(reading(engine)) as session:
        at = session.execute(
            sa_select(func.max(col(Delivery.sent_at))).where(
                col(Delivery.msg_id) == msg_id, col(Delivery.stage) == stage
            )
        ).scalar_one_or_none()
    return None if at is None else utc(at)


def stage_result(engine: Engine, msg_id: str, stage: int) -> tuple[dict[str, int], Progress]:
    """The stage's deliveries by DeliveryStatus, and the push's progress, in one read."""
    with Session(reading(engine)) as session:
        rows = session.execute(
            sa_select(col(Delivery.status), func.count())
            .where(col(Delivery.msg_id) == msg_id, col(Delivery.stage) == stage)
            .group_by(col(Delivery.status))
        ).all()
        push = session.get(Push, msg_id)
        return {status: int(n) for status, n in rows}, progress_of(push)
