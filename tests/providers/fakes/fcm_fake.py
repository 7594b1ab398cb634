"""A local FCM: Google's OAuth2 token endpoint (JWT-bearer grant, checked against the service
account's public key) and FCM HTTP v1 `messages:send` with FCM's real error bodies, recording
every message it accepted."""

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPES = {
    "https://www.googleapis.com/auth/firebase.messaging",
    "https://www.googleapis.com/auth/cloud-platform",
}
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
# errorCode -> (HTTP status, google.rpc status, message), as FCM answers them.
ERRORS = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Message rate exceeded for the target device."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}
BAD_GATEWAY = "<!DOCTYPE html><title>Error 502 (Server Error)!!1</title><p><b>502.</b>"
RESERVED_DATA_KEYS = {"from", "notification", "message_type"}
DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")
MAX_PAYLOAD = 4096


def new_service_account(project_id: str) -> tuple[dict[str, str], str]:
    """A fresh service-account key file as Firebase hands it out (point its token_uri at the
    fake), and the public key PEM the fake checks assertions with."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": private,
        "client_email": f"firebase-adminsdk-x1@{project_id}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return info, public.decode()


@dataclass
class Answer:
    """A scripted error: an FCM errorCode (or "BAD_GATEWAY"), optionally with Retry-After."""

    code: str
    retry_after: str | None = None


@dataclass
class Accepted:
    token: str
    name: str
    message: dict[str, Any]


@dataclass
class FakeFcm:
    project_id: str
    client_email: str
    public_key_pem: str
    token_lifetime: int = 3599
    clock: Callable[[], float] = time.time
    delay: float = 0.0  # seconds before each send is answered
    # Device state, as FCM knows it.
    unregistered: set[str] = field(default_factory=set)
    malformed: set[str] = field(default_factory=set)
    other_sender: set[str] = field(default_factory=set)
    apns_auth_broken: set[str] = field(default_factory=set)
    # Transient answers per token, consumed one per request before the token is accepted.
    scripted: dict[str, list[Answer]] = field(default_factory=dict)
    token_outage: list[int] = field(default_factory=list)  # statuses the token endpoint answers
    honour_access_tokens: bool = True  # False: FCM answers 401 to every access token
    accepted: list[Accepted] = field(default_factory=list)
    answers: list[tuple[str, int]] = field(default_factory=list)  # (device token, status)
    token_requests: int = 0
    access_tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry
    peers: set[Any] = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def revoke_access_tokens(self) -> None:
        self.access_tokens.clear()

    def accepted_tokens(self) -> list[str]:
        return [a.token for a in self.accepted]

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        if self.token_outage:
            return web.json_response({"error": "internal_failure"}, status=self.token_outage.pop(0))
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error(
                "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type')}"
            )
        problem = self._assertion_problem(str(form.get("assertion", "")))
        if problem:
            return _oauth_error("invalid_grant", problem)
        access = f"ya29.{secrets.token_urlsafe(48)}"
        self.access_tokens[access] = self.clock() + self.token_lifetime
        return web.json_response(
            {"access_token": access, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    def _assertion_problem(self, assertion: str) -> str | None:
        try:
            claims = jwt.decode(
                assertion,
                self.public_key_pem,
                algorithms=["RS256"],
                audience=self.token_uri,
                issuer=self.client_email,
                options={"verify_exp": False, "verify_iat": False, "require": ["iat", "exp"]},
            )
        except jwt.InvalidSignatureError:
            return "Invalid JWT Signature."
        except jwt.PyJWTError as exc:
            return f"Invalid JWT: {exc}"
        now = self.clock()
        if not claims["iat"] - 60 <= now < claims["exp"] or claims["exp"] - claims["iat"] > 3600:
            return (
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe."
            )
        if not SCOPES & set(str(claims.get("scope", "")).split()):
            return "Invalid OAuth scope or ID token audience provided."
        return None

    async def send(self, request: web.Request) -> web.Response:
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return await self._send(request)
        finally:
            self.in_flight -= 1

    async def _send(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        bearer = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        expiry = self.access_tokens.get(bearer)
        if not self.honour_access_tokens or expiry is None or self.clock() >= expiry:
            return _unauthenticated()
        if request.match_info["project"] != self.project_id:
            resource = (
                f"//cloudresourcemanager.googleapis.com/projects/{request.match_info['project']}"
            )
            message = (
                f"Permission 'cloudmessaging.messages.create' denied on resource '{resource}' "
                "(or it may not exist)."
            )
            return _rpc_error(403, "PERMISSION_DENIED", message)
        try:
            message = (await request.json())["message"]
        except (ValueError, KeyError, TypeError):
            return _rpc_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        problem = _message_problem(message)
        if problem:
            return problem
        token = message["token"]
        answer = self._answer_for(token)
        self.answers.append((token, answer.status))
        if answer.status == 200:
            name = (
                f"projects/{self.project_id}/messages/0:{len(self.accepted)}%{secrets.token_hex(8)}"
            )
            self.accepted.append(Accepted(token, name, message))
            return web.json_response({"name": name})
        return answer

    def _answer_for(self, token: str) -> web.Response:
        if self.scripted.get(token):
            scripted = self.scripted[token].pop(0)
            headers = {"Retry-After": scripted.retry_after} if scripted.retry_after else {}
            if scripted.code == "BAD_GATEWAY":
                return web.Response(
                    status=502, text=BAD_GATEWAY, content_type="text/html", headers=headers
                )
            return fcm_error(scripted.code, headers=headers)
        if token in self.malformed:  # FCM's current body names the token only in its message
            return _rpc_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                [{"@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT"}],
            )
        if token in self.unregistered:
            return fcm_error("UNREGISTERED")
        if token in self.other_sender:
            return fcm_error("SENDER_ID_MISMATCH")
        if token in self.apns_auth_broken:
            return fcm_error("THIRD_PARTY_AUTH_ERROR")
        return web.Response(status=200)


def fcm_error(
    code: str, extra: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    status, rpc_status, message = ERRORS[code]
    details = [{"@type": FCM_ERROR, "errorCode": code}, *(extra or [])]
    return _rpc_error(status, rpc_status, message, details, headers)


def _rpc_error(
    status: int,
    rpc_status: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers=headers)


def _unauthenticated() -> web.Response:
    message = (
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project."
    )
    response = _rpc_error(401, "UNAUTHENTICATED", message)
    response.headers["WWW-Authenticate"] = (
        'Bearer realm="https://accounts.google.com/", error="invalid_token"'
    )
    return response


def _oauth_error(error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=400)


def _message_problem(message: Any) -> web.Response | None:
    """FCM's own checks on the message object, with its INVALID_ARGUMENT answers."""
    if not isinstance(message, dict):
        return _rpc_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
    targets = [k for k in ("token", "topic", "condition") if k in message]
    if len(targets) != 1 or targets[0] != "token":
        return fcm_error(
            "INVALID_ARGUMENT", [_violation("message", "Recipient of the message is not set.")]
        )
    data = message.get("data", {})
    for index, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            return _rpc_error(
                400,
                "INVALID_ARGUMENT",
                f"Invalid value at 'message.data[{index}].value' (TYPE_STRING), "
                f"{json.dumps(value)}",
                [_violation(f"message.data[{index}].value", "Invalid value")],
            )
        if key in RESERVED_DATA_KEYS or key.startswith(("google", "gcm")):
            return fcm_error(
                "INVALID_ARGUMENT", [_violation("message.data", f"Invalid data payload key: {key}")]
            )
    ttl = message.get("android", {}).get("ttl")
    if ttl is not None and not (isinstance(ttl, str) and DURATION.match(ttl)):
        return _rpc_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'message.android.ttl' "
            f"(type.googleapis.com/google.protobuf.Duration), {json.dumps(ttl)}",
            [_violation("message.android.ttl", "Invalid value")],
        )
    payload = json.dumps({"notification": message.get("notification", {}), "data": data})
    if len(payload.encode()) > MAX_PAYLOAD:
        return _rpc_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
    return None


def _violation(field_name: str, description: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": field_name, "description": description}],
    }


@asynccontextmanager
async def running_fcm(fake: FakeFcm) -> AsyncIterator[FakeFcm]:
    """Serve `fake` on 127.0.0.1 at a free port; `fake.url` is its base URL."""
    app = web.Application()
    app.router.add_post("/token", fake.token)
    app.router.add_post("/v1/projects/{project}/messages:send", fake.send)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
