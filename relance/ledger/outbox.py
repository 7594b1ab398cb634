"""The callback outbox in the ledger: rows written in the same transaction as their status
events, formed into batches per URL, delivered, retried on schedule, dead-lettered."""

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from relance.callbacks import callback_row, callback_urls, next_attempt
from relance.db import CallbackBatch, CallbackRow, Push, reading
from relance.ledger._base import arrays, insert_for, on_postgresql, placeholder, unnest
from relance.states import CallbackBatchState


def utc(moment: datetime) -> datetime:
    """UTC, so outbox times compare alike on every database."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


# PostgreSQL: the rows as one array per column, unnested into one INSERT.
_PG_ROW_COLUMNS = {
    "app_key": "text",
    "url": "text",
    "event_id": "text",
    "msg_id": "text",
    "row": "text",
    "created_at": "timestamptz",
}
_PG_INSERT_ROWS = (
    f"INSERT INTO {CallbackRow.__table__.name} "  # type: ignore[attr-defined]
    "(app_key, url, event_id, msg_id, row, created_at) "
    f"SELECT app_key, url, event_id, msg_id, row::json, created_at "
    f"FROM {unnest(_PG_ROW_COLUMNS)} ORDER BY ord "
    "ON CONFLICT (url, event_id) DO NOTHING"
)


_APP_URLS = "SELECT callback_urls FROM app WHERE app_key = {p}"


def urls_of(session: Session, push: Push) -> list[str]:
    """The push's callback URLs: its own, or else its app's (one plain read of the app's
    column, not an ORM load of the app, since a stage asks once per page)."""
    if push.request.get("callback_url") is not None:
        return callback_urls(push.request, [])
    sql = _APP_URLS.format(p=placeholder(session))
    found = session.connection().exec_driver_sql(sql, (push.app_key,)).scalar()
    if isinstance(found, str):  # SQLite's JSON text
        found = json.loads(found)
    return callback_urls(push.request, list(found or []))


def enqueue(session: Session, push: Push, events: list[dict[str, Any]], urls: list[str]) -> int:
    """Queue these (newly stored) status events for each of `urls`, their push's callback
    URLs (`urls_of`); returns how many rows were queued."""
    if not events or not urls:
        return 0
    # The push's columns read once, not through the ORM's attributes for every row.
    app_key, msg_id, request = push.app_key, push.msg_id, push.request
    rows = [
        {
            "app_key": app_key,
            "url": url,
            "event_id": e["event_id"],
            "msg_id": msg_id,
            "row": callback_row(request, e),
            "batch_id": None,
            "created_at": utc(e.get("received_at") or e["at"]),
        }
        for e in events
        for url in urls
    ]
    if on_postgresql(session):
        for row in rows:
            row["row"] = json.dumps(row["row"])
        session.connection().exec_driver_sql(_PG_INSERT_ROWS, arrays(rows, _PG_ROW_COLUMNS))
        return len(rows)
    # One executemany on the table: no ORM bulk path, no VALUES list compiled per batch.
    session.connection().execute(
        insert_for(session)(CallbackRow.__table__).on_conflict_do_nothing(  # type: ignore[attr-defined]
            index_elements=["url", "event_id"]
        ),
        rows,
    )
    return len(rows)


def form_batches(engine: Engine, app_key: str, now: datetime, batch_size: int) -> int:
    """Group the app's unbatched rows into batches of at most `batch_size` per URL."""
    formed = 0
    with Session(engine) as session:
        pending = session.execute(
            select(col(CallbackRow.id), col(CallbackRow.url))
            .where(col(CallbackRow.app_key) == app_key, col(CallbackRow.batch_id).is_(None))
            .order_by(col(CallbackRow.id))
            .limit(batch_size * 50)
        ).all()
        by_url: dict[str, list[int]] = {}
        for row_id, url in pending:
            by_url.setdefault(url, []).append(row_id)
        for url, ids in by_url.items():
            for i in range(0, len(ids), batch_size):
                chunk = ids[i : i + batch_size]
                batch = CallbackBatch(
                    app_key=app_key, url=url, rows=len(chunk), next_attempt_at=utc(now)
                )
                session.add(batch)
                session.flush()
                session.execute(
                    update(CallbackRow)
                    .where(col(CallbackRow.id).in_(chunk))
                    .values(batch_id=batch.id)
                )
                formed += 1
        session.commit()
    return formed


def _with_rows(session: Session, query: Any) -> list[tuple[CallbackBatch, list[dict[str, Any]]]]:
    batches = list(session.execute(query).scalars())
    rows: dict[int, list[dict[str, Any]]] = {b.id: [] for b in batches if b.id is not None}
    if rows:
        for batch_id, row in session.execute(
            select(col(CallbackRow.batch_id), col(CallbackRow.row))
            .where(col(CallbackRow.batch_id).in_(list(rows)))
            .order_by(col(CallbackRow.id))
        ):
            rows[batch_id].append(row)
    return [(b, rows[b.id or 0]) for b in batches]


def due_batches(
    engine: Engine, app_key: str, now: datetime, limit: int
) -> list[tuple[CallbackBatch, list[dict[str, Any]]]]:
    """Pending batches whose next try is due, with their rows."""
    with Session(reading(engine)) as session:
        return _with_rows(
            session,
            select(CallbackBatch)
            .where(
                col(CallbackBatch.app_key) == app_key,
                col(CallbackBatch.state) == CallbackBatchState.pending,
                col(CallbackBatch.next_attempt_at) <= utc(now),
            )
            .order_by(col(CallbackBatch.next_attempt_at))
            .limit(limit),
        )


