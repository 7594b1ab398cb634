"""EngageLab's status callbacks, read as relance status events: the body, the echostr handshake
and the optional X-CALLBACK-ID signature. Pure functions; the API route does the I/O."""

import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from relance.callbacks import engagelab_signature
from relance.models import EventStatus, StatusEventIn

# The keys relance puts in a push's `custom_args`; EngageLab echoes them in every callback row,
# which is how a row finds its way back to relance's msg_id and stage.
CUSTOM_ARGS_MSG_ID = "relance_msg_id"
CUSTOM_ARGS_STAGE = "relance_stage"

# EngageLab's message_status -> relance's status. None: a known status with no relance event.
MESSAGE_STATUS: dict[str, EventStatus | None] = {
    "target_valid": None,  # the target was resolved; relance already counts the send itself
    "target_invalid": EventStatus.failed,  # the registration id is unknown: a dead token
    "sent": EventStatus.sent,
    "sent_failed": EventStatus.failed,
    "sent_fail": EventStatus.failed,
    "delivered": EventStatus.delivered,
    "delivered_failed": EventStatus.failed,
    "delivered_fail": EventStatus.failed,
    "impression": EventStatus.displayed,
    "displayed": EventStatus.displayed,
    "click": EventStatus.clicked,
    "clicked": EventStatus.clicked,
    "no_click": None,  # the absence of a click is what relance's trigger already measures
    "withdraw": None,
    "withdraw_failed": None,
}
DEAD_TOKEN_STATUSES = {"target_invalid"}
# error_code 20101: "registration ID invalid or not of this AppKey" (EngageLab's push errors).
DEAD_TOKEN_CODES = {20101}
# The channels' own words for a dead token, as EngageLab passes them on in error_detail.
DEAD_TOKEN_REASONS = {"UNREGISTERED", "NotRegistered", "BadDeviceToken", "Unregistered"}


class EngageLabStatus(BaseModel):
    message_status: str
    status_data: dict[str, Any] | None = None
    error_code: int | None = 0
    error_detail: dict[str, Any] | None = None


class EngageLabRow(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    message_id: str
    sender: str | None = Field(None, alias="from")
    to: str
    server: str | None = None
    channel: str | None = None
    custom_args: dict[str, Any] | str | None = None
    itime: int | None = None
    status: EngageLabStatus


class RelayEvent(BaseModel):
    """One row as relance understands it."""

    event: StatusEventIn
    token_invalid: bool = False
    engagelab_message_id: str
    channel: str | None = None


class SkippedRow(BaseModel):
    index: int
    reason: str


class ParsedCallback(BaseModel):
    events: list[RelayEvent] = []
    skipped: list[SkippedRow] = []


class CallbackSignatureError(ValueError):
    """The X-CALLBACK-ID header does not prove the call comes from EngageLab."""


def echostr_reply(body: Any) -> str | None:
    """The address check EngageLab sends when a callback URL is set up: answer the raw value."""
    if isinstance(body, Mapping) and "echostr" in body and "rows" not in body:
        return str(body["echostr"])
    return None


def parse_callback(body: Mapping[str, Any]) -> ParsedCallback:
    """Turn EngageLab's {"total", "rows": [...]} into relance status events, row by row."""
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise ValueError("rows: expected a list of EngageLab status rows")
    parsed = ParsedCallback()
    for index, raw in enumerate(rows):
        try:
            event = _relay_event(EngageLabRow.model_validate(raw))
        except (ValidationError, ValueError, TypeError) as exc:
            parsed.skipped.append(SkippedRow(index=index, reason=_short(exc)))
            continue
        if isinstance(event, str):
            parsed.skipped.append(SkippedRow(index=index, reason=event))
        else:
            parsed.events.append(event)
    return parsed


def verify_callback_signature(
    header: str | None,
    *,
    username: str,
    secret: SecretStr | str,
    now: float,
    window: float = 300.0,
) -> None:
    """Check `X-CALLBACK-ID: timestamp=…;nonce=…;username=…;signature=…`, where signature is
    hex HMAC-SHA256(secret, timestamp + nonce + username); raise CallbackSignatureError."""
    if not header:
        raise CallbackSignatureError("X-CALLBACK-ID header missing")
    parts = dict(p.strip().split("=", 1) for p in header.split(";") if "=" in p)
    missing = [k for k in ("timestamp", "nonce", "username", "signature") if not parts.get(k)]
    if missing:
        raise CallbackSignatureError(f"X-CALLBACK-ID lacks {', '.join(missing)}")
    if not hmac.compare_digest(parts["username"], username):
        raise CallbackSignatureError("X-CALLBACK-ID username is not the configured one")
    try:
        sent_at = float(parts["timestamp"])
    except ValueError:
        raise CallbackSignatureError("X-CALLBACK-ID timestamp is not a number") from None
    if abs(now - _seconds(sent_at)) > window:
        raise CallbackSignatureError(f"X-CALLBACK-ID timestamp is outside the {window:g}s window")
    key = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    expected = engagelab_signature(key, parts["timestamp"], parts["nonce"], parts["username"])
    if not hmac.compare_digest(expected, parts["signature"].lower()):
        raise CallbackSignatureError("X-CALLBACK-ID signature does not match")


def _relay_event(row: EngageLabRow) -> RelayEvent | str:
    """The event of one row, or why the row carries none."""
    name = row.status.message_status
    if name not in MESSAGE_STATUS:
        return f"unknown message_status {name!r}"
    status = MESSAGE_STATUS[name]
    if status is None:
        return f"message_status {name!r} has no relance event"
    args = _custom_args(row.custom_args)
    if CUSTOM_ARGS_MSG_ID not in args:
        return "custom_args has no relance_msg_id: not a push relance sent"
    error = _error_text(row.status) if status is EventStatus.failed else None
    event = StatusEventIn(
        msg_id=str(args[CUSTOM_ARGS_MSG_ID]),
        registration_id=row.to,
        status=status,
        stage=int(args.get(CUSTOM_ARGS_STAGE, 0)),
        at=datetime.fromtimestamp(_seconds(row.itime), UTC) if row.itime else None,
        error=error[:500] if error else None,
    )
    return RelayEvent(
        event=event,
        token_invalid=status is EventStatus.failed and _dead_token(row.status),
        engagelab_message_id=row.message_id,
        channel=row.channel,
    )


def _custom_args(value: dict[str, Any] | str | None) -> dict[str, Any]:
    if isinstance(value, str):  # echoed back as the JSON text it was sent as
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _dead_token(status: EngageLabStatus) -> bool:
    reason = (status.error_detail or {}).get("message") or ""
    return (
        status.message_status in DEAD_TOKEN_STATUSES
        or status.error_code in DEAD_TOKEN_CODES
        or any(word in DEAD_TOKEN_REASONS for word in str(reason).replace(":", " ").split())
    )


def _error_text(status: EngageLabStatus) -> str:
    reason = (status.error_detail or {}).get("message") or ""
    code = f"engagelab {status.error_code}" if status.error_code else "engagelab"
    return f"{code}: {status.message_status}" + (f": {reason}" if reason else "")


def _seconds(stamp: float) -> float:
    """EngageLab's times are Unix seconds; a few products send milliseconds."""
    return stamp / 1000 if stamp > 10**11 else stamp


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)[:200]
