"""Status callbacks to the customer's callback_url: EngageLab's row shape, the two signatures,
the retry schedule and which URLs relance may call at all."""

import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import socket
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

MAX_CALLBACK_URLS = 5

# relance status -> EngageLab's message_status, so code written for EngageLab works unchanged.
MESSAGE_STATUS = {
    "sent": "sent",
    "delivered": "delivered",
    "displayed": "display",
    "clicked": "click",
    "failed": "sent_failed",
    # relance's own: a stage not sent to this recipient; `status_data.reason` says why
    # (frequency_capped, stopped, invalid_token).
    "skipped": "skipped",
    # relance's own outcomes, so the business server can react to them too: a conversion
    # (`status_data`: value, currency, and whether it was attributed to the push within its
    # attribution window) and an unsubscribe.
    "converted": "converted",
    "unsubscribed": "unsubscribed",
}


def callback_row(
    push_request: dict[str, Any], event: dict[str, Any], channel: str = "relance"
) -> dict[str, Any]:
    """One row of EngageLab's callback body for one status event, plus relance's own fields."""
    at: datetime = event["at"]
    error = event.get("error")
    data = {"stage": event["stage"], "status": event["status"]}
    if event["status"] == "skipped":
        data["reason"], error = error, None
    if event["status"] == "converted":
        data |= {k: event.get(k) for k in ("value", "currency", "attributed")}
    return {
        "message_id": event["msg_id"],
        "from": push_request.get("from", "push"),
        "to": event["registration_id"],
        "server": "relance",
        "channel": channel,
        "custom_args": push_request.get("custom_args"),
        "itime": int(at.timestamp()),
        "status": {
            "message_status": MESSAGE_STATUS[event["status"]],
            "status_data": data,
            "error_code": 0 if not error else 1,
            "error_detail": {"message": error} if error else {},
        },
        "stage": event["stage"],
        "event_id": event["event_id"],
    }


def callback_urls(push_request: dict[str, Any], app_default: list[str]) -> list[str]:
    urls = push_request.get("callback_url")
    if urls is None:
        return list(app_default)
    return [urls] if isinstance(urls, str) else list(urls)


def body_of(rows: list[dict[str, Any]]) -> bytes:
    return json.dumps({"total": len(rows), "rows": rows}, separators=(",", ":")).encode()


def engagelab_signature(secret: str, timestamp: str, nonce: str, username: str) -> str:
    """EngageLab's X-CALLBACK-ID signature: HMAC-SHA256 of timestamp+nonce+username (hex)."""
    message = f"{timestamp}{nonce}{username}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def body_signature(secret: str, timestamp: str, body: bytes) -> str:
    """relance's signature, which also covers the body: HMAC-SHA256 of "<timestamp>.<body>"."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signed_headers(secret: str, username: str, body: bytes, now: datetime) -> dict[str, str]:
    timestamp, nonce = str(int(now.timestamp())), secrets.token_hex(8)
    signature = engagelab_signature(secret, timestamp, nonce, username)
    return {
        "content-type": "application/json",
        "X-CALLBACK-ID": f"timestamp={timestamp};nonce={nonce};username={username};"
        f"signature={signature}",
        "X-Relance-Signature": f"t={timestamp},v1={body_signature(secret, timestamp, body)}",
    }


def retry_delay(attempt: int, schedule: list[float], rng: random.Random | None = None) -> float:
    """Delay before try `attempt + 1` (attempt counts from 1), with ±20% jitter."""
    base = schedule[min(attempt, len(schedule)) - 1]
    return base * (rng or random).uniform(0.8, 1.2)


def next_attempt(now: datetime, attempt: int, schedule: list[float]) -> datetime | None:
    """When to try again after `attempt` failed tries, or None: dead-letter it."""
    if attempt > len(schedule):
        return None
    return now + timedelta(seconds=retry_delay(attempt, schedule))


class UnsafeCallbackUrl(ValueError):
    pass


def check_callback_url(url: str, allowed_networks: list[str]) -> None:
    """Refuse what a callback must never reach: non-http(s), and private, loopback, link-local
    or otherwise non-public addresses unless their network is allowed by configuration."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeCallbackUrl("expected an http:// or https:// URL with a host")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UnsafeCallbackUrl(f"host {parts.hostname!r} does not resolve") from None
    allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if any(address in network for network in allowed):
            continue
        if not address.is_global or address.is_multicast:
            raise UnsafeCallbackUrl(
                f"{parts.hostname} resolves to {address}, a private, loopback or link-local "
                "address; expected a public address"
            )
