"""An app's push providers: which provider reaches which platform, with what credentials.
Secrets go in and are never returned."""

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import AppDep, ContextDep
from api.errors import ApiError, located
from relance import ledger
from relance.providers import CREDENTIALS, PLATFORMS, redacted, revealed

router = APIRouter(tags=["providers"])

Platform = Literal["android", "ios", "web"]


class ProviderIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "platforms": ["web"],
                    "credentials": {
                        "private_key": "<P-256 key, PEM or base64url>",
                        "subject": "mailto:push@shop.example",
                    },
                }
            ]
        },
    )

    platforms: list[Platform] = Field(min_length=1)
    credentials: dict[str, Any] = Field(default_factory=dict)


class ProviderOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "provider": "webpush",
                    "platforms": ["web"],
                    "credentials": {
                        "private_key": "**********",
                        "subject": "mailto:push@shop.example",
                    },
                    "updated_at": "2026-11-23T10:00:00Z",
                }
            ]
        }
    )

    provider: str
    platforms: list[str]
    credentials: dict[str, Any] = Field(description="Secrets shown as asterisks.")
    updated_at: datetime


class ProviderList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"providers": [], "default": "simulator"}]}
    )

    providers: list[ProviderOut]
    default: str = Field(description="Where a platform no provider is set for goes.")


def _out(config: Any) -> ProviderOut:
    return ProviderOut(
        provider=config.provider,
        platforms=config.platforms,
        credentials=redacted(config.provider, config.credentials),
        updated_at=config.updated_at,
    )


@router.put("/v4/app/providers/{provider}", response_model=ProviderOut)
async def put_provider(
    provider: str, body: ProviderIn, app: AppDep, ctx: ContextDep
) -> ProviderOut:
    """Send this app's pushes for `platforms` through `provider` with these credentials."""
    model = CREDENTIALS.get(provider)
    if model is None:
        raise ApiError(
            404, f"provider: expected one of {', '.join(sorted(CREDENTIALS))}", "provider"
        )
    unsupported = [p for p in body.platforms if p not in PLATFORMS[provider]]
    if unsupported:
        raise ApiError(
            400, f"platforms: {provider} cannot reach {', '.join(unsupported)}", "platforms"
        )
    try:
        credentials = model.model_validate(body.credentials)
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        where = ".".join(str(p) for p in ("credentials", *first["loc"]))
        field, message = located(where, dict(first))
        raise ApiError(400, f"{field}: {message}", field) from None
    config = await run_in_threadpool(
        ledger.set_provider,
        ctx.engine,
        app.app_key,
        provider,
        list(body.platforms),
        revealed(credentials),
    )
    return _out(config)


@router.get("/v4/app/providers", response_model=ProviderList)
async def list_providers(app: AppDep, ctx: ContextDep) -> ProviderList:
    """The app's providers and the platforms each reaches (secrets never shown)."""
    configs = await run_in_threadpool(ledger.provider_configs, ctx.engine, app.app_key)
    return ProviderList(providers=[_out(c) for c in configs], default=app.provider)


@router.delete("/v4/app/providers/{provider}", response_model=ProviderList)
async def delete_provider(provider: str, app: AppDep, ctx: ContextDep) -> ProviderList:
    """Stop using a provider; its platforms go back to the default."""
    if not await run_in_threadpool(ledger.delete_provider, ctx.engine, app.app_key, provider):
        raise ApiError(404, f"provider: {provider!r} is not set for this app", "provider")
    return await list_providers(app, ctx)
