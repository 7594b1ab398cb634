"""The one rule for applying a status to a recipient and its delivery, used by both event
ingest and the recording of send outcomes; and the push's counters it moves.

The rule is written once, over plain mappings of a row's columns (`first_stamps`, `advance`,
`stops`). Two forms apply it: `apply_status` on ORM objects (send outcomes), and the set-based
writes of event ingest (`write_recipients`, `stamp_deliveries`), which fold a batch through the
same functions and write the results with one bulk statement per shape."""

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, update
from sqlmodel import Session, col

from relance.db import Delivery, Push, Recipient
from relance.ledger._base import arrays, on_postgresql, unnest
from relance.models import EventStatus, TriggerCondition

# The status that ends a recipient's journey for each trigger condition.
STOP_STATUS = {
    TriggerCondition.not_clicked: EventStatus.clicked,
    TriggerCondition.not_displayed: EventStatus.displayed,
    TriggerCondition.not_delivered: EventStatus.delivered,
}
# A status implies the ones before it: a click that arrives first still counts as displayed.
IMPLIED = {
    EventStatus.clicked: (EventStatus.delivered, EventStatus.displayed, EventStatus.clicked),
    EventStatus.displayed: (EventStatus.delivered, EventStatus.displayed),
    EventStatus.delivered: (EventStatus.delivered,),
    EventStatus.failed: (EventStatus.failed,),
    EventStatus.sent: (),
    # Outcomes of the recipient, not of a delivery (`outcome` below): they stamp no delivery.
    EventStatus.converted: (),
    EventStatus.unsubscribed: (),
}
# The time columns a status may stamp, on a recipient and on a delivery alike.
STAMPED = tuple(dict.fromkeys(f"{s.value}_at" for implied in IMPLIED.values() for s in implied))
# A recipient's attributed conversion and its unsubscribe (each the first one only).
OUTCOMES = (
    "converted_at",
    "conversion_value",
    "conversion_currency",
    "converted_stage",
    "unsubscribed_at",
    "unsubscribed_stage",
)
# What the rule reads and writes of a recipient.
RECIPIENT_STATE = (*STAMPED, "error", "stopped", *OUTCOMES)
DELIVERY_STATE = (*STAMPED, "error")


def first_stamps(
    row: Mapping[str, Any], status: EventStatus, at: datetime, error: str | None
) -> dict[str, Any]:
    """The columns `status` stamps on a row (recipient or delivery) that has them still empty:
    the first time of the status and of what it implies; a first failure brings its error."""
    new: dict[str, Any] = {}
    for implied in IMPLIED[status]:
        column = f"{implied.value}_at"
        if row[column] is None:
            new[column] = at
            if implied is EventStatus.failed:
                new["error"] = error
    return new


def stops(condition: str | None, recipient: Mapping[str, Any]) -> bool:
    """A recipient stops when it no longer matches the trigger, or failed for good."""
    if recipient["failed_at"] is not None and recipient["delivered_at"] is None:
        return True
    if recipient.get("unsubscribed_at") is not None:  # opted out: no later stage
        return True
    status = STOP_STATUS[TriggerCondition(condition)] if condition else EventStatus.clicked
    return recipient[f"{status.value}_at"] is not None


def advance(
    condition: str | None,
    recipient: dict[str, Any],
    status: EventStatus,
    at: datetime,
    error: str | None,
    counts: Counter[str],
) -> dict[str, Any]:
    """Apply `status` to a recipient's state (RECIPIENT_STATE, updated in place), count its
    first transitions and its stop in `counts`, and return the columns that changed."""
    changed = first_stamps(recipient, status, at, error)
    recipient.update(changed)
    for column in changed:
        if column in STAMPED:
            counts[f"n_{column.removesuffix('_at')}"] += 1
    if not recipient["stopped"] and stops(condition, recipient):
        recipient["stopped"] = changed["stopped"] = True
        counts["n_stopped"] += 1
    return changed


def outcome(
    recipient: dict[str, Any],
    status: EventStatus,
    at: datetime,
    stage: int,
    value: float | None = None,
    currency: str | None = None,
) -> dict[str, Any]:
    """A conversion attributed to `stage`, or an unsubscribe at `stage`: recorded on the
    recipient (updated in place) the first time only, so a repeated one counts once. Returns
    the columns that changed. `advance` then stops an unsubscribed recipient."""
    changed: dict[str, Any] = {}
    if status is EventStatus.converted and recipient["converted_at"] is None:
        changed = {
            "converted_at": at,
            "conversion_value": value,
            "conversion_currency": currency,
            "converted_stage": stage,
        }
    elif status is EventStatus.unsubscribed and recipient["unsubscribed_at"] is None:
        changed = {"unsubscribed_at": at, "unsubscribed_stage": stage}
    recipient.update(changed)
    return changed


def apply_status(
    condition: str | None,
    recipient: Recipient,
    delivery: Delivery | None,
    status: EventStatus,
    at: datetime,
    error: str | None,
    counts: Counter[str],
) -> None:
    """The rule on ORM objects: stamp the first time of `status` (and what it implies) on the
    delivery and the recipient, and count the recipient's first transitions (and its stop)."""
    if delivery is not None:
        state = {c: getattr(delivery, c) for c in DELIVERY_STATE}
        for column, value in first_stamps(state, status, at, error).items():
            setattr(delivery, column, value)
    state = {c: getattr(recipient, c) for c in RECIPIENT_STATE}
    for column, value in advance(condition, state, status, at, error, counts).items():
        setattr(recipient, column, value)


