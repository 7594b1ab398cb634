"""APNs provider: alert notifications to iOS devices over one HTTP/2 connection to Apple, with a
reused ES256 provider token, Apple's error reasons mapped to outcomes, and bounded retries."""

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import jwt
from hpack import Encoder, NeverIndexedHeaderTuple

from activities.providers.base import OutboundMessage, SendOutcome
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


class ApnsUnprocessed(Exception):
    """APNs did not process the request (no connection, refused stream, GOAWAY): resend it."""


class ApnsLost(Exception):
    """The connection ended after the request went out: APNs may or may not have taken it."""


class ApnsConfigProblem(Exception):
    """Something a human must fix: the key, TLS trust, an endpoint that is not APNs."""


class ProviderToken:
    """The ES256 provider JWT (kid; iss, iat), reused: Apple wants a new one every 20-60 min."""

    def __init__(self, credentials: ApnsCredentials, clock: Callable[[], float], lifetime: float):
        if not 20 * 60 <= lifetime < 60 * 60:
            raise ValueError("token_lifetime must be at least 20 and under 60 minutes")
        self._credentials, self._clock, self._lifetime = credentials, clock, lifetime
        self._jwt: str | None = None
        self._issued_at = 0.0

    def current(self) -> str:
        now = self._clock()
        if self._jwt is None or now - self._issued_at >= self._lifetime:
            self._jwt, self._issued_at = self._sign(int(now)), now
        return self._jwt

    def renew(self, rejected: str) -> None:
        """APNs called `rejected` expired: sign a new one, once for all requests that carried it."""
        if rejected == self._jwt:
            self._jwt = None

    def _sign(self, iat: int) -> str:
        c = self._credentials
        try:
            return jwt.encode(
                {"iss": c.team_id, "iat": iat},
                c.private_key.get_secret_value(),
                algorithm="ES256",
                headers={"kid": c.key_id},
            )
        except (ValueError, TypeError, jwt.PyJWTError):
            raise ApnsConfigProblem(
                "private_key cannot sign ES256 tokens: upload the .p8 key"
            ) from None


@dataclass
class _Stream:
    response: asyncio.Future
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    sent: bool = False