def record_attempts(
    engine: Engine, outcomes: dict[int, str | None], now: datetime, schedule: list[float]
) -> dict[int, str]:
    """Record one delivery try per batch (error None: delivered), in one transaction; returns
    each batch's new state: delivered, pending (a next try is scheduled) or dead."""
    states = {}
    with Session(engine) as session:
        for batch_id, error in outcomes.items():
            batch = session.get(CallbackBatch, batch_id)
            assert batch is not None
            batch.attempts += 1
            if error is None:
                batch.state, batch.delivered_at, batch.last_error = (
                    CallbackBatchState.delivered,
                    utc(now),
                    None,
                )
            else:
                batch.last_error = error[:500]
                retry_at = next_attempt(now, batch.attempts, schedule)
                if retry_at is None:
                    batch.state = CallbackBatchState.dead
                else:
                    batch.next_attempt_at = utc(retry_at)
            states[batch_id] = batch.state
        session.commit()
    return states


def next_due(engine: Engine, app_key: str) -> datetime | None:
    """When the app's forwarder has work next: now if rows wait unbatched, else the earliest
    pending batch, else None (nothing to do)."""
    with Session(reading(engine)) as session:
        unbatched = session.execute(
            select(col(CallbackRow.id))
            .where(col(CallbackRow.app_key) == app_key, col(CallbackRow.batch_id).is_(None))
            .limit(1)
        ).first()
        if unbatched is not None:
            return datetime.now(UTC)
        earliest = session.execute(
            select(func.min(col(CallbackBatch.next_attempt_at))).where(
                col(CallbackBatch.app_key) == app_key,
                col(CallbackBatch.state) == CallbackBatchState.pending,
            )
        ).scalar_one_or_none()
    return utc(earliest) if earliest is not None else None


def apps_with_work(engine: Engine) -> list[str]:
    """Apps whose forwarder should be running: unbatched rows or pending batches."""
    with Session(reading(engine)) as session:
        rows = set(
            session.execute(
                select(col(CallbackRow.app_key))
                .where(col(CallbackRow.batch_id).is_(None))
                .distinct()
            ).scalars()
        )
        batches = set(
            session.execute(
                select(col(CallbackBatch.app_key))
                .where(col(CallbackBatch.state) == CallbackBatchState.pending)
                .distinct()
            ).scalars()
        )
    return sorted(rows | batches)


def dead_batches(
    engine: Engine, app_key: str, after_id: int, limit: int
) -> list[tuple[CallbackBatch, list[dict[str, Any]]]]:
    """Dead-lettered batches after `after_id`, with their rows."""
    with Session(reading(engine)) as session:
        return _with_rows(
            session,
            select(CallbackBatch)
            .where(
                col(CallbackBatch.app_key) == app_key,
                col(CallbackBatch.state) == CallbackBatchState.dead,
                col(CallbackBatch.id) > after_id,
            )
            .order_by(col(CallbackBatch.id))
            .limit(limit),
        )


def requeue_dead(engine: Engine, app_key: str, batch_id: int, now: datetime) -> bool:
    """Send a dead-lettered batch again from the first try; False if there is no such batch."""
    with Session(engine) as session:
        batch = session.get(CallbackBatch, batch_id)
        if batch is None or batch.app_key != app_key or batch.state != CallbackBatchState.dead:
            return False
        batch.state, batch.attempts, batch.next_attempt_at = CallbackBatchState.pending, 0, utc(now)
        session.commit()
        return True


def oldest_rows(engine: Engine, batch_ids: list[int]) -> dict[int, datetime]:
    """When each batch's oldest event reached the API (its rows' created_at): where its
    delivery lag starts."""
    if not batch_ids:
        return {}
    with Session(reading(engine)) as session:
        rows = session.execute(
            select(col(CallbackRow.batch_id), func.min(col(CallbackRow.created_at)))
            .where(col(CallbackRow.batch_id).in_(batch_ids))
            .group_by(col(CallbackRow.batch_id))
        ).all()
    return {batch_id: utc(created) for batch_id, created in rows if batch_id is not None}


def push_callbacks(engine: Engine, app_key: str, msg_id: str) -> dict[str, int]:
    """The push's callback rows by where they stand: `queued` (not yet in a batch),
    `retrying` (in a batch that failed at least once and will be tried again), `pending`,
    `delivered`, `dead`."""
    with Session(reading(engine)) as session:
        rows = session.execute(
            select(col(CallbackBatch.state), col(CallbackBatch.attempts) > 0, func.count())
            .select_from(CallbackRow)
            .outerjoin(CallbackBatch, col(CallbackBatch.id) == col(CallbackRow.batch_id))
            .where(col(CallbackRow.app_key) == app_key, col(CallbackRow.msg_id) == msg_id)
            .group_by(col(CallbackBatch.state), col(CallbackBatch.attempts) > 0)
        ).all()
    out = {"queued": 0, "pending": 0, "retrying": 0, "delivered": 0, "dead": 0}
    for state, tried, n in rows:
        if state is None:
            key = "queued"
        elif state == CallbackBatchState.pending:
            key = "retrying" if tried else "pending"
        else:
            key = str(state)
        out[key] = out.get(key, 0) + int(n)
    return out
