"""FCM HTTP v1 provider: one POST per device to projects/{id}/messages:send, authorised by an
OAuth2 access token that the app's service-account key buys through the JWT-bearer grant."""

import asyncio
import json
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization

from activities.providers.base import OutboundMessage, SendOutcome, message_data
from activities.providers.deadlines import Deadlines
from activities.providers.http1 import Http1Origin
from activities.providers.pool import SendPool
from activities.providers.retry import RetryBudget, parse_retry_after
from relance.credentials import FcmCredentials

FCM_URL = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ASSERTION_LIFETIME = 3600  # Google refuses assertions that live longer than an hour
TOKEN_MARGIN = 300.0  # drop a cached access token this long before it expires
TRANSIENT_STATUSES = {500, 502, 503, 504}
FCM_RETRY = RetryBudget(attempts=6, total_wait=30.0, base_delay=0.5, max_delay=16.0)
# FCM asks senders to wait at least a minute after QUOTA_EXCEEDED.
QUOTA_DELAY = 60.0


@dataclass(frozen=True)
class Verdict:
    """What one answer from FCM (or from Google's token endpoint) means for the message."""

    kind: str  # sent, dead_token, config, rejected, transient, quota, reauth
    error: str | None = None
    retry_after: float | None = None  # the server's Retry-After, when it sent one


class _NoToken(Exception):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.error)
        self.verdict = verdict


def fcm_message(message: OutboundMessage, collapse_key: str | None = None) -> dict[str, Any]:
    """The v1 `message` object for one device: a notification, or for a message-only push a
    data message (no `notification`, so the app receives it without any system display)."""
    # FCM data is a string-to-string map: non-strings travel as JSON.
    fields = {**message.extras, **message_data(message)}
    data = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in fields.items()}
    data |= {"relance_msg_id": message.msg_id, "relance_stage": str(message.stage)}
    android: dict[str, Any] = {}
    body: dict[str, Any] = {"token": message.registration_id}
    if message.notify:
        notification = {"body": message.alert}
        if message.title is not None:
            notification["title"] = message.title
        body["notification"] = notification
        # The same tag on a repeated send replaces the notification instead of showing it twice.
        android["notification"] = {"tag": message.idempotency_key}
    if message.time_to_live is not None:
        android["ttl"] = f"{message.time_to_live}s"
    if collapse_key is not None:
        android["collapse_key"] = collapse_key
    body |= {"data": data, "android": android}
    if message.platform == "web" and message.time_to_live is not None:
        body["webpush"] = {"headers": {"TTL": str(message.time_to_live)}}
    return body


def classify(status: int, body: bytes, retry_after: str | None = None) -> Verdict:
    """Map an FCM v1 answer to a verdict, on error.details[].errorCode first, then the status."""
    if status == 200:
        return Verdict("sent")
    error = _error_object(body)
    details = [d for d in error.get("details", []) if isinstance(d, dict)]
    fcm_code = next((d.get("errorCode") for d in details if d.get("@type") == FCM_ERROR), None)
    code = fcm_code or error.get("status") or str(status)
    text = f"FCM {code} ({status}): {error.get('message') or 'no error body'}"
    wait = parse_retry_after(retry_after)
    if code in {"UNREGISTERED", "SENDER_ID_MISMATCH"} or (
        code == "INVALID_ARGUMENT" and _token_at_fault(error, details)
    ):
        return Verdict("dead_token", text)
    if code in {"QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED"} or status == 429:
        return Verdict("quota", text, wait)
    if code in {"UNAVAILABLE", "INTERNAL"} or status in TRANSIENT_STATUSES:
        return Verdict("transient", text, wait)
    if code == "THIRD_PARTY_AUTH_ERROR":
        return Verdict(
            "config",
            f"{text}; FCM could not authenticate to APNs or Web Push for this app: check the APNs "
            "key or certificate (or the web push credentials) in the Firebase console",
        )
    if status == 401:
        return Verdict("reauth", text)
    if status in {403, 404}:
        return Verdict(
            "config",
            f"{text}; check the project id and that the service account may send with FCM "
            "(role Firebase Cloud Messaging API Admin, API enabled)",
        )
    return Verdict("rejected", text)


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _token_at_fault(error: dict[str, Any], details: list[dict[str, Any]]) -> bool:
    """INVALID_ARGUMENT also means a bad message; the token is dead only when it is named."""
    for detail in details:
        if detail.get("@type") == BAD_REQUEST:
            fields = {v.get("field") for v in detail.get("fieldViolations", [])}
            if "message.token" in fields:
                return True
    return "registration token" in str(error.get("message", "")).lower()


