"""The named states of a journey, of one delivery and of one callback batch, and which of them
are final. Stored as their string values, so the ledger's columns stay plain text."""

from enum import StrEnum


class JourneyState(StrEnum):
    accepted = "accepted"  # recorded, its journey not yet running
    sending = "sending"
    waiting = "waiting"
    resending = "resending"
    completed = "completed"
    cancelled = "cancelled"
    failed = "failed"


# A journey in one of these has ended: nothing more will be sent for its push.
TERMINAL_STATES = frozenset({JourneyState.completed, JourneyState.cancelled, JourneyState.failed})


class DeliveryStatus(StrEnum):
    """One stage to one recipient: queued, handed to a provider (maybe), and its outcome."""

    pending = "pending"
    sending = "sending"  # marked before the provider call: it may have reached the device
    sent = "sent"
    failed = "failed"
    skipped = "skipped"  # stopped matching, or its device became invalid, before the send
    # In a resend stage's random holdout: never sent, yet observed (its clicks and conversions
    # count, as the control group of that stage's lift).
    held_out = "held_out"


# Still to send (or to confirm, for `sending` after a crash).
OPEN_DELIVERIES = (DeliveryStatus.pending, DeliveryStatus.sending)


class CallbackBatchState(StrEnum):
    pending = "pending"
    delivered = "delivered"
    dead = "dead"
