"""APNs provider: alert notifications to iOS devices over one HTTP/2 connection to Apple, with a
reused ES256 provider token, Apple's error reasons mapped to outcomes, and bounded retries."""

import asyncio
import dataclasses
import hashlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from activities.providers.apns_http2 import (
    ApnsLost,
    ApnsUnprocessed,
    Http2Connection,
    RequestHeader,
    unindexed,
)
from activities.providers.apns_token import ProviderToken, UnusableKey
from activities.providers.base import OutboundMessage, SendOutcome, message_data
from activities.providers.retry import RetryBudget, parse_retry_after
from relance.credentials import ApnsCredentials

log = logging.getLogger(__name__)

APNS_URLS = {
    "production": "https://api.push.apple.com",
    "sandbox": "https://api.sandbox.push.apple.com",
}
MAX_PAYLOAD = 4096
APNS_RETRY = RetryBudget(attempts=5, total_wait=60.0, base_delay=1.0, max_delay=30.0)
# apns-id is derived from the idempotency key, so a re-send carries the same id.
APNS_ID_NAMESPACE = uuid.UUID("6993daf9-8968-4071-b326-3ef690ac498d")
DEAD_TOKEN = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
_KEY = "check team_id, key_id and that private_key is that key's .p8 file"
CONFIG_ERRORS = {
    "InvalidProviderToken": f"APNs rejected the provider token (InvalidProviderToken): {_KEY}",
    "MissingProviderToken": f"APNs saw no provider token (MissingProviderToken): {_KEY}",
    "UnrelatedKeyIdInToken": f"APNs does not know this key for the team: {_KEY}",
    "BadEnvironmentKeyInToken": "the key is not enabled for the {environment} environment",
    "ExpiredProviderToken": "APNs calls a freshly signed provider token expired: check the clock",
    "Forbidden": "APNs refused the credentials (Forbidden): check the key is enabled for APNs",
    "TopicDisallowed": "APNs refuses topic {topic!r} (TopicDisallowed): check the bundle id",
    "BadTopic": "APNs refuses topic {topic!r} (BadTopic): check the bundle id",
    "MissingTopic": "no topic was sent (MissingTopic): set the app's bundle id as topic",
}


class ApnsConfigProblem(Exception):
    """Something a human must fix to reach APNs: TLS trust, an endpoint that is not APNs."""


@dataclass
class _Batch:
    topic: str
    config_error: str | None = None  # once set, the rest of the batch is not sent

    def stop(self, error: str) -> None:
        if self.config_error is None:
            self.config_error = error
            log.warning("APNs configuration problem for %s: %s", self.topic, error)