class _AccessTokens:
    """One cached OAuth2 access token per service account, refreshed shortly before expiry."""

    def __init__(
        self,
        credentials: FcmCredentials,
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float],
        timeout: float = 30.0,
    ) -> None:
        self._credentials = credentials
        self._session = session
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)  # an hourly request: a timer is fine
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._key: Any = None

    async def get(self, stale: str | None = None) -> str:
        """The current token; `stale` is one FCM refused, replaced unless already replaced."""
        token = self._token
        if token is not None and token != stale and self._clock() < self._expires_at:
            return token
        async with self._lock:
            if stale is not None and stale == self._token:
                self._token = None
            if self._token is None or self._clock() >= self._expires_at:
                self._token, self._expires_at = await self._fetch()
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        creds = self._credentials
        form = {"grant_type": JWT_BEARER, "assertion": self._assertion()}
        try:
            post = self._session().post(creds.token_uri, data=form, timeout=self._timeout)
            async with post as response:
                status, body = response.status, await response.read()
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"token endpoint unreachable: {type(exc).__name__}"
            raise _NoToken(Verdict("transient", error)) from None
        if status == 429 or status >= 500:
            error = f"token endpoint answered {status}"
            raise _NoToken(Verdict("transient", error, parse_retry_after(retry_after)))
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        if status != 200 or not answer.get("access_token"):
            reason = f"{answer.get('error', status)}: {answer.get('error_description', '')}"
            raise _NoToken(
                Verdict(
                    "config",
                    f"Google refused the service account {creds.client_email} ({reason}); "
                    "upload a current key of that service account",
                )
            )
        lifetime = float(answer.get("expires_in", 3600))
        return answer["access_token"], self._clock() + lifetime - min(TOKEN_MARGIN, lifetime / 2)

    def _assertion(self) -> str:
        creds = self._credentials
        if self._key is None:
            try:
                pem = creds.private_key.get_secret_value().encode()
                self._key = serialization.load_pem_private_key(pem, password=None)
            except (ValueError, TypeError):
                raise _NoToken(
                    Verdict(
                        "config",
                        f"the private_key of service account {creds.client_email} is not a PEM "
                        "private key: upload the service-account JSON file as Firebase gave it",
                    )
                ) from None
        now = int(self._clock())
        claims = {
            "iss": creds.client_email,
            "scope": SCOPE,
            "aud": creds.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": creds.private_key_id} if creds.private_key_id else None
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)


