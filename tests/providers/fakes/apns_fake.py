"""A local APNs: HTTP/2 over TLS (h2, trustme certificate) that checks the provider JWT and the
apns-* headers as Apple does, answers with Apple's error bodies, and records what it accepted."""

import asyncio
import contextlib
import json
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h11
import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hpack import Encoder, NeverIndexedHeaderTuple

PUSH_TYPES = {"alert", "background", "location", "voip", "complication", "fileprovider", "mdm"}
UUID_FORM = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HEX_TOKEN = re.compile(r"^(?:[0-9a-f]{2}){32,}$", re.IGNORECASE)
MAX_PAYLOAD = 4096
READ_SLICE = 4096  # bytes of HTTP/2 frames the fake handles before it writes its replies


def new_p8_key() -> tuple[str, str]:
    """A fresh ES256 signing key as Apple hands it out (.p8 PEM), and its public key PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


@dataclass
class Answer:
    """A reply: `status` with Apple's `{"reason": ...}` body, and a Retry-After if given."""

    status: int
    reason: str
    retry_after: str | None = None


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]  # without HTTP/2 pseudo-headers
    body: bytes
    http_version: str
    connection: tuple[str, int]


@dataclass
class Accepted:
    token: str
    apns_id: str
    headers: dict[str, str]
    payload: Any


