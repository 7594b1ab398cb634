"""A local EngageLab App Push API: `POST /v4/push` with HTTP Basic auth, EngageLab's request and
error shapes, rate limiting, scripted faults, and request_id dedup. Records what it accepted."""

import base64
import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PLATFORMS = {"android", "ios", "hmos", "web"}
MAX_NOTIFICATION_BYTES = 4000
MAX_CUSTOM_ARGS_CHARS = 128


@dataclass
class Fault:
    """The answer to one coming request instead of the normal one."""

    status: int
    code: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    # Take the push first, then answer the error: a response lost on the way back.
    accept_first: bool = False


def rate_limited(reset: int = 0, http_status: int = 429) -> Fault:
    headers = {
        "X-Rate-Limit-Limit": "500",
        "X-Rate-Limit-Remaining": "0",
        "X-Rate-Limit-Reset": str(reset),
    }
    return Fault(http_status, 23008, "Interface rate limited", headers)


def unavailable(accept_first: bool = False) -> Fault:
    return Fault(503, 21030, "Internal service timeout", {"Retry-After": "0"}, accept_first)


@dataclass
class Accepted:
    request_id: str | None
    registration_id: str
    msg_id: str
    request: dict[str, Any]
    authorization: str


class FakeEngageLab:
    def __init__(self, app_key: str = "fake-app-key", master_secret: str = "fake-master-secret"):
        token = base64.b64encode(f"{app_key}:{master_secret}".encode()).decode()
        self._authorization = f"Basic {token}"
        self.accepted: list[Accepted] = []
        self.attempts = 0
        self.dead_tokens: set[str] = set()
        self.faults: deque[Fault] = deque()
        self.always: Fault | None = None  # answer every request with this
        self._by_request_id: dict[str, str] = {}
        self._msg_ids = itertools.count(1_828_256_757)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v4/push", self._push)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def sends_to(self, registration_id: str) -> int:
        return sum(1 for a in self.accepted if a.registration_id == registration_id)

    async def _push(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if request.headers.get("Authorization") != self._authorization:
            return _error(401, 21004, "Authentication failed")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, 21003, "Parameter value is invalid: body is not JSON")
        fault = self.always or (self.faults.popleft() if self.faults else None)
        if fault is not None and not fault.accept_first:
            return _error(fault.status, fault.code, fault.message, fault.headers)
        problem = _check(body)
        if problem is not None:
            return _error(400, *problem)
        targets = body["to"]["registration_id"]
        if any(t in self.dead_tokens for t in targets):
            return _error(400, 20101, "Registration ID invalid or not of this AppKey")
        answer = self._accept(body, request.headers["Authorization"])
        if fault is not None:
            return _error(fault.status, fault.code, fault.message, fault.headers)
        return web.json_response(answer)

    def _accept(self, body: dict[str, Any], authorization: str) -> dict[str, Any]:
        request_id = body.get("request_id")
        if request_id and request_id in self._by_request_id:  # a re-send: the same message
            return {"request_id": request_id, "msg_id": self._by_request_id[request_id]}
        msg_id = str(next(self._msg_ids))
        if request_id:
            self._by_request_id[request_id] = msg_id
        for registration_id in body["to"]["registration_id"]:
            self.accepted.append(Accepted(request_id, registration_id, msg_id, body, authorization))
        return {"request_id": request_id, "msg_id": msg_id}


def _check(body: Any) -> tuple[int, str] | None:
    """EngageLab's validation of a push to registration ids, as (code, message) on failure."""
    if not isinstance(body, dict) or "to" not in body or "body" not in body:
        return 21002, "Required parameter missing: to, body"
    to, push = body["to"], body["body"]
    if not isinstance(to, dict) or not to.get("registration_id"):
        return 21011, "No suitable push target found"
    if not isinstance(push, dict) or push.get("platform") not in PLATFORMS:
        return 21003, "Parameter value is invalid: body.platform"
    notification, message = push.get("notification"), push.get("message")
    if notification is None and message is not None:  # a custom message alone
        if not isinstance(message, dict) or not message.get("msg_content"):
            return 21002, "Required parameter missing: body.message msg_content"
        notification = message
    else:
        note = notification.get(push["platform"]) if isinstance(notification, dict) else None
        if not isinstance(note, dict) or not note.get("alert"):
            return 21002, "Required parameter missing: body.notification alert"
    if len(json.dumps(notification, ensure_ascii=False).encode()) > MAX_NOTIFICATION_BYTES:
        return 21005, "Message body too large"
    ttl = push.get("options", {}).get("time_to_live", 0)
    if not isinstance(ttl, int) or ttl < 0:
        return 21003, "Parameter value is invalid: options.time_to_live"
    args = body.get("custom_args")
    if args is not None and (
        not isinstance(args, dict) or len(json.dumps(args)) > MAX_CUSTOM_ARGS_CHARS
    ):
        return 21016, "Request parameter validation failed: custom_args"
    return None


def _error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)
