"""Web Push provider: RFC 8030 delivery, RFC 8291 aes128gcm encryption, RFC 8292 VAPID.

A web device's registration_id IS its push subscription, as the browser gives it:
`JSON.stringify(subscription)` (PushSubscription.toJSON()), i.e.
`{"endpoint": "https://...", "keys": {"p256dh": "<base64url>", "auth": "<base64url>"}}`.
The same JSON base64url-encoded is accepted too, for places where braces and quotes are awkward.
Why: the subscription is the only thing that reaches a browser and it has no shorter stable
name, so carrying it verbatim asks nothing of the web app (it posts what the browser handed it)
and needs no second table; a browser that re-subscribes is a new device, and the old
subscription dies with 404/410, which invalidates it.

Each message is encrypted (http_ece, a fresh ECDH key per message) to the JSON
`{"title", "body", "data": extras, "msg_id", "stage", "idempotency_key"}` and POSTed to the
endpoint with `TTL` (always), `Content-Encoding: aes128gcm`, `Urgency` (optional), `Topic`
(per push, so an undelivered earlier stage is replaced by the newer one) and a VAPID
`Authorization: vapid t=<jwt>, k=<public key>` (py_vapid), cached per push-service origin.
"""

import asyncio
import binascii
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import http_ece
from cryptography.hazmat.primitives.asymmetric import ec

from activities.providers.base import OutboundMessage, SendOutcome
from activities.providers.retry import RetryBudget, parse_retry_after
from relance.credentials import VapidCredentials, b64url_decode, b64url_encode

log = logging.getLogger(__name__)

FOUR_WEEKS = 28 * 24 * 3600
# A push service must accept 4096-byte bodies: minus the 86-byte aes128gcm header (salt, record
# size, sender key), the padding delimiter and the 16-byte tag (RFC 8291 section 4).
MAX_PLAINTEXT = 4096 - 86 - 1 - 16
VAPID_LIFETIME = 12 * 3600  # RFC 8292 allows at most 24 h; renewed an hour before it ends.
Urgency = Literal["very-low", "low", "normal", "high"]
WEBPUSH_RETRY = RetryBudget(attempts=5, total_wait=30.0, base_delay=0.5, max_delay=30.0)


class InvalidSubscription(ValueError):
    """The registration_id is not a usable push subscription."""


@dataclass(frozen=True)
class Subscription:
    endpoint: str
    origin: str
    p256dh: ec.EllipticCurvePublicKey
    auth: bytes


def parse_subscription(registration_id: str, require_https: bool = True) -> Subscription:
    """Read a subscription from its JSON (or base64url JSON); raise InvalidSubscription."""
    schemes = ("https",) if require_https else ("https", "http")
    try:
        text = registration_id.strip()
        raw = json.loads(text if text.startswith("{") else b64url_decode(text))
        url, keys = urlsplit(raw["endpoint"]), raw["keys"]
        p256dh = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b64url_decode(keys["p256dh"])
        )
        auth = b64url_decode(keys["auth"])
        origin = f"{url.scheme}://{url.hostname}" + (f":{url.port}" if url.port else "")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise InvalidSubscription(
            'expected a PushSubscription JSON {"endpoint", "keys": {"p256dh", "auth"}}'
        ) from exc
    # A push service is a plain host: no credentials or IP-v6 literals in its URL.
    if url.scheme not in schemes or not url.hostname or url.username or ":" in url.hostname:
        raise InvalidSubscription(f"endpoint must be an {' or '.join(schemes)} URL of a host")
    if len(auth) != 16:
        raise InvalidSubscription("keys.auth must be 16 bytes")
    return Subscription(raw["endpoint"], origin, p256dh, auth)


@dataclass(frozen=True)
class _Transient:
    error: str
    delay: float | None  # the push service's Retry-After, else backoff
    counts: bool = True  # False when we did not even try (the origin asked us to slow down)


def _encrypt(sub: Subscription, plaintext: bytes) -> bytes:
    """RFC 8291: aes128gcm to the subscription's keys, from a key pair made for this message."""
    return http_ece.encrypt(
        plaintext,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=sub.p256dh,
        auth_secret=sub.auth,
        version="aes128gcm",
    )


