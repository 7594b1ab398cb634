"""Shared dependencies: the ledger engine, the Temporal client, the authenticated app."""

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api.errors import ApiError
from api.signals import SignalCoalescer
from relance import ledger
from relance.db import App
from relance.settings import Settings


@dataclass
class Context:
    settings: Settings
    engine: Engine
    coalescer: SignalCoalescer
    client: Client | None = None
    # SQLite has one writer at a time and its busy wait is not fair: event batches queue here
    # instead, so the worker's writes (sends, callback deliveries) are not starved by them.
    event_writes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))


def get_context(request: Request) -> Context:
    return request.app.state.context


ContextDep = Annotated[Context, Depends(get_context)]

_basic = HTTPBasic(auto_error=False, description="appKey:masterSecret")


async def authenticated_app(
    ctx: ContextDep, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> App:
    if credentials is None:
        raise ApiError(
            401, "authorization: expected HTTP Basic appKey:masterSecret", "authorization"
        )
    app = await run_in_threadpool(
        ledger.authenticate, ctx.engine, credentials.username, credentials.password
    )
    if app is None:
        raise ApiError(401, "authorization: unknown appKey or wrong masterSecret", "authorization")
    return app


AppDep = Annotated[App, Depends(authenticated_app)]


def temporal(ctx: Context) -> Client:
    if ctx.client is None:
        raise ApiError(503, "Temporal is not reachable yet; retry shortly")
    return ctx.client