@dataclass
class FakeApns:
    team_id: str
    key_id: str
    public_key_pem: str
    topic: str
    environment: str = "production"
    # Apple speaks only HTTP/2; the benchmark lets HTTP/1.1 in for its aiohttp baseline.
    http2_only: bool = True
    max_concurrent_streams: int = 1000
    clock: Callable[[], float] = time.time
    # What Apple knows about devices.
    unregistered: dict[str, int] = field(default_factory=dict)  # token -> ms since the epoch
    sandbox_tokens: set[str] = field(default_factory=set)
    other_topic_tokens: set[str] = field(default_factory=set)
    # Transient answers per token, one consumed per request before the token is accepted.
    scripted: dict[str, list[Answer]] = field(default_factory=dict)
    # Tokens whose requests get no answer at all, as when APNs stalls.
    silent_tokens: set[str] = field(default_factory=set)
    unanswered: list[str] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[tuple[str, Answer]] = field(default_factory=list)
    provider_tokens: list[str] = field(default_factory=list)
    connections: set[tuple[str, int]] = field(default_factory=set)
    _verified: dict[str, dict] = field(default_factory=dict)
    _expired: set[str] = field(default_factory=set)
    _current: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    _open: set["_Connection"] = field(default_factory=set)

    def expire_provider_tokens(self) -> None:
        """Apple decides every provider JWT seen so far is stale (403 ExpiredProviderToken)."""
        self._expired.update(self.provider_tokens)

    def close_connections(self) -> None:
        """Apple closes its connections (GOAWAY on HTTP/2), as it does when idle or restarting."""
        for connection in list(self._open):
            connection.close()

    def accepted_count(self, token: str) -> int:
        return sum(1 for a in self.accepted if a.token == token)

    def answer(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
        self.connections.add(request.connection)
        headers = dict(request.headers)
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        token = request.path.removeprefix("/3/device/")
        if token in self.silent_tokens:
            self.unanswered.append(token)
            return None
        failure = self._check(request, headers, token)
        if failure is None and self.scripted.get(token):
            failure = self.scripted[token].pop(0)
        if failure is not None:
            self.rejected.append((token, failure))
            reply: dict[str, Any] = {"reason": failure.reason}
            if failure.status == 410:
                reply["timestamp"] = self.unregistered.get(token, int(self.clock() * 1000))
            out = [("apns-id", apns_id), ("content-type", "application/json")]
            if failure.retry_after is not None:
                out.append(("retry-after", failure.retry_after))
            return failure.status, out, json.dumps(reply).encode()
        self.accepted.append(Accepted(token, apns_id, headers, json.loads(request.body)))
        out = [("apns-id", apns_id)]
        if self.environment == "sandbox":
            out.append(("apns-unique-id", str(uuid.uuid4())))
        return 200, out, b""

    def _check(self, request: Request, headers: dict[str, str], token: str) -> Answer | None:
        """Apple's checks, each with the status and reason Apple answers."""
        if self.http2_only and request.http_version != "2":
            return Answer(505, "HTTP/2 required")
        if request.method != "POST":
            return Answer(405, "MethodNotAllowed")
        if not request.path.startswith("/3/device/"):
            return Answer(404, "BadPath")
        if len(headers) != len(request.headers):
            return Answer(400, "DuplicateHeaders")
        auth = self._check_provider_token(request, headers.get("authorization", ""))
        if auth is not None:
            return auth
        if not headers.get("apns-topic"):
            return Answer(400, "MissingTopic")
        if headers.get("apns-push-type") not in PUSH_TYPES:
            return Answer(400, "InvalidPushType")
        if headers.get("apns-priority", "10") not in {"1", "5", "10"}:
            return Answer(400, "BadPriority")
        if headers["apns-push-type"] == "background" and headers.get("apns-priority") != "5":
            return Answer(400, "BadPriority")  # Apple: background notifications go at 5
        if not headers.get("apns-expiration", "0").isdigit():
            return Answer(400, "BadExpirationDate")
        if "apns-id" in headers and not UUID_FORM.match(headers["apns-id"]):
            return Answer(400, "BadMessageId")
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return Answer(400, "BadCollapseId")
        if not request.body:
            return Answer(400, "PayloadEmpty")
        if len(request.body) > MAX_PAYLOAD:
            return Answer(413, "PayloadTooLarge")
        if not token:
            return Answer(400, "MissingDeviceToken")
        if not HEX_TOKEN.match(token):
            return Answer(400, "BadDeviceToken")
        if token in self.sandbox_tokens and self.environment == "production":
            return Answer(400, "BadDeviceToken")
        if token in self.other_topic_tokens or headers["apns-topic"] != self.topic:
            return Answer(400, "DeviceTokenNotForTopic")
        if token in self.unregistered:
            return Answer(410, "Unregistered")
        return None

    def _check_provider_token(self, request: Request, authorization: str) -> Answer | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return Answer(403, "MissingProviderToken")
        claims = self._verify(token)
        if claims is None:
            return Answer(403, "InvalidProviderToken")
        iat = claims["iat"]
        if token in self._expired or self.clock() - iat > 3600:
            return Answer(403, "ExpiredProviderToken")
        if token not in self.provider_tokens:
            self.provider_tokens.append(token)
        # Apple wants a connection's provider token replaced at most once every 20 minutes.
        previous = self._current.get(request.connection)
        if previous and previous[0] != token and previous[0] not in self._expired:
            if iat - previous[1] < 20 * 60:
                return Answer(429, "TooManyProviderTokenUpdates")
        self._current[request.connection] = (token, iat)
        return None

    def _verify(self, token: str) -> dict | None:
        """The JWT's claims if the team's key signed it (ES256, our kid, our team), else None."""
        if token not in self._verified:
            try:
                header = jwt.get_unverified_header(token)
                claims = jwt.decode(
                    token,
                    self.public_key_pem,
                    algorithms=["ES256"],
                    options={"require": ["iss", "iat"], "verify_iat": False},
                )
            except jwt.PyJWTError:
                return None
            iat = claims["iat"]
            if header.get("kid") != self.key_id or claims["iss"] != self.team_id:
                return None
            if not isinstance(iat, int) or iat > self.clock() + 60:
                return None
            self._verified[token] = claims
        return self._verified[token]


class _Connection(asyncio.Protocol):
    """One client connection: HTTP/2 (h2), or HTTP/1.1 (h11) when ALPN chose it."""

    def __init__(self, fake: FakeApns) -> None:
        self.fake = fake
        self.h2: h2.connection.H2Connection | None = None
        self.h11 = h11.Connection(h11.SERVER)
        self.streams: dict[int, tuple[list, bytearray]] = {}
        self.request: h11.Request | None = None
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = tuple(transport.get_extra_info("peername")[:2])
        self.fake._open.add(self)
        if transport.get_extra_info("ssl_object").selected_alpn_protocol() == "h2":
            # Requests are checked as h2 does (validate_inbound_headers stays on); the fake's
            # own replies are well-formed by construction, so they skip h2's outbound checks.
            config = h2.config.H2Configuration(
                client_side=False,
                header_encoding="utf-8",
                normalize_outbound_headers=False,
                validate_outbound_headers=False,
            )
            self.h2 = h2.connection.H2Connection(config)
            self.h2.encoder = _PlainEncoder()
            limit = {
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.fake.max_concurrent_streams
            }
            self.h2.local_settings = h2.settings.Settings(client=False, initial_values=limit)
            self.h2.initiate_connection()
            transport.write(self.h2.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.fake._open.discard(self)

    def close(self) -> None:
        if self.h2 is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # the client said GOAWAY first
                self.h2.close_connection()
            self.transport.write(self.h2.data_to_send())
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.h2 is None:
            self._http1_received(data)
            return
        # Answer as requests are read, a few at a time, as a server working on each request
        # would: one reply per read of many requests would keep the client idle meanwhile.
        view = memoryview(data)
        for start in range(0, len(data), READ_SLICE):
            if not self._h2_received(view[start : start + READ_SLICE]):
                return

    def _h2_received(self, data: memoryview) -> bool:
        assert self.h2 is not None
        try:
            events = self.h2.receive_data(bytes(data))
        except h2.exceptions.ProtocolError:  # h2 has queued the GOAWAY that says why
            self.transport.write(self.h2.data_to_send())
            self.transport.close()
            return False
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = (event.headers, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                self.streams[event.stream_id][1].extend(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._respond_h2(event.stream_id, *self.streams.pop(event.stream_id))
            elif isinstance(event, h2.events.StreamReset):
                self.streams.pop(event.stream_id, None)
        self.transport.write(self.h2.data_to_send())
        return True

    def _respond_h2(self, stream_id: int, headers: list, body: bytearray) -> None:
        assert self.h2 is not None
        pseudo = {k: v for k, v in headers if k.startswith(":")}
        plain = [(k, v) for k, v in headers if not k.startswith(":")]
        request = Request(pseudo[":method"], pseudo[":path"], plain, bytes(body), "2", self.peer)
        answer = self.fake.answer(request)
        if answer is None:
            return
        status, out, reply = answer
        # apns-id differs on every reply: keep it out of the HPACK table, as the client does.
        out = [NeverIndexedHeaderTuple(k, v) if k == "apns-id" else (k, v) for k, v in out]
        self.h2.send_headers(stream_id, [(":status", str(status)), *out], end_stream=not reply)
        if reply:
            self.h2.send_data(stream_id, reply, end_stream=True)

    def _http1_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request, self.body = event, bytearray()
            elif isinstance(event, h11.Data):
                self.body.extend(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._respond_http1()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _respond_http1(self) -> None:
        assert self.request is not None
        headers = [(k.decode(), v.decode()) for k, v in self.request.headers]
        request = Request(
            self.request.method.decode(), self.request.target.decode(), headers, bytes(self.body),
            "1.1", self.peer,
        )  # fmt: skip
        answer = self.fake.answer(request)
        assert answer is not None, "silent tokens are for HTTP/2 clients"
        status, out, reply = answer
        out.append(("content-length", str(len(reply))))
        wire = self.h11.send(h11.Response(status_code=status, headers=out))
        wire += self.h11.send(h11.Data(data=reply)) if reply else b""
        wire += self.h11.send(h11.EndOfMessage())
        self.transport.write(wire)
        self.h11.start_next_cycle()


class _PlainEncoder(Encoder):
    """HPACK without Huffman coding for the fake's replies: cheaper for both ends in Python."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)


@asynccontextmanager
async def serving(fake: FakeApns) -> AsyncIterator[tuple[str, trustme.CA]]:
    """Serve `fake` over TLS on a free 127.0.0.1 port; yields its base URL and the CA to trust."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(fake), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}", ca
    finally:
        fake.close_connections()
        server.close()
        await server.wait_closed()