class WebPushProvider:
    name = "webpush"

    def __init__(
        self,
        credentials: VapidCredentials,
        *,
        max_in_flight: int = 50,
        retry: RetryBudget = WEBPUSH_RETRY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        timeout: float = 30.0,
        default_ttl: int = FOUR_WEEKS,
        urgency: Urgency | None = None,
        topic_per_push: bool = True,
        require_https: bool = True,
    ) -> None:
        self._credentials = credentials
        self._signer = credentials.signer()
        self._retry, self._sleep, self._timeout = retry, sleep, timeout
        self._default_ttl, self._urgency, self._topic_per_push = (
            default_ttl,
            urgency,
            topic_per_push,
        )
        self._require_https = require_https
        self._max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._session: aiohttp.ClientSession | None = None
        self._vapid: dict[str, tuple[str, float]] = {}  # origin -> (Authorization, renew at)
        self._not_before: dict[str, float] = {}  # origin -> loop time its Retry-After ends

    async def send(self, messages: list[OutboundMessage]) -> list[SendOutcome]:
        if self._session is None:  # created inside the running loop, then kept
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_in_flight, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return list(await asyncio.gather(*(self._send_one(m) for m in messages)))

    async def already_received(self, keys: list[str]) -> set[str] | None:
        return None  # a push service cannot tell

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send_one(self, message: OutboundMessage) -> SendOutcome:
        # Raising would lose the outcomes of messages already sent in this batch, and the
        # batch's retry would send them twice: a surprise becomes this message's failure.
        try:
            return await self._deliver(message)
        except Exception as exc:
            log.exception("web push: unexpected failure for msg %s", message.msg_id)
            return SendOutcome(
                registration_id=message.registration_id,
                ok=False,
                error=f"web push provider failed: {type(exc).__name__}",
            )

    async def _deliver(self, message: OutboundMessage) -> SendOutcome:
        rid = message.registration_id
        try:
            sub = parse_subscription(rid, self._require_https)
        except InvalidSubscription as exc:
            return SendOutcome(
                registration_id=rid,
                ok=False,
                token_invalid=True,
                error=f"invalid subscription: {exc}",
            )
        plaintext = self._payload(message)
        if len(plaintext) > MAX_PLAINTEXT:
            return SendOutcome(
                registration_id=rid,
                ok=False,
                error=f"payload is {len(plaintext)} bytes, Web Push allows {MAX_PLAINTEXT}: "
                "shorten the title, alert or extras",
            )
        # Encrypted once, on the first attempt, inside a slot: CPU work interleaves with I/O.
        body = functools.cache(lambda: _encrypt(sub, plaintext))
        headers = self._headers(message)
        tries, waited = 0, 0.0
        while True:
            answer = await self._attempt(sub, body, headers, rid)
            if isinstance(answer, SendOutcome):
                return answer
            tries += answer.counts
            delay = self._retry.wait(tries, answer.delay)
            if self._retry.exhausted(tries, waited, delay):
                return SendOutcome(
                    registration_id=rid, ok=False, error=answer.error, retry_after=delay
                )
            await self._sleep(delay)
            waited += delay

    async def _attempt(
        self, sub: Subscription, body: Callable[[], bytes], headers: dict[str, str], rid: str
    ) -> SendOutcome | _Transient:
        assert self._session is not None
        async with self._slots:
            gate = self._not_before.get(sub.origin, 0.0) - asyncio.get_running_loop().time()
            if gate > 0:
                return _Transient("push service asked to slow down (Retry-After)", gate, False)
            headers = {**headers, "Authorization": self._authorization(sub.origin)}
            try:
                async with self._session.post(sub.endpoint, data=body(), headers=headers) as resp:
                    reason = (await resp.read())[:200].decode(errors="replace")
                    status = resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                return _Transient(f"push service unreachable: {type(exc).__name__}", None)
        return self._classify(rid, sub.origin, status, retry_after, reason)

    def _classify(
        self, rid: str, origin: str, status: int, retry_after: float | None, reason: str
    ) -> SendOutcome | _Transient:
        answered = f"push service answered {status}" + (f": {reason}" if reason else "")
        if 200 <= status < 300:
            return SendOutcome(registration_id=rid, ok=True)
        if status in (404, 410):
            return SendOutcome(registration_id=rid, ok=False, token_invalid=True, error=answered)
        if status in (401, 403):
            return SendOutcome(
                registration_id=rid,
                ok=False,
                config_error=True,
                error=f"{answered} — the push service rejected the VAPID authorization: check "
                "that the app's VAPID key is the applicationServerKey the browser subscribed "
                "with, and its subject",
            )
        if status == 429 or status >= 500:
            if retry_after is not None:  # hold back every send to this push service meanwhile
                until = asyncio.get_running_loop().time() + retry_after
                self._not_before[origin] = max(self._not_before.get(origin, 0.0), until)
            return _Transient(answered, retry_after)
        return SendOutcome(registration_id=rid, ok=False, error=answered)

    def _payload(self, message: OutboundMessage) -> bytes:
        # A message-only push carries no title or body: the service worker gets the `message`
        # and shows nothing unless it chooses to.
        content: dict[str, Any] = (
            {"title": message.title, "body": message.alert, "data": message.extras}
            if message.notify
            else {}
        )
        if message.message is not None:
            content["message"] = message.message
        content |= {
            "msg_id": message.msg_id,
            "stage": message.stage,
            "idempotency_key": message.idempotency_key,
        }
        return json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()

    def _headers(self, message: OutboundMessage) -> dict[str, str]:
        ttl = message.time_to_live if message.time_to_live is not None else self._default_ttl
        headers = {
            "TTL": str(max(0, ttl)),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        if self._urgency:
            headers["Urgency"] = self._urgency
        if self._topic_per_push:  # at most 32 characters of the URL-safe base64 alphabet
            headers["Topic"] = b64url_encode(hashlib.sha256(message.msg_id.encode()).digest())[:32]
        return headers

    def _authorization(self, origin: str) -> str:
        """The VAPID header for a push service, signed once and reused until near its expiry."""
        now = time.time()
        cached = self._vapid.get(origin)
        if cached and cached[1] > now:
            return cached[0]
        claims = {"aud": origin, "exp": int(now) + VAPID_LIFETIME, "sub": self._credentials.subject}
        header = self._signer.sign(claims)["Authorization"]
        self._vapid[origin] = (header, now + VAPID_LIFETIME - 3600)
        return header
