"""Status events: stored once each (idempotent by event_id), applied to recipients and their
deliveries, and queued for the push's callback URLs, all in one transaction."""

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance.db import Delivery, Push, Recipient, StatusEvent, reading, utcnow
from relance.durations import parse_duration
from relance.ledger import outbox
from relance.ledger._base import (
    SQLITE_MAX_ROWS,
    LedgerError,
    NotFound,
    among,
    arrays,
    chunks,
    flat,
    on_postgresql,
    sqlite_insert,
    sqlite_time,
    unnest,
)
from relance.ledger.devices import invalidate, mark_seen, unsubscribe
from relance.ledger.transitions import (
    DELIVERY_STATE,
    RECIPIENT_STATE,
    advance,
    bump_counts,
    first_stamps,
    outcome,
    stamp_deliveries,
    write_recipients,
)
from relance.models import DEFAULT_ATTRIBUTION_WINDOW, EventStatus, StatusEventIn
from relance.states import DeliveryStatus

# Deliveries an event without a stage may belong to: the latest one that may have been sent,
# or that was held out (a held-out recipient is observed: its clicks and conversions count).
_MAYBE_SENT = (DeliveryStatus.sent, DeliveryStatus.sending, DeliveryStatus.held_out)
_OUTCOMES = (EventStatus.converted, EventStatus.unsubscribed)
_RECIPIENT = Recipient.__table__  # type: ignore[attr-defined]
_EVENT = StatusEvent.__table__  # type: ignore[attr-defined]


def event_key(msg_id: str, registration_id: str, stage: int, status: str) -> str:
    """The dedup key of a status transition: one per recipient, stage and status."""
    raw = f"{msg_id}\x1f{registration_id}\x1f{stage}\x1f{status}"
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


_DEVICE_REPORTS = {
    s.value for s in (EventStatus.delivered, EventStatus.displayed, EventStatus.clicked)
}


@dataclass
class IngestResult:
    accepted: int
    duplicates: int
    msg_ids: set[str] = field(default_factory=set)
    callbacks_queued: int = 0