class Http2Connection(asyncio.Protocol):
    """One TLS connection to APNs carrying many requests at once as HTTP/2 streams (h2)."""

    def __init__(self, authority: str) -> None:
        # The provider builds well-formed lowercase headers itself, and the stable ones (the JWT
        # included: long, high-entropy, sent to Apple only) stay in the HPACK table; checking
        # and re-encoding them on every request was most of the client's CPU.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            normalize_outbound_headers=False,
            validate_outbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config)
        self._h2.encoder = _PlainEncoder()
        self._authority = authority
        self._streams: dict[int, _Stream] = {}
        self._progress = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._flush_pending = False
        self.settled = asyncio.get_running_loop().create_future()  # set by the server's SETTINGS
        self.usable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed, self.usable = True, False
        for stream in self._streams.values():
            lost = ApnsLost("the connection to APNs closed before it answered")
            _fail(stream, lost if stream.sent else ApnsUnprocessed("the connection closed"))
        self._streams.clear()
        if not self.settled.done():
            self.settled.set_result(None)
        self._wake()

    def close(self) -> None:
        if not self._closed and self._transport is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # already saw a GOAWAY
                self._h2.close_connection()
            self._flush()
            self._transport.close()

    def close_when_idle(self) -> None:
        """Retired: close now if no request is waiting, else once the last one is answered."""
        self.usable = False
        if not self._streams:
            self.close()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:  # h2 queued a GOAWAY saying why
            self.usable = False
            self._flush()
            if self._transport is not None:
                self._transport.close()  # connection_lost fails the open streams
            return
        for event in events:
            self._handle(event)
        self._flush()
        if not self.usable and not self._streams and self._transport is not None:
            self._transport.close()
        self._wake()

    def _handle(self, event: h2.events.Event) -> None:
        stream = self._streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.RemoteSettingsChanged) and not self.settled.done():
            self.settled.set_result(None)
        elif isinstance(event, h2.events.ResponseReceived) and stream:
            stream.headers = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream:
                stream.body.extend(event.data)
        elif isinstance(event, h2.events.StreamEnded) and stream:
            del self._streams[event.stream_id]
            status = int(stream.headers.get(":status", 0))
            stream.response.set_result((status, stream.headers, bytes(stream.body)))
        elif isinstance(event, h2.events.StreamReset) and stream:
            del self._streams[event.stream_id]
            refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            if refused or not stream.sent:
                _fail(stream, ApnsUnprocessed("APNs refused the stream"))
            else:
                _fail(stream, ApnsLost(f"APNs reset the stream ({event.error_code!r})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.usable = False  # GOAWAY: streams above last_stream_id were never processed
            last = event.last_stream_id or 0
            for stream_id in [s for s in self._streams if s > last]:
                _fail(self._streams.pop(stream_id), ApnsUnprocessed("APNs is closing (GOAWAY)"))

    async def request(
        self, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        h2c = self._h2
        await self._until(lambda: len(self._streams) < h2c.remote_settings.max_concurrent_streams)
        if not self.usable:
            raise ApnsUnprocessed("the connection to APNs is closing")
        try:
            stream_id = h2c.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.usable = False
            raise ApnsUnprocessed("stream ids used up; reconnecting") from None
        pseudo = [(":method", "POST"), (":scheme", "https"), (":authority", self._authority)]
        try:
            h2c.send_headers(stream_id, [*pseudo, _unindexed(":path", path), *headers])
        except h2.exceptions.ProtocolError as exc:  # our view of the connection is off: start anew
            self.usable = False
            raise ApnsUnprocessed(f"HTTP/2 state error: {exc!r}") from None
        stream = _Stream(asyncio.get_running_loop().create_future())
        self._streams[stream_id] = stream
        try:
            if h2c.local_flow_control_window(stream_id) < len(body):
                self._flush()
                await self._until(
                    lambda: (
                        stream.response.done()
                        or h2c.local_flow_control_window(stream_id) >= len(body)
                    )
                )
            if not stream.response.done():
                h2c.send_data(stream_id, body, end_stream=True)
                stream.sent = True
                self._flush_soon()
            return await stream.response
        except asyncio.CancelledError:  # timed out: tell APNs we stopped waiting
            if self._streams.pop(stream_id, None) is not None and not self._closed:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    h2c.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self._flush()
                self._wake()  # a stream slot came free
            raise

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            if self._closed:
                raise ApnsUnprocessed("the connection to APNs closed")
            await self._progress.wait()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _flush_soon(self) -> None:
        """Flush once this loop iteration is over, so concurrent requests share one TLS write."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


class _PlainEncoder(Encoder):
    """HPACK without Huffman coding: pure-Python Huffman costs both ends more CPU than the ~30
    bytes it saves on a request's unique values (the rest come from the HPACK table).

    A header already in the table encodes to the same bytes until the table changes, so those
    encodings are remembered: the stable headers (JWT, topic, ...) of each request then cost a
    dict lookup instead of a table search and an integer encoding."""

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        table = self.header_table
        if table.resized:  # the block must start with the size update; the indices shifted
            self._known.clear()
            return super().encode(headers, huffman=False)
        known, entries = self._known, table.dynamic_entries
        block = []
        for header in headers:
            pair = (_to_bytes(header[0]), _to_bytes(header[1]))
            encoded = known.get(pair)
            if encoded is None:
                indexable = getattr(header, "indexable", len(header) < 3 or not header[2])
                before = (len(entries), entries[0] if entries else None)
                encoded = self.add(pair, not indexable, huffman=False)
                if before == (len(entries), entries[0] if entries else None):
                    if indexable and encoded[0] & 0x80:  # an index into an unchanged table
                        known[pair] = encoded
                else:  # an entry was added (and maybe others evicted): indices moved
                    known.clear()
            block.append(encoded)
        return b"".join(block)


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _unindexed(name: str, value: str) -> tuple[str, str]:
    """A per-request header: kept out of the HPACK table so it does not evict the stable ones."""
    return NeverIndexedHeaderTuple(name, value)


def _fail(stream: _Stream, exc: Exception) -> None:
    if not stream.response.done():
        stream.response.set_exception(exc)


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
            except ApnsConfigProblem as problem:
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

    def _headers(self, message: OutboundMessage, provider_token: str) -> list[tuple[str, str]]:
        headers = [
            ("authorization", f"bearer {provider_token}"),
            ("apns-topic", self.credentials.topic),
            ("apns-push-type", "alert"),
            ("apns-priority", "10"),
            _unindexed("apns-id", str(uuid.uuid5(APNS_ID_NAMESPACE, message.idempotency_key))),
        ]
        if message.time_to_live is not None:
            ttl = message.time_to_live
            expiration = str(int(self._clock()) + ttl if ttl else 0)
            headers.append(_unindexed("apns-expiration", expiration))
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
    alert = {"body": message.alert} if message.title is None else {
        "title": message.title, "body": message.alert
    }  # fmt: skip
    payload = {**message.extras, "aps": {"alert": alert}}
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
