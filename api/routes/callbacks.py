"""Status callbacks: the app's default callback URLs and signing identity, and the dead-letter
list of batches that failed every try."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.deps import MAX_ID, AppDep, Context, ContextDep
from api.errors import ApiError
from relance import ledger
from relance.callbacks import MAX_CALLBACK_URLS, UnsafeCallbackUrl, check_callback_url
from relance.db import utcnow
from relance.ledger import outbox
from relance.states import CallbackBatchState

router = APIRouter(tags=["callbacks"])


class CallbackSettingsIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"urls": ["https://shop.example/appCallback/notify"], "username": "shop"}]
        },
    )

    urls: list[str] = Field(max_length=MAX_CALLBACK_URLS)
    username: str | None = Field(None, min_length=1, max_length=128)
    secret: str | None = Field(None, min_length=16, max_length=128)


class CallbackSettingsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "urls": ["https://shop.example/appCallback/notify"],
                    "username": "shop",
                    "secret_set": True,
                }
            ]
        }
    )

    urls: list[str]
    username: str
    secret_set: bool = Field(description="The signing secret itself is never returned.")


class DeadBatch(BaseModel):
    id: int
    url: str
    attempts: int
    last_error: str | None
    created_at: datetime
    rows: list[dict[str, Any]]


class DeadPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "batches": [
                        {
                            "id": 7,
                            "url": "https://shop.example/appCallback/notify",
                            "attempts": 6,
                            "last_error": "HTTP 503",
                            "created_at": "2026-11-23T10:00:00Z",
                            "rows": [
                                {
                                    "message_id": "1795429543454486250",
                                    "to": "120c83f760363f06840",
                                    "status": {"message_status": "click"},
                                    "event_id": "5f0c…",
                                }
                            ],
                        }
                    ],
                    "next_cursor": None,
                }
            ]
        }
    )

    batches: list[DeadBatch]
    next_cursor: int | None = None


class Requeued(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": 7, "state": "pending"}]})

    id: int
    state: str


async def check_urls(ctx: Context, urls: list[str], field: str) -> None:
    """400 naming the URL that relance must not call (see relance.callbacks)."""
    for i, url in enumerate(urls):
        try:
            await run_in_threadpool(check_callback_url, url, ctx.settings.callback_allowed_networks)
        except UnsafeCallbackUrl as exc:
            raise ApiError(400, f"{field}[{i}]: {exc}", f"{field}[{i}]") from None


def _settings_out(app: Any) -> CallbackSettingsOut:
    return CallbackSettingsOut(
        urls=app.callback_urls,
        username=app.callback_username or app.app_key,
        secret_set=bool(app.callback_secret),
    )


@router.get("/v4/app/callback", response_model=CallbackSettingsOut)
async def get_callback_settings(app: AppDep, ctx: ContextDep) -> CallbackSettingsOut:
    """The app's default callback URLs (used when a push names none) and signing username."""
    # Read again: the authenticated app may come from the API's cache (api/deps.py), from
    # before a PUT that another API process answered.
    return _settings_out(await run_in_threadpool(ledger.get_app, ctx.engine, app.app_key))


@router.put("/v4/app/callback", response_model=CallbackSettingsOut)
async def put_callback_settings(
    body: CallbackSettingsIn, app: AppDep, ctx: ContextDep
) -> CallbackSettingsOut:
    """Set the default callback URLs, and optionally the username and secret that sign them."""
    await check_urls(ctx, body.urls, "urls")
    stored = await run_in_threadpool(
        ledger.set_callbacks, ctx.engine, app.app_key, body.urls, body.username, body.secret
    )
    return _settings_out(stored)


@router.get("/v4/callbacks/dead", response_model=DeadPage)
async def list_dead(
    app: AppDep,
    ctx: ContextDep,
    cursor: int = Query(0, ge=0, le=MAX_ID),
    limit: int = Query(50, ge=1, le=500),
) -> DeadPage:
    """Callback batches that failed every try, oldest first."""
    found = await run_in_threadpool(outbox.dead_batches, ctx.engine, app.app_key, cursor, limit)
    batches = [
        DeadBatch(
            id=b.id or 0,
            url=b.url,
            attempts=b.attempts,
            last_error=b.last_error,
            created_at=b.created_at,
            rows=rows,
        )
        for b, rows in found
    ]
    return DeadPage(batches=batches, next_cursor=batches[-1].id if len(batches) == limit else None)


@router.post("/v4/callbacks/dead/{batch_id}/redeliver", response_model=Requeued)
async def redeliver(
    batch_id: Annotated[int, Path(ge=1, le=MAX_ID)], app: AppDep, ctx: ContextDep
) -> Requeued:
    """Send a dead-lettered batch again, from the first try of the schedule."""
    found = await run_in_threadpool(
        outbox.requeue_dead, ctx.engine, app.app_key, batch_id, utcnow()
    )
    if not found:
        raise ApiError(404, f"batch_id: no dead callback batch {batch_id} for this app", "batch_id")
    ctx.coalescer.wake_app(app.app_key)
    await ctx.coalescer.flush()
    return Requeued(id=batch_id, state=CallbackBatchState.pending)
