"""The one rule for applying a status to a recipient and its delivery, used by both event
ingest and the recording of send outcomes; and the push's counters it moves."""

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col

from relance.db import Delivery, Push, Recipient
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
}


def stops(condition: str | None, recipient: Recipient) -> bool:
    """A recipient stops when it no longer matches the trigger, or failed for good."""
    if recipient.failed_at is not None and recipient.delivered_at is None:
        return True
    status = STOP_STATUS[TriggerCondition(condition)] if condition else EventStatus.clicked
    return getattr(recipient, f"{status.value}_at") is not None


def apply_status(
    condition: str | None,
    recipient: Recipient,
    delivery: Delivery | None,
    status: EventStatus,
    at: datetime,
    error: str | None,
    counts: Counter[str],
) -> None:
    """Stamp the first time of `status` (and what it implies) on the delivery and the recipient,
    and count each recipient's first transitions (and its stop) in `counts`."""
    for implied in IMPLIED[status]:
        column = f"{implied.value}_at"
        if delivery is not None and getattr(delivery, column) is None:
            setattr(delivery, column, at)
            if implied is EventStatus.failed:
                delivery.error = error
        if getattr(recipient, column) is None:
            setattr(recipient, column, at)
            if implied is EventStatus.failed:
                recipient.error = error
            counts[f"n_{implied.value}"] += 1
    if not recipient.stopped and stops(condition, recipient):
        recipient.stopped = True
        counts["n_stopped"] += 1


def bump_counts(session: Session, msg_id: str, counts: Counter[str]) -> None:
    """Add to the push's counters and move its `seq`, so journeys can tell newer from older."""
    if not counts:
        return
    values: dict[str, Any] = {k: getattr(Push, k) + v for k, v in counts.items() if v}
    values["seq"] = Push.seq + 1
    session.execute(update(Push).where(col(Push.msg_id) == msg_id).values(**values))
