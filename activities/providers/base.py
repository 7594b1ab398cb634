"""The provider interface: send a batch of rendered messages, get one outcome per message."""

from typing import Any, Protocol

from pydantic import BaseModel


class OutboundMessage(BaseModel):
    # The same key on a re-send after a crash lets the provider or device drop the repeat.
    idempotency_key: str
    msg_id: str
    stage: int
    registration_id: str
    platform: str
    title: str | None = None
    alert: str
    extras: dict[str, Any] = {}
    time_to_live: int | None = None
    # False: a data-only message (EngageLab's custom `message` sent without a notification):
    # nothing is shown by the system; `title`/`alert`/`extras` are the message's, for records.
    notify: bool = True
    # EngageLab's `message` object ({msg_content, title?, content_type?, extras?}), when the
    # push has one: the data payload, alone or alongside the notification.
    message: dict[str, Any] | None = None
    # The recipient's A/B variant at this stage, if the stage has variants.
    variant: str | None = None


def message_data(message: OutboundMessage) -> dict[str, Any]:
    """The custom message as flat data keys (FCM data, APNs custom keys): its extras, then
    `msg_content`, `title` and `content_type`."""
    if message.message is None:
        return {}
    m = message.message
    data: dict[str, Any] = dict(m.get("extras") or {})
    for key in ("msg_content", "title", "content_type"):
        if m.get(key) is not None:
            data[key] = m[key]
    return data


class SendOutcome(BaseModel):
    """What happened to one message. Exactly one outcome per message sent, in any order."""

    registration_id: str
    ok: bool
    error: str | None = None
    # The provider says the token is dead: the device is invalidated.
    token_invalid: bool = False
    # Not sent yet, worth another try after this many seconds (the provider's Retry-After or
    # its own backoff); the sender tries again and the message is sent at most once.
    retry_after: float | None = None
    # The app's provider configuration is wrong (credentials, sender, topic): the token is
    # kept, and the error says what a human must fix.
    config_error: bool = False


class ProviderError(Exception):
    """The whole batch could not be handed over; the activity retries it."""


class Provider(Protocol):
    name: str

    async def send(self, messages: list[OutboundMessage]) -> list[SendOutcome]: ...

    async def already_received(self, keys: list[str]) -> set[str] | None:
        """After a crash mid-send: which of these messages the provider already took, or None
        when it cannot tell (then they are sent again with the same idempotency key)."""

    async def aclose(self) -> None: ...