class ApnsProvider:
    """Sends alert notifications through APNs, one HTTP/2 stream per device."""

    name = "apns"

    def __init__(
        self,
        credentials: ApnsCredentials,
        base_url: str | None = None,
        *,
        verify: ssl.SSLContext | str | bool = True,
        max_in_flight: int = 50,
        max_attempts: int = APNS_RETRY.attempts,
        max_retry_wait: float = APNS_RETRY.total_wait,
        backoff_base: float = APNS_RETRY.base_delay,
        timeout: float = 30.0,
        token_lifetime: float = 50 * 60,
        collapse_stages: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`verify`: True, False, a CA file path or an SSLContext. `collapse_stages`: the stages
        of one push share an apns-collapse-id, so a resend replaces the unread notification."""
        self.credentials = credentials
        url = urlsplit(base_url or APNS_URLS[credentials.environment])
        if not url.hostname:
            raise ValueError(f"APNs base_url {base_url!r}: expected https://host[:port]")
        self._host, self._port, self._authority = url.hostname, url.port or 443, url.netloc
        self._tls = _tls_context(verify)
        self._token = ProviderToken(credentials, clock, token_lifetime)
        self._in_flight = asyncio.Semaphore(max_in_flight)
        # Plain numbers rather than a RetryBudget, so the worker's JSON provider options set them.
        self._retry = dataclasses.replace(
            APNS_RETRY, attempts=max_attempts, total_wait=max_retry_wait, base_delay=backoff_base
        )
        self._timeout = timeout
        self._collapse_stages = collapse_stages
        self._sleep, self._clock = sleep, clock
        self._connection: Http2Connection | None = None
        self._connecting = asyncio.Lock()

    async def send(self, messages: list[OutboundMessage]) -> list[SendOutcome]:
        batch = _Batch(self.credentials.topic)
        outcomes = await asyncio.gather(*(self._deliver(m, batch) for m in messages))
        return _wrong_topic(list(outcomes), self.credentials.topic)

    async def already_received(self, keys: list[str]) -> set[str] | None:
        return None  # APNs cannot tell; a re-send carries the same apns-id

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()

    async def _deliver(self, message: OutboundMessage, batch: _Batch) -> SendOutcome:
        rid = message.registration_id
        body = _payload(message)
        if len(body) > MAX_PAYLOAD:
            error = f"payload is {len(body)} bytes; APNs takes at most {MAX_PAYLOAD}"
            return SendOutcome(registration_id=rid, ok=False, error=error)
        tries, waited, renewed = 0, 0.0, False
        while batch.config_error is None:
            try:
                provider_token = self._token.current()
                status, reason, retry_after = await self._post(message, body, provider_token)
            except (ApnsConfigProblem, UnusableKey) as problem:
                batch.stop(str(problem))
                break
            except ApnsLost as lost:
                return SendOutcome(registration_id=rid, ok=False, error=str(lost))
            if status == 200:
                return SendOutcome(registration_id=rid, ok=True)
            if reason == "ExpiredProviderToken" and not renewed:
                renewed = True
                self._token.renew(provider_token)
                continue
            if status in (0, 429) or status >= 500:
                tries += 1
                delay = self._retry.wait(tries, retry_after)
                if self._retry.exhausted(tries, waited, delay):
                    error = f"APNs {status or 'unreachable'} {reason}; {tries} tries"
                    return SendOutcome(
                        registration_id=rid, ok=False, retry_after=delay, error=error
                    )
                log.debug("APNs %s %s, retrying in %.2fs", status, reason, delay)
                await self._sleep(delay)
                waited += delay
                continue
            outcome = self._rejection(rid, status, reason)
            if not outcome.config_error:
                return outcome
            batch.stop(outcome.error or reason)
        return SendOutcome(
            registration_id=rid, ok=False, config_error=True, error=batch.config_error
        )

    async def _post(
        self, message: OutboundMessage, body: bytes, provider_token: str
    ) -> tuple[int, str, float | None]:
        """One try: (status, Apple's reason, Retry-After seconds); status 0 when never processed."""
        path = "/3/device/" + quote(message.registration_id, safe="")
        headers = self._headers(message, provider_token)
        try:
            async with self._in_flight:
                connection = await self._connect()
                async with asyncio.timeout(self._timeout):  # no extra task, unlike wait_for
                    status, answer, reply = await connection.request(path, headers, body)
        except ApnsUnprocessed as exc:
            return 0, str(exc), None
        except TimeoutError:
            raise ApnsLost(f"no answer from APNs in {self._timeout:g}s; it may have it") from None
        if status == 200:
            return 200, "", None
        return (
            status,
            _reason(status, reply),
            parse_retry_after(answer.get("retry-after"), self._clock()),
        )

    def _headers(self, message: OutboundMessage, provider_token: str) -> list[RequestHeader]:
        headers: list[RequestHeader] = [
            ("authorization", f"bearer {provider_token}"),
            ("apns-topic", self.credentials.topic),
            # Apple requires priority 5 for background notifications.
            ("apns-push-type", "alert" if message.notify else "background"),
            ("apns-priority", "10" if message.notify else "5"),
            unindexed("apns-id", str(uuid.uuid5(APNS_ID_NAMESPACE, message.idempotency_key))),
        ]
        if message.time_to_live is not None:
            ttl = message.time_to_live
            expiration = str(int(self._clock()) + ttl if ttl else 0)
            headers.append(unindexed("apns-expiration", expiration))
        if self._collapse_stages:
            headers.append(("apns-collapse-id", _collapse_id(message.msg_id)))
        return headers

    def _rejection(self, rid: str, status: int, reason: str) -> SendOutcome:
        env = self.credentials.environment
        if reason == "BadDeviceToken":
            other = "sandbox" if env == "production" else "production"
            error = f"BadDeviceToken ({env}): a {other} token sent to {env} also answers this"
            return SendOutcome(registration_id=rid, ok=False, token_invalid=True, error=error)
        if reason in DEAD_TOKEN:
            return SendOutcome(registration_id=rid, ok=False, token_invalid=True, error=reason)
        if reason in CONFIG_ERRORS:
            error = CONFIG_ERRORS[reason].format(topic=self.credentials.topic, environment=env)
            return SendOutcome(registration_id=rid, ok=False, config_error=True, error=error)
        return SendOutcome(registration_id=rid, ok=False, error=f"APNs {status} {reason}")

    async def _connect(self) -> Http2Connection:
        """The one long-lived connection, made again when APNs closed it."""
        if self._connection is not None and self._connection.usable:
            return self._connection
        async with self._connecting:
            if self._connection is None or not self._connection.usable:
                if self._connection is not None:
                    self._connection.close_when_idle()
                self._connection = await self._open()
        return self._connection

    async def _open(self) -> Http2Connection:
        loop = asyncio.get_running_loop()
        opening = loop.create_connection(
            lambda: Http2Connection(self._authority), self._host, self._port, ssl=self._tls
        )
        try:
            transport, connection = await asyncio.wait_for(opening, self._timeout)
        except ssl.SSLCertVerificationError as exc:
            raise ApnsConfigProblem(
                f"cannot verify {self._host}'s TLS certificate ({exc.verify_message}): "
                "check the provider's CA / verify setting"
            ) from None
        except (OSError, TimeoutError) as exc:
            raise ApnsUnprocessed(f"cannot connect to {self._authority}: {exc!r}") from None
        if transport.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            transport.close()
            raise ApnsConfigProblem(f"{self._authority} does not speak HTTP/2: is it APNs?")
        try:
            await asyncio.wait_for(connection.settled, self._timeout)
        except TimeoutError:
            connection.close()
            raise ApnsUnprocessed(f"{self._authority} sent no HTTP/2 settings") from None
        return connection


def _tls_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        context = verify
    elif isinstance(verify, str):
        context = ssl.create_default_context(cafile=verify)
    else:
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context


def _payload(message: OutboundMessage) -> bytes:
    """An alert; for a message-only push a background notification: `content-available` and
    no alert, the message's fields as custom keys."""
    if not message.notify:
        payload = {**message_data(message), "aps": {"content-available": 1}}
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    alert = {"body": message.alert} if message.title is None else {
        "title": message.title, "body": message.alert
    }  # fmt: skip
    payload = {**message.extras, **message_data(message), "aps": {"alert": alert}}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _wrong_topic(outcomes: list[SendOutcome], topic: str) -> list[SendOutcome]:
    """Every device of a batch "not for this topic" means the topic is wrong, not the tokens:
    keep them all rather than invalidate the whole audience over one setting."""
    if len(outcomes) < 2 or any(o.error != "DeviceTokenNotForTopic" for o in outcomes):
        return outcomes
    error = f"every device answered DeviceTokenNotForTopic: is {topic!r} the app's bundle id?"
    return [
        SendOutcome(registration_id=o.registration_id, ok=False, config_error=True, error=error)
        for o in outcomes
    ]


def _collapse_id(msg_id: str) -> str:
    """apns-collapse-id holds up to 64 bytes; a longer or unusual msg_id becomes its SHA-256."""
    if len(msg_id) <= 64 and msg_id.isascii() and msg_id.isprintable():
        return msg_id
    return hashlib.sha256(msg_id.encode()).hexdigest()


def _reason(status: int, reply: bytes) -> str:
    try:
        return str(json.loads(reply)["reason"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"