def ingest_events(
    engine: Engine,
    app_key: str,
    events: list[StatusEventIn],
    invalid_tokens: dict[str, str] | None = None,
) -> IngestResult:
    """Store a batch of status events idempotently and apply them, all in one transaction;
    `invalid_tokens` (registration_id: reason) are devices a relay reported dead.

    Set-based: rows, never an ORM object per event. The batch's recipients are read once (and
    locked, on PostgreSQL, so that concurrent batches on the same recipients count each first
    transition once); the new events are folded through the one rule (`transitions.advance`)
    in memory, then written with a few bulk statements."""
    now = utcnow()
    with Session(engine) as session:
        msg_ids = {e.msg_id for e in events}
        pushes = {
            p.msg_id: p for p in session.exec(select(Push).where(col(Push.msg_id).in_(msg_ids)))
        }
        for i, e in enumerate(events):
            push = pushes.get(e.msg_id)
            if push is None or push.app_key != app_key:
                raise NotFound(f"events[{i}].msg_id", f"no push {e.msg_id!r} for this app")
        registration_ids = {e.registration_id for e in events}
        query = (
            sa_select(
                *(_RECIPIENT.c[c] for c in ("id", "msg_id", "registration_id", *RECIPIENT_STATE))
            )
            .where(
                among(session, _RECIPIENT.c.msg_id, msg_ids),
                among(session, _RECIPIENT.c.registration_id, registration_ids),
            )
            .order_by(_RECIPIENT.c.id)  # one locking order for every batch: no deadlock
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        recipients = {
            (row["msg_id"], row["registration_id"]): dict(row)
            for row in session.execute(query).mappings()
        }
        for i, e in enumerate(events):
            if (e.msg_id, e.registration_id) not in recipients:
                raise LedgerError(
                    f"events[{i}].registration_id",
                    f"{e.registration_id!r} is not a recipient of push {e.msg_id!r}",
                )
        latest_sent = _latest_sent(
            session,
            [e for e in events if e.stage is None and e.status is not EventStatus.converted],
        )
        exposures = _exposures(session, [e for e in events if e.status is EventStatus.converted])

        # By event_id: a repeat inside one batch changes nothing, as a repeat in a later batch
        # does; the first of them is the one stored and applied.
        rows: dict[str, dict[str, Any]] = {}
        for e in events:
            at = (e.at or now).astimezone(UTC)
            attributed: bool | None = None
            if e.status is EventStatus.converted:
                window = attribution_window(pushes[e.msg_id].request)
                found = attribute(
                    exposures.get((e.msg_id, e.registration_id), []), e.stage, at, window
                )
                attributed = found is not None
                stage = found if found is not None else (e.stage or 0)
            elif e.stage is not None:
                stage = e.stage
            else:
                stage = latest_sent.get((e.msg_id, e.registration_id), 0)
            key = event_key(e.msg_id, e.registration_id, stage, e.status.value)
            if key in rows:
                continue
            rows[key] = {
                "event_id": key,
                "msg_id": e.msg_id,
                "registration_id": e.registration_id,
                "stage": stage,
                "status": e.status.value,
                "at": at,
                "error": e.error,
                "received_at": now,
                # Not columns of the event: what the fold and the callback rows need.
                "value": e.value,
                "currency": e.currency,
                "attributed": attributed,
            }
        by_push: dict[str, list[dict[str, Any]]] = {}
        for row in rows.values():
            by_push.setdefault(row["msg_id"], []).append(row)
        inserted: set[str] = set()
        queued = 0
        for msg_id, mine in by_push.items():
            new, rows_queued = store_events(session, pushes[msg_id], mine)
            inserted, queued = inserted | new, queued + rows_queued

        # Fold the new events, in batch order, through the rule: recipients from their stored
        # state, deliveries from empty (the database keeps what they already had).
        counts: dict[str, Counter[str]] = {m: Counter() for m in by_push}
        changed: dict[tuple[str, str], dict[str, Any]] = {}
        deliveries: dict[tuple[str, str, int], dict[str, Any]] = {}
        stamps: dict[tuple[str, str, int], dict[str, Any]] = {}
        opted_out: dict[str, tuple[str, datetime]] = {}
        for row in rows.values():
            if row["event_id"] not in inserted:
                continue
            m, r, stage = row["msg_id"], row["registration_id"], row["stage"]
            status, at, error = EventStatus(row["status"]), row["at"], row["error"]
            state = recipients[(m, r)]
            if status in _OUTCOMES and (status is EventStatus.unsubscribed or row["attributed"]):
                if outcome(state, status, at, stage, row["value"], row["currency"]):
                    changed[(m, r)] = state
                if status is EventStatus.unsubscribed:
                    opted_out.setdefault(r, (pushes[m].app_key, at))
            if advance(pushes[m].condition, state, status, at, error, counts[m]):
                changed[(m, r)] = state
            empty = deliveries.setdefault((m, r, stage), dict.fromkeys(DELIVERY_STATE))
            stamped = first_stamps(empty, status, at, error)
            empty.update(stamped)
            stamps.setdefault((m, r, stage), {}).update(stamped)
        write_recipients(session, changed.values())
        stamp_deliveries(session, stamps)
        for registration_id, reason in (invalid_tokens or {}).items():
            invalidate(session, app_key, registration_id, reason)
        unsubscribe(session, app_key, {r: at for r, (_, at) in opted_out.items()})
        # The device's own reports (not a failure a relay saw) say it was online then.
        seen: dict[str, Any] = {}
        for row in rows.values():
            if row["status"] in _DEVICE_REPORTS:
                at = min(row["at"], now)
                seen[row["registration_id"]] = max(at, seen.get(row["registration_id"], at))
        mark_seen(session, app_key, seen)
        for msg_id in sorted(counts):  # one locking order for the pushes too
            bump_counts(session, msg_id, counts[msg_id])
        session.commit()
        return IngestResult(len(inserted), len(events) - len(inserted), set(by_push), queued)


def _latest_sent(session: Session, events: list[StatusEventIn]) -> dict[tuple[str, str], int]:
    """For events without a stage: the latest stage that may have been sent to each device."""
    if not events:
        return {}
    table = Delivery.__table__  # type: ignore[attr-defined]
    query = (
        sa_select(table.c.msg_id, table.c.registration_id, func.max(table.c.stage))
        .where(
            among(session, table.c.msg_id, {e.msg_id for e in events}),
            among(session, table.c.registration_id, {e.registration_id for e in events}),
            table.c.status.in_([s.value for s in _MAYBE_SENT]),
        )
        .group_by(table.c.msg_id, table.c.registration_id)
    )
    return {(m, r): int(stage) for m, r, stage in session.execute(query)}


def attribution_window(request: dict[str, Any]) -> timedelta:
    """The push's `body.options.attribution_window`, or the default (24h)."""
    options = (request.get("body") or {}).get("options") or {}
    window = options.get("attribution_window")
    return parse_duration(window) if window else DEFAULT_ATTRIBUTION_WINDOW


@dataclass(frozen=True)
class Exposure:
    """A stage that reached a recipient (sent, or held out: observed all the same), and when
    (the delivery's send, else the first send of its stage: a held-out recipient's "would
    have been sent" time; None: the stage has sent nothing yet)."""

    stage: int
    at: datetime | None


def attribute(
    exposures: list[Exposure], stage: int | None, at: datetime, window: timedelta
) -> int | None:
    """The stage a conversion at `at` is attributed to: the latest stage that reached the
    recipient before it (or the `stage` the event names), if the conversion came within
    `window` after that stage; else None (not attributed: stored, not counted)."""
    candidates = [
        x for x in exposures if (stage is None or x.stage == stage) and (x.at is None or x.at <= at)
    ]
    if not candidates:
        return None
    latest = max(candidates, key=lambda x: x.stage)
    if latest.at is not None and at - latest.at > window:
        return None
    return latest.stage


def _exposures(
    session: Session, events: list[StatusEventIn]
) -> dict[tuple[str, str], list[Exposure]]:
    """For conversions: every stage that reached each device (sent, being sent or held out),
    with its time. Two indexed reads: the devices' deliveries, then one send time for each
    stage where a held-out (or in-flight) delivery has none of its own."""
    if not events:
        return {}
    table = Delivery.__table__  # type: ignore[attr-defined]
    rows = session.execute(
        sa_select(table.c.msg_id, table.c.registration_id, table.c.stage, table.c.sent_at).where(
            among(session, table.c.msg_id, {e.msg_id for e in events}),
            among(session, table.c.registration_id, {e.registration_id for e in events}),
            table.c.status.in_([s.value for s in _MAYBE_SENT]),
        )
    ).all()
    stage_sent: dict[tuple[str, int], datetime | None] = {}
    for m, _, stage, sent_at in rows:
        if sent_at is None and (m, stage) not in stage_sent:
            stage_sent[(m, stage)] = session.execute(
                sa_select(table.c.sent_at)
                .where(
                    table.c.msg_id == m,
                    table.c.stage == stage,
                    table.c.sent_at.is_not(None),
                )
                .order_by(table.c.id)
                .limit(1)
            ).scalar_one_or_none()
    found: dict[tuple[str, str], list[Exposure]] = {}
    for m, r, stage, sent_at in rows:
        moment = sent_at if sent_at is not None else stage_sent.get((m, stage))
        found.setdefault((m, r), []).append(Exposure(int(stage), _utc(moment)))
    return found


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive times: they are UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# PostgreSQL: the batch as one array per column, unnested into one INSERT (a handful of
# parameters, not thousands to parse and bind one by one); in the batch's order.
_PG_EVENT_COLUMNS = {
    "event_id": "text",
    "msg_id": "text",
    "registration_id": "text",
    "stage": "int",
    "status": "text",
    "at": "timestamptz",
    "error": "text",
    "received_at": "timestamptz",
}
_EVENT_COLUMNS = tuple(_PG_EVENT_COLUMNS)
_TIMES = {c for c, t in _PG_EVENT_COLUMNS.items() if t == "timestamptz"}
_SQLITE_EVENTS_TAIL = "ON CONFLICT (event_id) DO NOTHING"
_RETURNING = " RETURNING event_id"
_PG_INSERT_EVENTS = (
    f"INSERT INTO {_EVENT.name} ({', '.join(_PG_EVENT_COLUMNS)}) "
    f"SELECT {', '.join(_PG_EVENT_COLUMNS)} FROM {unnest(_PG_EVENT_COLUMNS)} ORDER BY ord "
    "ON CONFLICT (event_id) DO NOTHING"
)


def store_events(
    session: Session, push: Push, events: list[dict[str, Any]], new_ones: bool = True
) -> tuple[set[str], int]:
    """Insert status events, ignoring ones already stored; queue the new ones for callbacks.
    Returns the event_ids that were new and how many callback rows were queued.

    With `new_ones=False` (the caller does not need them), a push with no callback URL's
    events are inserted without reading back which were new, and the set returned is empty:
    a stage records one event per send, and most pushes have no callback URL.

    One statement per batch, whatever its size: on PostgreSQL one array per column, on
    SQLite one multi-row INSERT per SQLITE_MAX_ROWS rows."""
    if not events:
        return set(), 0
    urls = outbox.urls_of(session, push)
    returning = _RETURNING if urls or new_ones else ""
    inserted: set[str] = set()
    if on_postgresql(session):
        sql, params = _PG_INSERT_EVENTS + returning, arrays(events, _PG_EVENT_COLUMNS)
        found = session.connection().exec_driver_sql(sql, params)
        if returning:
            inserted.update(found.scalars())
    else:
        conn = session.connection()
        for batch in chunks(events, SQLITE_MAX_ROWS):
            rows = [
                tuple(sqlite_time(e[c]) if c in _TIMES else e[c] for c in _EVENT_COLUMNS)
                for e in batch
            ]
            sql = sqlite_insert(_EVENT.name, _EVENT_COLUMNS, len(rows), _SQLITE_EVENTS_TAIL)
            found = conn.exec_driver_sql(sql + returning, flat(rows))
            if returning:
                inserted.update(r[0] for r in found)
    if not urls:
        return inserted, 0
    queued = outbox.enqueue(session, push, [e for e in events if e["event_id"] in inserted], urls)
    return inserted, queued


def list_events(engine: Engine, msg_id: str, after_id: int, limit: int) -> list[StatusEvent]:
    with Session(reading(engine)) as session:
        return list(
            session.exec(
                select(StatusEvent)
                .where(StatusEvent.msg_id == msg_id, col(StatusEvent.id) > after_id)
                .order_by(col(StatusEvent.id))
                .limit(limit)
            )
        )
