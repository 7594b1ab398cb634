"""EngageLab's per-app request rate: a fixed one-second window per appKey, counted in this API
process, and the X-Rate-Limit-* headers on every answer of an authenticated route.

A fixed window because EngageLab's headers describe one: a limit per window, what is left of
it, and the seconds until it resets. A token bucket has no such reset moment to report. The
count lives in this process's memory, so a check costs a dict lookup and no ledger round trip;
with N API replicas behind a load balancer an app may make up to N times the limit."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError

STATE_KEY = "relance_rate_limit"


@dataclass(frozen=True)
class RateState:
    limit: int
    remaining: int
    reset: int  # whole seconds until the window ends
    allowed: bool

    def headers(self) -> dict[str, str]:
        return {
            "X-Rate-Limit-Limit": str(self.limit),
            "X-Rate-Limit-Remaining": str(self.remaining),
            "X-Rate-Limit-Reset": str(self.reset),
        }


class RateLimiter:
    """At most `limit` requests per app in each `window` seconds; `limit` 0 turns it off.

    Each app's window starts with its first request after the previous window ended. Not
    thread-safe, and needs not be: it is called from the event loop only."""

    def __init__(
        self, limit: int, window: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._windows: dict[str, tuple[float, int]] = {}  # app_key -> (window end, count)

    def hit(self, app_key: str) -> RateState | None:
        if self.limit <= 0:
            return None
        now = self.clock()
        end, count = self._windows.get(app_key, (0.0, 0))
        if now >= end:
            if len(self._windows) >= 10_000:  # forget the apps whose window is over
                self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
            end, count = now + self.window, 0
        allowed = count < self.limit
        if allowed:
            count += 1
        self._windows[app_key] = (end, count)
        reset = max(1, math.ceil(end - now))
        return RateState(self.limit, self.limit - count, reset, allowed)


def check(limiter: RateLimiter, app_key: str, scope: Scope) -> None:
    """Count one request of the app; raise 429/23008 over the limit. The state is left in the
    request's scope for `RateLimitHeaders` to put on the answer, whatever it is."""
    state = limiter.hit(app_key)
    if state is None:
        return
    scope.setdefault("state", {})[STATE_KEY] = state
    if not state.allowed:
        raise ApiError(
            429,
            f"rate limit: over {state.limit} requests per second for this app; "
            f"retry in {state.reset}s",
            headers={"Retry-After": str(state.reset)},
        )


class RateLimitHeaders:
    """ASGI middleware: adds X-Rate-Limit-* to the answer of every request that was counted
    (any authenticated route: the check runs in the auth dependency), errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = scope.get("state", {}).get(STATE_KEY)
                if state is not None:
                    headers = list(message.get("headers", []))
                    headers += [
                        (k.lower().encode(), v.encode()) for k, v in state.headers().items()
                    ]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
