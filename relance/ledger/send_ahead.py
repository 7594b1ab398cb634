"""Small pushes whose stage 0 a worker sends at once, before their journey's first workflow task
(RELANCE_SEND_AHEAD): `accept_push` queues a row with the push, and the API starts its journey
delayed to the end of its trigger window; a worker leases due rows, sends stage 0 through the
same claims as a journey (each device once, whoever sends), and deletes the row. A row whose
worker died comes due again when its lease ends. A push whose journey could not be started is
forgotten only while its row is untaken (`forget_push`)."""

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col
from sqlmodel import select as sqlmodel_select

from relance.db import Push, SendAhead, reading, utcnow
from relance.ledger._base import NotFound
from relance.ledger.sending import Page, SendOutcomeRow, _claim, _record

TABLE = SendAhead.__table__  # type: ignore[attr-defined]
_ANY_DUE = select(TABLE.c.msg_id).where(TABLE.c.due_at <= bindparam("now")).limit(1)


def take(engine: Engine, limit: int, lease_seconds: float) -> list[tuple[str, int]]:
    """Lease up to `limit` due rows, oldest first: (msg_id, earlier attempts). One statement,
    so two workers never take the same row (SKIP LOCKED on PostgreSQL). A worker polls this
    many times a second: while nothing is due it only reads (no write lock on SQLite)."""
    now = utcnow()
    with reading(engine).connect() as conn:
        if conn.execute(_ANY_DUE, {"now": now}).first() is None:
            return []
    due = select(TABLE.c.msg_id).where(TABLE.c.due_at <= now).order_by(TABLE.c.due_at)
    due = due.limit(limit)
    if engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    statement = (
        update(TABLE)
        .where(TABLE.c.msg_id.in_(due.scalar_subquery()))
        .values(due_at=now + timedelta(seconds=lease_seconds), attempts=TABLE.c.attempts + 1)
        .returning(TABLE.c.msg_id, TABLE.c.attempts)
    )
    with engine.begin() as conn:
        return [(str(m), int(a) - 1) for m, a in conn.execute(statement)]


def done(engine: Engine, msg_ids: Sequence[str]) -> None:
    if not msg_ids:
        return
    with engine.begin() as conn:
        conn.execute(delete(TABLE).where(TABLE.c.msg_id.in_(list(msg_ids))))


def pushes(engine: Engine, msg_ids: Sequence[str]) -> dict[str, Push]:
    """The pushes of a round of leased rows, in one read (a push forgotten since is absent)."""
    with Session(reading(engine)) as session:
        found = session.exec(sqlmodel_select(Push).where(col(Push.msg_id).in_(list(msg_ids))))
        return {p.msg_id: p for p in found}


def claim_first_pages(
    engine: Engine, pushes: Sequence[tuple[str, str]], limit: int
) -> dict[str, Page]:
    """Stage 0's first page of each push (msg_id, app_key), claimed in one transaction: a
    round of pushes sent ahead takes SQLite's write lock once, not once per push."""
    with Session(engine) as session:
        pages = {m: _claim(session, m, 0, 0, limit, None, None, app_key) for m, app_key in pushes}
        session.commit()
    return pages


def record_first_pages(
    engine: Engine, outcomes: Mapping[str, list[SendOutcomeRow]], finished: Sequence[str]
) -> dict[str, int]:
    """The stage-0 outcomes of a round of pushes and the deletion of the rows of those
    `finished`, in one transaction: a row is never done without its outcomes, nor outcomes
    recorded twice. Returns the callback rows queued per push (a push gone since: none)."""
    queued: dict[str, int] = {}
    with Session(engine) as session:
        for msg_id, rows in outcomes.items():
            if not rows:
                continue
            try:
                queued[msg_id] = _record(session, msg_id, 0, rows)
            except NotFound:  # raised before it wrote anything: the push is gone
                queued[msg_id] = 0
        if finished:
            session.execute(delete(TABLE).where(TABLE.c.msg_id.in_(list(finished))))
        session.commit()
    return queued


def later(engine: Engine, msg_id: str, at: datetime) -> None:
    """Due again at `at` (a provider asked to wait, or the send failed)."""
    with engine.begin() as conn:
        conn.execute(update(TABLE).where(TABLE.c.msg_id == msg_id).values(due_at=at))


def take_over(engine: Engine, msg_id: str) -> float | None:
    """The journey's claim on stage 0 of a push sent ahead, when its window ends: None when
    stage 0 is the journey's to finish (the row was done, or is due and untaken: deleted
    here, so no worker takes it after); otherwise the seconds until the worker that holds it
    must have let go (its lease, or the wait a provider asked for). A journey never sends
    beside a worker that may still be sending: that could reach a device twice."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(delete(TABLE).where(TABLE.c.msg_id == msg_id, TABLE.c.due_at <= now))
        held = conn.execute(select(TABLE.c.due_at).where(TABLE.c.msg_id == msg_id)).first()
    if held is None:
        return None
    due = held[0] if held[0].tzinfo else held[0].replace(tzinfo=now.tzinfo)
    return max((due - now).total_seconds(), 0.1)


def pending(engine: Engine) -> int:
    """Rows not yet done (due or leased)."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(TABLE)).scalar_one())
