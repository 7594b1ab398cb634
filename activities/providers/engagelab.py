"""Provider client for EngageLab's App Push API (`POST /v4/push`): relance as a relay behind it.

One push per message, `request_id` = the message's idempotency key, and relance's msg_id and
stage in `custom_args`, which EngageLab echoes in every status callback row."""

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from activities.providers.base import OutboundMessage, SendOutcome
from activities.providers.retry import RetryBudget, parse_retry_after
from relance.credentials import EngageLabCredentials
from relance.engagelab_callbacks import CUSTOM_ARGS_MSG_ID, CUSTOM_ARGS_STAGE

# An EngageLab app lives in one data centre; its API host is that data centre's.
PLATFORMS = {"android", "ios", "hmos", "web"}

# `error.code` of a failed /v4/push, by what relance does about it.
DEAD_TOKEN_CODES = {20101, 21011}  # registration id invalid / not this app's; no such target
CONFIG_CODES = {
    21004: "check this app's EngageLab app_key and master_secret, and that base_url is the "
    "app's data centre",
    21008: "the app_key is malformed (extra spaces?)",
    21038: "the EngageLab plan lacks push permission (VIP expired or not activated)",
    23009: "this server's IP is not in the EngageLab app's IP whitelist",
}
RATE_LIMITED = 23008
TRANSIENT_CODES = {RATE_LIMITED, 21009, 21030, 27000}  # rate limit, internal error, timeout
ENGAGELAB_RETRY = RetryBudget(attempts=6, total_wait=120.0, base_delay=0.5, max_delay=60.0)


@dataclass(frozen=True)
class _Answer:
    status: int  # 0: no HTTP answer at all
    code: int | None = None
    message: str = ""
    retry_after: float | None = None

    def describe(self) -> str:
        code = f" {self.code}" if self.code is not None else ""
        return f"engagelab{code}: {self.message or f'HTTP {self.status}'}"


class EngageLabProvider:
    name = "engagelab"

    def __init__(
        self,
        credentials: EngageLabCredentials,
        *,
        base_url: str | None = None,
        concurrency: int = 50,
        retry: RetryBudget = ENGAGELAB_RETRY,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        timeout: float = 30.0,
    ) -> None:
        self._credentials = credentials
        self._url = (base_url or credentials.base_url).rstrip("/") + "/v4/push"
        secret = credentials.master_secret.get_secret_value()
        token = base64.b64encode(f"{credentials.app_key}:{secret}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._retry = retry
        self._sleep = sleep
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, messages: list[OutboundMessage]) -> list[SendOutcome]:
        return list(await asyncio.gather(*(self._send_one(m) for m in messages)))

    async def already_received(self, keys: list[str]) -> set[str] | None:
        # EngageLab cannot be asked; a re-send carries the same request_id instead.
        return None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _send_one(self, message: OutboundMessage) -> SendOutcome:
        if message.platform not in PLATFORMS:
            return _outcome(
                message,
                error=f"EngageLab cannot send to platform {message.platform!r}: route this "
                "platform to another provider",
                config_error=True,
            )
        try:
            payload = json.dumps(push_body(message, self._credentials), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            return _outcome(message, error=f"extras cannot be sent as JSON: {exc}")
        tries, waited = 0, 0.0
        while True:
            answer = await self._post(payload.encode())
            verdict = _verdict(message, answer)
            if verdict is not None:
                return verdict
            tries += 1
            delay = self._retry.wait(tries, answer.retry_after)
            if self._retry.exhausted(tries, waited, delay):
                later = max(delay, self._retry.base_delay)
                return _outcome(message, error=f"not sent yet: {answer.describe()}", later=later)
            await self._sleep(delay)
            waited += delay

    async def _post(self, payload: bytes) -> _Answer:
        async with self._slots:
            try:
                async with self._client().post(
                    self._url, data=payload, headers=self._headers
                ) as response:
                    body = await response.read()
                    return _answer(response.status, body, response.headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return _Answer(status=0, message=f"EngageLab unreachable ({type(exc).__name__})")

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the event loop: the provider may be built in a thread.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._concurrency)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session


def push_body(message: OutboundMessage, credentials: EngageLabCredentials) -> dict[str, Any]:
    """EngageLab's /v4/push body for one rendered message to one device."""
    platform = message.platform
    alert: str | dict[str, str] = message.alert
    notification: dict[str, Any] = {}
    if platform == "ios" and message.title:
        alert = {"title": message.title, "body": message.alert}
    elif message.title:
        notification["title"] = message.title
    notification["alert"] = alert
    if message.extras:
        notification["extras"] = message.extras
    options: dict[str, Any] = {}
    if message.time_to_live is not None:
        options["time_to_live"] = message.time_to_live
    if platform == "ios":
        options["apns_production"] = credentials.apns_production
    body: dict[str, Any] = {"platform": platform}
    if message.notify:
        body["notification"] = {platform: notification}
    if message.message is not None:
        body["message"] = message.message  # EngageLab's own custom message, as it was given
    if options:
        body["options"] = options
    return {
        "from": "push",
        "to": {"registration_id": [message.registration_id]},
        "body": body,
        "request_id": message.idempotency_key,
        "custom_args": {CUSTOM_ARGS_MSG_ID: message.msg_id, CUSTOM_ARGS_STAGE: message.stage},
    }


def _verdict(message: OutboundMessage, answer: _Answer) -> SendOutcome | None:
    """The final outcome of one answer, or None when it is worth another try."""
    if answer.status == 200:
        return _outcome(message, ok=True)
    if answer.status in (0, 408, 429) or answer.status >= 500 or answer.code in TRANSIENT_CODES:
        return None
    if answer.code in CONFIG_CODES or answer.status in (401, 403):
        hint = CONFIG_CODES.get(answer.code or 0, CONFIG_CODES[21004])
        error = f"EngageLab refused the app's configuration ({answer.describe()}): {hint}"
        return _outcome(message, error=error, config_error=True)
    if answer.status in (404, 405):
        error = f"{answer.describe()}: base_url does not serve EngageLab's POST /v4/push"
        return _outcome(message, error=error, config_error=True)
    if answer.code in DEAD_TOKEN_CODES:
        return _outcome(message, error=answer.describe(), token_invalid=True)
    return _outcome(message, error=answer.describe())


def _answer(status: int, body: bytes, headers: Mapping[str, str]) -> _Answer:
    if status == 200:  # {"request_id", "msg_id"}: nothing relance keeps (see the contract)
        return _Answer(status=status)
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = error.get("code") if isinstance(error, dict) else None
    message = str(error.get("message", "")) if isinstance(error, dict) else ""
    return _Answer(
        status=status,
        code=code if isinstance(code, int) else None,
        message=message[:300],
        retry_after=_retry_after(headers),
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After, else the rate-limit window's reset when the window is used up."""
    value = headers.get("Retry-After")
    if value is not None:
        return parse_retry_after(value)
    if headers.get("X-Rate-Limit-Remaining") == "0" and headers.get("X-Rate-Limit-Reset"):
        try:
            return max(0.0, float(headers["X-Rate-Limit-Reset"]))
        except ValueError:
            return None
    return None


def _outcome(
    message: OutboundMessage,
    *,
    ok: bool = False,
    error: str | None = None,
    token_invalid: bool = False,
    config_error: bool = False,
    later: float | None = None,
) -> SendOutcome:
    return SendOutcome(
        registration_id=message.registration_id,
        ok=ok,
        error=error,
        token_invalid=token_invalid,
        config_error=config_error,
        retry_after=later,
    )
