"""Status events: stored once each (idempotent by event_id), applied to recipients and their
deliveries, and queued for the push's callback URLs, all in one transaction."""

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance.db import Delivery, Push, Recipient, StatusEvent, reading, utcnow
from relance.ledger import outbox
from relance.ledger._base import LedgerError, NotFound, chunks, insert_for
from relance.ledger.devices import invalidate
from relance.ledger.transitions import apply_status, bump_counts
from relance.models import EventStatus, StatusEventIn
from relance.states import DeliveryStatus

# Deliveries an event without a stage may belong to: the latest one that may have been sent.
_MAYBE_SENT = (DeliveryStatus.sent, DeliveryStatus.sending)


def event_key(msg_id: str, registration_id: str, stage: int, status: str) -> str:
    """The dedup key of a status transition: one per recipient, stage and status."""
    raw = f"{msg_id}\x1f{registration_id}\x1f{stage}\x1f{status}"
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


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
    `invalid_tokens` (registration_id: reason) are devices a relay reported dead."""
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
        recipients = {
            (r.msg_id, r.registration_id): r
            for r in session.exec(
                select(Recipient).where(
                    col(Recipient.msg_id).in_(msg_ids),
                    col(Recipient.registration_id).in_(registration_ids),
                )
            )
        }
        for i, e in enumerate(events):
            if (e.msg_id, e.registration_id) not in recipients:
                raise LedgerError(
                    f"events[{i}].registration_id",
                    f"{e.registration_id!r} is not a recipient of push {e.msg_id!r}",
                )
        deliveries = {
            (d.msg_id, d.registration_id, d.stage): d
            for d in session.exec(
                select(Delivery).where(
                    col(Delivery.msg_id).in_(msg_ids),
                    col(Delivery.registration_id).in_(registration_ids),
                )
            )
        }

        # An event without a stage counts for the latest stage sent to that device.
        latest_sent: dict[tuple[str, str], int] = {}
        for (m, r, s), d in deliveries.items():
            if d.status in _MAYBE_SENT and s > latest_sent.get((m, r), -1):
                latest_sent[(m, r)] = s

        rows: dict[str, dict[str, Any]] = {}  # by event_id: duplicates inside one batch go
        for e in events:
            stage = (
                e.stage
                if e.stage is not None
                else latest_sent.get((e.msg_id, e.registration_id), 0)
            )
            key = event_key(e.msg_id, e.registration_id, stage, e.status.value)
            rows[key] = {
                "event_id": key,
                "msg_id": e.msg_id,
                "registration_id": e.registration_id,
                "stage": stage,
                "status": e.status.value,
                "at": (e.at or now).astimezone(UTC),
                "error": e.error,
                "received_at": now,
            }
        by_push: dict[str, list[dict[str, Any]]] = {}
        for row in rows.values():
            by_push.setdefault(row["msg_id"], []).append(row)
        inserted: set[str] = set()
        queued = 0
        for msg_id, mine in by_push.items():
            new, rows_queued = store_events(session, pushes[msg_id], mine)
            inserted, queued = inserted | new, queued + rows_queued
        counts: dict[str, Counter[str]] = {m: Counter() for m in by_push}
        for row in rows.values():
            if row["event_id"] not in inserted:
                continue
            key2 = (row["msg_id"], row["registration_id"])
            apply_status(
                pushes[row["msg_id"]].condition,
                recipients[key2],
                deliveries.get((*key2, row["stage"])),
                EventStatus(row["status"]),
                row["at"],
                row["error"],
                counts[row["msg_id"]],
            )
        for registration_id, reason in (invalid_tokens or {}).items():
            invalidate(session, app_key, registration_id, reason)
        session.flush()
        for msg_id, moved in counts.items():
            bump_counts(session, msg_id, moved)
        session.commit()
        return IngestResult(len(inserted), len(events) - len(inserted), set(by_push), queued)


def store_events(
    session: Session, push: Push, events: list[dict[str, Any]]
) -> tuple[set[str], int]:
    """Insert status events, ignoring ones already stored; queue the new ones for callbacks.
    Returns the event_ids that were new and how many callback rows were queued."""
    inserted: set[str] = set()
    for chunk in chunks(events, 500):
        stmt = (
            insert_for(session)(StatusEvent)
            .values(chunk)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(col(StatusEvent.event_id))
        )
        inserted.update(session.execute(stmt).scalars())
    queued = outbox.enqueue(session, push, [e for e in events if e["event_id"] in inserted])
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
