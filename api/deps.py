"""Shared dependencies: the ledger engine, the Temporal client, the authenticated app."""

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api.errors import ApiError
from api.journeys import AheadStarts, Repairs
from api.ratelimit import RateLimiter, check
from api.signals import SignalCoalescer
from relance import ledger
from relance.db import App
from relance.settings import Settings

# Ids and cursors are the ledger's 64-bit integers: a larger one is refused as invalid (400)
# before it reaches the database driver, which cannot bind it.
MAX_ID = 2**63 - 1


class AuthCache:
    """Apps that authenticated lately, so a burst of requests does not read the ledger for each.

    Only successes are kept, keyed by the app key and the SHA-256 of the secret that was given
    (never the secret itself), for `ttl` seconds from the ledger read: a wrong secret is always
    checked against the ledger, and a rotated or removed secret stops working within `ttl`.
    A `ttl` of 0 turns it off. At most `size` entries: when full it starts again empty."""

    def __init__(
        self, ttl: float, size: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl, self.size, self.clock = ttl, size, clock
        self._apps: dict[tuple[str, bytes], tuple[float, App]] = {}

    @staticmethod
    def key(app_key: str, secret: str) -> tuple[str, bytes]:
        return app_key, hashlib.sha256(secret.encode()).digest()

    def get(self, key: tuple[str, bytes]) -> App | None:
        found = self._apps.get(key)
        if found is None:
            return None
        if found[0] <= self.clock():
            self._apps.pop(key, None)
            return None
        return found[1]

    def forget(self, app_key: str) -> None:
        """The app changed (its policy): this process reads it again on its next request."""
        for key in [k for k in self._apps if k[0] == app_key]:
            self._apps.pop(key, None)

    def put(self, key: tuple[str, bytes], app: App) -> None:
        if self.ttl <= 0:
            return
        if len(self._apps) >= self.size:
            self._apps.clear()
        self._apps[key] = (self.clock() + self.ttl, app)


@dataclass
class Context:
    settings: Settings
    engine: Engine
    coalescer: SignalCoalescer
    client: Client | None = None
    # SQLite has one writer at a time and its busy wait is not fair: event batches queue here
    # instead, so the worker's writes (sends, callback deliveries) are not starved by them.
    event_writes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))
    auth: AuthCache = field(default_factory=lambda: AuthCache(0))
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    # Journeys of pushes sent ahead whose start is in flight (README "Send ahead").
    ahead_starts: AheadStarts = field(default_factory=AheadStarts)
    # What the journey repair loop knows: the journeys this process started, how far it got.
    repairs: Repairs = field(default_factory=Repairs)

    def __post_init__(self) -> None:
        self.ahead_starts.repairs = self.repairs


def get_context(request: Request) -> Context:
    return request.app.state.context


ContextDep = Annotated[Context, Depends(get_context)]

_basic = HTTPBasic(auto_error=False, description="appKey:masterSecret")


async def authenticated_app(
    request: Request,
    ctx: ContextDep,
    credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
) -> App:
    """The app of the request's appKey:masterSecret, counted against its request rate: every
    route that depends on this is authenticated and rate-limited."""
    app = await _authenticate(ctx, credentials)
    check(ctx.limiter, app.app_key, request.scope)
    return app


async def _authenticate(ctx: Context, credentials: HTTPBasicCredentials | None) -> App:
    if credentials is None:
        raise ApiError(
            401, "authorization: expected HTTP Basic appKey:masterSecret", "authorization"
        )
    key = AuthCache.key(credentials.username, credentials.password)
    app = ctx.auth.get(key)
    if app is not None:
        return app
    app = await run_in_threadpool(
        ledger.authenticate, ctx.engine, credentials.username, credentials.password
    )
    if app is None:
        raise ApiError(401, "authorization: unknown appKey or wrong masterSecret", "authorization")
    ctx.auth.put(key, app)
    return app


AppDep = Annotated[App, Depends(authenticated_app)]


def temporal(ctx: Context) -> Client:
    if ctx.client is None:
        raise ApiError(503, "Temporal is not reachable yet; retry shortly")
    return ctx.client