class FcmProvider:
    name = "fcm"

    def __init__(
        self,
        credentials: FcmCredentials,
        base_url: str = FCM_URL,
        *,
        max_in_flight: int = 50,
        budget: RetryBudget = FCM_RETRY,
        quota_delay: float = QUOTA_DELAY,
        collapse_resends: bool = False,
        timeout: float = 30.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._credentials = credentials
        send_url = urlsplit(
            f"{base_url.rstrip('/')}/v1/projects/{credentials.project_id}/messages:send"
        )
        # The sends go through a plain HTTP/1.1 client (http1.py: a third of aiohttp's CPU per
        # request); the hourly token request stays with aiohttp.
        self._origin = Http1Origin(f"{send_url.scheme}://{send_url.netloc}", ssl_context)
        self._send_path = send_url.path
        self._head: tuple[str, bytes] | None = None  # (access token, request head)
        self._pool: SendPool[OutboundMessage, SendOutcome] = SendPool(max_in_flight, self._deliver)
        self._budget, self._quota_delay = budget, quota_delay
        # An offline device then gets only the latest stage of a push.
        self._collapse_resends = collapse_resends
        # A send's limit (connecting included) is kept by a watchdog, not a timer per request
        # (deadlines.py).
        self._deadlines = Deadlines(timeout)
        self._ssl = ssl_context
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._http: aiohttp.ClientSession | None = None
        self._tokens = _AccessTokens(credentials, self._session, clock, timeout)

    def _session(self) -> aiohttp.ClientSession:
        # For the token: made on first use, inside the running event loop, then kept.
        if self._http is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
            self._http = aiohttp.ClientSession(connector=connector)
        return self._http

    async def send(self, messages: list[OutboundMessage]) -> list[SendOutcome]:
        if not messages:
            return []
        try:
            await self._tokens.get()
        except _NoToken as exc:
            if exc.verdict.kind == "config":  # the key is wrong: no use trying each device
                return [_outcome(m, exc.verdict) for m in messages]
        return await self._pool.run(messages)

    async def _deliver(self, message: OutboundMessage) -> SendOutcome:
        collapse = message.msg_id if self._collapse_resends else None
        body = json.dumps({"message": fcm_message(message, collapse)}).encode()
        tries, waited, stale, reauthed = 0, 0.0, None, False
        while True:
            verdict, used = await self._attempt(body, stale)
            stale = None
            if verdict.kind == "reauth":
                if not reauthed:  # the token expired early or was revoked: one fresh token
                    reauthed, stale = True, used
                    continue
                verdict = Verdict(
                    "config",
                    f"{verdict.error}; FCM refuses fresh access tokens of "
                    f"{self._credentials.client_email}: check the service account's roles",
                )
            if verdict.kind not in {"transient", "quota"}:
                return _outcome(message, verdict)
            tries += 1
            delay = self._delay(verdict, tries)
            if self._budget.exhausted(tries, waited, delay):
                return SendOutcome(
                    registration_id=message.registration_id,
                    ok=False,
                    error=f"{verdict.error}; not sent, retry in {delay:.1f} s",
                    retry_after=delay,
                )
            await self._sleep(delay)
            waited += delay

    async def _attempt(self, body: bytes, stale: str | None) -> tuple[Verdict, str | None]:
        try:
            token = await self._tokens.get(stale)
        except _NoToken as exc:
            return exc.verdict, None
        if self._head is None or self._head[0] != token:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            try:  # a project id or a token with a line break in it (never its value in the error)
                self._head = (token, self._origin.request_head(self._send_path, headers))
            except ValueError as exc:
                return Verdict("config", f"FCM request not sent: {exc}"), token
        head = self._head[1]
        try:  # at most max_in_flight at once: the pool has that many senders
            async with self._deadlines.guard():
                answer = await self._origin.post(head, body)
        except OSError as exc:  # refused, cut, TLS, or past the limit (TimeoutError)
            return Verdict("transient", f"FCM unreachable: {type(exc).__name__}"), token
        return classify(answer.status, answer.body, answer.retry_after), token

    def _delay(self, verdict: Verdict, tries: int) -> float:
        if verdict.kind == "quota":
            # Up to 10% more, so the messages handed back together do not return together.
            floor = max(self._quota_delay, verdict.retry_after or 0.0)
            return floor * (1 + 0.1 * self._rng.random())
        return self._budget.wait(tries, verdict.retry_after, self._rng)

    async def already_received(self, keys: list[str]) -> set[str] | None:
        return None  # FCM cannot tell; a repeat carries the same notification tag

    async def aclose(self) -> None:
        await self._pool.aclose()
        await self._deadlines.aclose()
        await self._origin.aclose()
        if self._http is not None:
            await self._http.close()
            self._http = None


def _outcome(message: OutboundMessage, verdict: Verdict) -> SendOutcome:
    return SendOutcome(
        registration_id=message.registration_id,
        ok=verdict.kind == "sent",
        error=verdict.error,
        token_invalid=verdict.kind == "dead_token",
        config_error=verdict.kind == "config",
    )
