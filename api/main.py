"""The FastAPI app: routes, error shape, the Temporal client and the signal coalescer."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict
from temporalio.client import Client

from api import dashboard, errors
from api.deps import AuthCache, Context
from api.journeys import repair_journeys_forever
from api.limits import RequestLimits
from api.ratelimit import RateLimiter, RateLimitHeaders
from api.routes import (
    batch,
    callbacks,
    devices,
    events,
    policy,
    providers,
    push,
    relay,
    schedules,
    status,
    tags,
    unsupported,
)
from api.signals import SignalCoalescer
from relance import sealing
from relance.db import make_engine
from relance.metrics import api_registry, exposition
from relance.migrate import ensure_current
from relance.settings import Settings, get_settings
from relance.temporal_client import connect_temporal
from relance.temporal_client import describe as describe_temporal

log = logging.getLogger("relance.api")


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok", "temporal": True}]})

    status: str
    temporal: bool


def create_app(settings: Settings | None = None, client: Client | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    # Refuse a ledger that is behind (LedgerNotCurrent): `relance db upgrade` changes its shape.
    ensure_current(engine)
    # Refuse sealed secrets that the keys cannot open (SecretsLocked), rather than fail later.
    sealing.start(engine, settings.secret_keys.get_secret_value(), "api")
    # Unusable TLS settings stop the API now (TemporalSettingsError), not in the retry loop.
    log.info("Temporal at %s", describe_temporal(settings))
    coalescer = SignalCoalescer(engine, settings.signal_interval_seconds, settings.task_queue)
    context = Context(
        settings,
        engine,
        coalescer,
        client,
        auth=AuthCache(settings.auth_cache_seconds),
        limiter=RateLimiter(settings.rate_limit_per_second),
    )
    if engine.dialect.name == "sqlite":
        context.event_writes = asyncio.Semaphore(1)

    async def _connect() -> None:
        while context.client is None:
            try:
                context.client = await connect_temporal(settings)
            except Exception as exc:  # noqa: BLE001 — keep serving; /healthz tells
                log.warning(
                    "Temporal at %s not reachable (%s); retrying", settings.temporal_address, exc
                )
                await asyncio.sleep(1)
        context.coalescer.client = context.client

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        context.coalescer.client = context.client
        tasks = [
            asyncio.create_task(_connect()),
            asyncio.create_task(context.coalescer.run()),
            asyncio.create_task(
                repair_journeys_forever(lambda: context.client, engine, settings, context.repairs)
            ),
        ]
        yield
        # The starts of journeys sent ahead that are in flight: a few seconds to end (after
        # that, the repair loop of any API process makes them).
        if context.ahead_starts.tasks:
            await asyncio.wait(list(context.ahead_starts.tasks.values()), timeout=5)
        for task in tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        with suppress(Exception):
            await context.coalescer.flush()

    app = FastAPI(
        title="relance",
        version="0.1.0",
        description="EngageLab-compatible push API that resends, stage by stage, to whoever did "
        "not act. Authenticate with HTTP Basic `appKey:masterSecret`.",
        lifespan=lifespan,
    )
    app.state.context = context
    errors.install(app)
    errors.document_errors(app)
    app.add_middleware(RateLimitHeaders)
    # Outermost: a body too large or carrying NUL characters is refused before anything reads it.
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    app.include_router(push.router)
    app.include_router(batch.router)
    app.include_router(events.router)
    app.include_router(devices.router)
    app.include_router(tags.router)
    app.include_router(callbacks.router)
    app.include_router(providers.router)
    app.include_router(relay.router)
    app.include_router(status.router)
    app.include_router(unsupported.router)
    app.include_router(policy.router)
    app.include_router(schedules.router)
    # The operator's pages (HTML, signed-in by a session cookie; not in the OpenAPI document).
    dashboard.install(app, settings)

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """Liveness (`status` ok: this process serves; no need to restart it), and whether
        Temporal answers right now (a health check, at most 1 s), not merely whether it once
        did: while the server is down pushes are refused with 503, and this says why."""
        return Health(status="ok", temporal=await _temporal_answers())

    async def _temporal_answers() -> bool:
        if context.client is None:
            return False
        try:
            service = context.client.service_client
            return await service.check_health(timeout=timedelta(seconds=1))
        except Exception:  # noqa: BLE001 — unreachable, or its answer did not come in time
            return False

    if settings.api_metrics:
        registry = api_registry(engine)

        # Not in the OpenAPI docs (no auth, not part of the push API): Prometheus scrapes it.
        @app.get("/metrics", include_in_schema=False)
        def metrics(request: Request) -> Response:
            """Prometheus metrics of this process, and journeys by state from the ledger."""
            body, content_type = exposition(registry, request.headers.get("accept"))
            return Response(body, media_type=content_type)

    return app