# PostgreSQL: the same writes as one UPDATE ... FROM unnest(arrays), one array per column.
def _sql_type(column: str) -> str:
    if column in STAMPED or column in ("converted_at", "unsubscribed_at"):
        return "timestamptz"
    if column in ("converted_stage", "unsubscribed_stage"):
        return "int"
    if column == "conversion_value":
        return "float8"
    return "bool" if column in ("stopped", "set_error") else "text"


_PG_RECIPIENT_COLUMNS = {"id": "bigint"} | {c: _sql_type(c) for c in RECIPIENT_STATE}
_PG_WRITE_RECIPIENTS = (
    f"UPDATE {Recipient.__table__.name} AS t "  # type: ignore[attr-defined]
    f"SET {', '.join(f'{c} = v.{c}' for c in RECIPIENT_STATE)} "
    f"FROM {unnest(_PG_RECIPIENT_COLUMNS)} WHERE t.id = v.id"
)
# Each stamp only where still empty; the error only with a first failure (`set_error`: the
# folded stamps hold an error), judged on the delivery's failed_at before this statement.
_PG_DELIVERY_COLUMNS = {"msg_id": "text", "registration_id": "text", "stage": "int"} | {
    c: _sql_type(c) for c in (*DELIVERY_STATE, "set_error")
}
_PG_STAMP_DELIVERIES = (
    f"UPDATE {Delivery.__table__.name} AS t SET "  # type: ignore[attr-defined]
    + ", ".join(f"{c} = coalesce(t.{c}, v.{c})" for c in STAMPED)
    + ", error = CASE WHEN v.set_error AND t.failed_at IS NULL THEN v.error ELSE t.error END"
    f" FROM {unnest(_PG_DELIVERY_COLUMNS)} WHERE t.msg_id = v.msg_id AND t.stage = v.stage"
    " AND t.registration_id = v.registration_id"
)


def write_recipients(session: Session, states: Iterable[Mapping[str, Any]]) -> None:
    """Write recipients' new states (RECIPIENT_STATE and `id`, as `advance` left them) in one
    bulk UPDATE by id. The caller holds them locked since it read them."""
    if on_postgresql(session):
        states = list(states)
        if states:
            session.connection().exec_driver_sql(
                _PG_WRITE_RECIPIENTS, arrays(states, ("id", *RECIPIENT_STATE))
            )
        return
    params = [{f"b_{k}": state[k] for k in ("id", *RECIPIENT_STATE)} for state in states]
    if not params:
        return
    table = Recipient.__table__  # type: ignore[attr-defined]
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values({c: bindparam(f"b_{c}") for c in RECIPIENT_STATE})
    )
    session.connection().execute(stmt, params)


def stamp_deliveries(
    session: Session, stamps: Mapping[tuple[str, str, int], dict[str, Any]]
) -> None:
    """Stamp deliveries, keyed by (msg_id, registration_id, stage), with what a batch's events
    stamp on an empty delivery (`first_stamps` folded over them): each column only where still
    empty, the error only with a first failure, as `first_stamps` does one by one. One bulk
    UPDATE per set of columns; a delivery that does not exist is left alone."""
    table = Delivery.__table__  # type: ignore[attr-defined]
    if on_postgresql(session):
        rows = [
            {"msg_id": m, "registration_id": r, "stage": stage, "set_error": "error" in new}
            | {c: new.get(c) for c in DELIVERY_STATE}
            for (m, r, stage), new in stamps.items()
            if new
        ]
        if rows:
            session.connection().exec_driver_sql(
                _PG_STAMP_DELIVERIES, arrays(rows, _PG_DELIVERY_COLUMNS)
            )
        return
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for (msg_id, registration_id, stage), new in stamps.items():
        if new:
            shape = tuple(sorted(new))
            row = {"b_msg_id": msg_id, "b_registration_id": registration_id, "b_stage": stage}
            shapes.setdefault(shape, []).append(row | {f"b_{k}": v for k, v in new.items()})
    for shape, params in shapes.items():
        values: dict[str, Any] = {
            c: func.coalesce(table.c[c], bindparam(f"b_{c}", type_=table.c[c].type))
            for c in shape
            if c in STAMPED
        }
        if "error" in shape:
            values["error"] = case(
                (table.c.failed_at.is_(None), bindparam("b_error", type_=table.c.error.type)),
                else_=table.c.error,
            )
        stmt = (
            update(table)
            .where(
                and_(
                    table.c.msg_id == bindparam("b_msg_id"),
                    table.c.stage == bindparam("b_stage"),
                    table.c.registration_id == bindparam("b_registration_id"),
                )
            )
            .values(values)
        )
        session.connection().execute(stmt, params)


def bump_counts(session: Session, msg_id: str, counts: Counter[str]) -> None:
    """Add to the push's counters and move its `seq`, so journeys can tell newer from older."""
    if not counts:
        return
    values: dict[str, Any] = {k: getattr(Push, k) + v for k, v in counts.items() if v}
    values["seq"] = Push.seq + 1
    session.execute(update(Push).where(col(Push.msg_id) == msg_id).values(**values))
