"""A Web Push service on 127.0.0.1 for tests: checks VAPID, decrypts aes128gcm, records it.

It plays both ends a real push needs: the browser (`subscribe()` makes a P-256 key pair and an
auth secret, and hands out the PushSubscription JSON) and the push service (`POST /push/<id>`
with the RFC 8030 / 8291 / 8292 checks a real one makes, answering 201 Created). Responses
can be scripted per subscription (404/410 dead, 429 with Retry-After, 5xx) to test failures.
"""

import asyncio
import base64
import json
import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MAX_BODY = 4096  # what a push service must accept (RFC 8030 section 7.2)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class BrowserSubscription:
    """What a browser keeps after pushManager.subscribe(): the keys stay, the JSON is shared."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    def to_json(self) -> str:
        """PushSubscription.toJSON(), stringified: the device's registration_id."""
        p256dh = self.private_key.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
        keys = {"p256dh": b64url(p256dh), "auth": b64url(self.auth)}
        return json.dumps({"endpoint": self.endpoint, "expirationTime": None, "keys": keys})


@dataclass
class Scripted:
    """One answer the push service gives instead of accepting the message."""

    status: int
    retry_after: str | None = None


@dataclass
class Arrival:
    """One accepted push message, decrypted."""

    payload: dict[str, Any]
    headers: dict[str, str]
    claims: dict[str, Any]


@dataclass
class WebPushFake:
    # The VAPID public key browsers subscribed with; a request signed by another key gets 403.
    application_server_key: str | None = None
    delay: float = 0.0  # hold each request this long (to observe concurrency)
    received: dict[str, list[Arrival]] = field(default_factory=lambda: defaultdict(list))
    attempts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rejections: list[str] = field(default_factory=list)
    peers: set[tuple[str, int]] = field(default_factory=set)
    max_in_flight: int = 0
    _subscriptions: dict[str, BrowserSubscription] = field(default_factory=dict)
    _scripts: dict[str, list[Scripted]] = field(default_factory=lambda: defaultdict(list))
    _dead: dict[str, int] = field(default_factory=dict)
    _tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    _in_flight: int = 0
    _runner: web.AppRunner | None = None
    base_url: str = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/push/{id}", self._push)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def subscribe(self) -> BrowserSubscription:
        sub_id = b64url(os.urandom(12))
        sub = BrowserSubscription(
            sub_id,
            f"{self.base_url}/push/{sub_id}",
            ec.generate_private_key(ec.SECP256R1()),
            os.urandom(16),
        )
        self._subscriptions[sub_id] = sub
        return sub

    def script(self, sub: BrowserSubscription, *answers: Scripted) -> None:
        """Answer the next requests for `sub` with these, in order, then accept again."""
        self._scripts[sub.id].extend(answers)

    def unsubscribe(self, sub: BrowserSubscription, status: int = 410) -> None:
        """The browser dropped the subscription: every later push gets `status` (404 or 410)."""
        self._dead[sub.id] = status

    async def _push(self, request: web.Request) -> web.Response:
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return self._answer(request.match_info["id"], request, await request.read())
        finally:
            self._in_flight -= 1

    def _answer(self, sub_id: str, request: web.Request, body: bytes) -> web.Response:
        self.attempts[sub_id].append(time.monotonic())
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add(peer[:2])
        sub = self._subscriptions.get(sub_id)
        if sub is None or sub_id in self._dead:
            return web.Response(status=self._dead.get(sub_id, 404), text="subscription gone")
        ttl = request.headers.get("TTL", "")
        if not ttl.isdigit():
            return self._reject(400, f"TTL header missing or not a number: {ttl!r}")
        if request.headers.get("Content-Encoding") != "aes128gcm":
            return self._reject(400, "Content-Encoding must be aes128gcm")
        if len(body) > MAX_BODY:
            return self._reject(413, f"body of {len(body)} bytes")
        claims = self._check_vapid(request)
        if isinstance(claims, web.Response):
            return claims
        if self._scripts[sub_id]:
            answer = self._scripts[sub_id].pop(0)
            headers = {"Retry-After": answer.retry_after} if answer.retry_after else {}
            return web.Response(status=answer.status, headers=headers, text="scripted")
        try:
            plaintext = http_ece.decrypt(
                body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
            )
        except Exception as exc:  # any failure to decrypt is the sender's fault
            return self._reject(400, f"cannot decrypt: {exc!r}")
        names = ("TTL", "Urgency", "Topic")
        headers = {n: request.headers[n] for n in names if n in request.headers}
        self.received[sub_id].append(Arrival(json.loads(plaintext), headers, claims))
        return web.Response(status=201, headers={"Location": f"/message/{os.urandom(8).hex()}"})

    def _check_vapid(self, request: web.Request) -> dict[str, Any] | web.Response:
        """RFC 8292: `vapid t=<ES256 JWT>, k=<P-256 public key>`, aud = this origin, exp < 24h."""
        scheme, _, params = request.headers.get("Authorization", "").partition(" ")
        parts = dict(p.strip().split("=", 1) for p in params.split(",") if "=" in p)
        if scheme.lower() != "vapid" or "t" not in parts or "k" not in parts:
            return self._reject(401, "Authorization is not 'vapid t=..., k=...'")
        if self.application_server_key and parts["k"] != self.application_server_key:
            return self._reject(403, "k is not the key the subscription was made with")
        claims = self._tokens.get(parts["t"])
        if claims is None:
            try:
                key = ec.EllipticCurvePublicKey.from_encoded_point(
                    ec.SECP256R1(), unb64url(parts["k"])
                )
                claims = jwt.decode(
                    parts["t"],
                    key,
                    algorithms=["ES256"],
                    audience=self.base_url,
                    options={"require": ["aud", "exp", "sub"]},
                )
            except (jwt.PyJWTError, ValueError) as exc:
                return self._reject(401, f"bad VAPID token: {exc}")
            self._tokens[parts["t"]] = claims
        if not time.time() < claims["exp"] <= time.time() + 24 * 3600:
            return self._reject(401, "exp is not within the next 24 hours")
        return claims

    def _reject(self, status: int, reason: str) -> web.Response:
        if reason not in self.rejections:
            self.rejections.append(reason)
        return web.Response(status=status, text=reason)
