"""The device registry that `to.tag`, `to.alias`, `"all"` and templates read: relance's bulk
`POST /v4/devices`, and EngageLab's routes for one device, its status and vendor tokens."""

from datetime import UTC
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.deps import AppDep, Context, ContextDep
from api.errors import ApiError
from relance import ledger
from relance.models import DeviceBatch, Platform, non_null_schema

router = APIRouter(tags=["devices"])

# What EngageLab's mutations answer: 200 with an empty body, documented without content (a
# client must not expect JSON); the routes use `response_class=Response` so FastAPI adds none.
EMPTY_200: dict[int | str, dict[str, Any]] = {200: {"description": "Done; the body is empty"}}


class DevicesStored(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"stored": 1}]})

    stored: int


@router.post("/v4/devices", response_model=DevicesStored)
async def register_devices(batch: DeviceBatch, app: AppDep, ctx: ContextDep) -> DevicesStored:
    """Register or update devices (platform, tags, alias, template attributes), held to the same
    tag and alias limits as EngageLab's tag and device routes."""
    stored = await run_in_threadpool(
        ledger.upsert_devices, ctx.engine, app.app_key, batch.devices, limits(ctx)
    )
    return DevicesStored(stored=stored)


# EngageLab's device routes (`client.device.*` of its SDK). `POST /v4/devices/status` and
# `/v4/devices/token/registration_id` come before `/v4/devices/{registration_id}`.

RegistrationId = Annotated[str, Path(min_length=1, max_length=2048)]


def limits(ctx: Context) -> ledger.Limits:
    s = ctx.settings
    return ledger.Limits(
        tags_per_app=s.tags_per_app,
        tag_max_bytes=s.tag_max_bytes,
        tags_per_device=s.tags_per_device,
        devices_per_tag=s.devices_per_tag,
        aliases_per_app=s.aliases_per_app,
        alias_max_bytes=s.alias_max_bytes,
    )


class DeviceStatusQuery(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"registration_ids": ["120c83f760363f06840"]}]},
    )

    registration_ids: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        min_length=1, max_length=1000
    )


class DeviceStatusOut(BaseModel):
    regid: str
    online: bool
    # UTC, "YYYY-MM-DD HH:MM:SS" as EngageLab writes it; absent if the device never reported.
    last_online_time: str | None = None


@router.post(
    "/v4/devices/status", response_model=list[DeviceStatusOut], response_model_exclude_none=True
)
async def device_status(
    query: DeviceStatusQuery, app: AppDep, ctx: ContextDep
) -> list[DeviceStatusOut]:
    """Whether each device is online: relance holds no connection to devices, so a device is
    online if it reported a status of its own (delivered, displayed, clicked) within
    `RELANCE_DEVICE_ONLINE_SECONDS`, and `last_online_time` is its latest such report (UTC, to
    the minute). An unknown registration id answers 404 naming it."""
    found = await run_in_threadpool(
        ledger.device_status,
        ctx.engine,
        app.app_key,
        query.registration_ids,
        ctx.settings.device_online_seconds,
    )
    return [
        DeviceStatusOut(
            regid=s.registration_id,
            online=s.online,
            last_online_time=(
                s.last_online_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
                if s.last_online_time
                else None
            ),
        )
        for s in found
    ]


class TokenRegistration(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"platform": "android", "tokens": ["fcm-token-1"]}]},
    )

    platform: Platform
    tokens: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        min_length=1, max_length=1000
    )
    # Accepted for EngageLab's SDK; relance's APNs environment is the provider's (per app).
    apns_production: bool | None = None


class TokenResult(BaseModel):
    token: str
    registration_id: str
    is_new: bool
    code: int = 0


class TokenResults(BaseModel):
    results: list[TokenResult]


@router.post("/v4/devices/token/registration_id", response_model=TokenResults)
async def register_tokens(body: TokenRegistration, app: AppDep, ctx: ContextDep) -> TokenResults:
    """Register vendor tokens as devices. relance sends to the token itself (FCM token, APNs
    device token, Web Push subscription), so each token is its own registration id."""
    done = await run_in_threadpool(
        ledger.register_tokens, ctx.engine, app.app_key, body.platform, body.tokens
    )
    return TokenResults(
        results=[TokenResult(token=t, registration_id=t, is_new=new) for t, new in done]
    )


class DeviceOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tags": ["news", "vip"], "alias": "user_1"}]}
    )

    tags: list[str]
    alias: str | None = None


@router.get("/v4/devices/{registration_id}", response_model=DeviceOut)
async def get_device(registration_id: RegistrationId, app: AppDep, ctx: ContextDep) -> DeviceOut:
    """The device's tags and alias (404 for a device this app does not have)."""
    info = await run_in_threadpool(ledger.get_device, ctx.engine, app.app_key, registration_id)
    return DeviceOut(tags=info.tags, alias=info.alias)


TagName = Annotated[str, Field(max_length=1024)]


class TagChanges(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[TagName] | None = Field(None, max_length=100)
    remove: list[TagName] | None = Field(None, max_length=100)


def _changes_schema(schema: dict[str, Any]) -> None:
    """Published as `set_device` checks it: tags or alias, or both (null stands for absent)."""
    non_null_schema(schema)
    schema["minProperties"] = 1
    schema["examples"] = [
        {"tags": {"add": ["vip"], "remove": ["trial"]}, "alias": "user_1"},
        {"tags": "", "alias": ""},
    ]


class DeviceChanges(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda s: _changes_schema(s))

    # {"add": [...], "remove": [...]}, or "" to clear every tag.
    tags: TagChanges | Literal[""] | None = None
    # A new alias replaces the device's alias; "" unbinds it.
    alias: str | None = Field(None, max_length=1024)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if value is not None and value != "" and not isinstance(value, dict):
            raise ValueError('expected {"add": [...], "remove": [...]}, or "" to clear every tag')
        return value


@router.post("/v4/devices/{registration_id}", responses=EMPTY_200, response_class=Response)
async def set_device(
    registration_id: RegistrationId, body: DeviceChanges, app: AppDep, ctx: ContextDep
) -> Response:
    """Change the device's tags and alias, all or none. Answers 200 with an empty body, as
    EngageLab does; a limit passed is refused (HTTP 400, codes in the README)."""
    if body.tags is None and body.alias is None:
        raise ApiError(400, "body: expected tags or alias", "body")
    changes = body.tags if isinstance(body.tags, TagChanges) else None
    await run_in_threadpool(
        partial(
            ledger.set_device,
            ctx.engine,
            app.app_key,
            registration_id,
            limits(ctx),
            add=changes.add if changes else None,
            remove=changes.remove if changes else None,
            clear_tags=body.tags == "",
            alias=body.alias,
        )
    )
    return Response(status_code=200)


@router.delete("/v4/devices/{registration_id}", responses=EMPTY_200, response_class=Response)
async def delete_device(registration_id: RegistrationId, app: AppDep, ctx: ContextDep) -> Response:
    """Forget the device: its tags, alias and attributes go at once, and no later stage or push
    reaches it. What pushes recorded of it (their funnels) stays."""
    await run_in_threadpool(ledger.delete_device, ctx.engine, app.app_key, registration_id)
    return Response(status_code=200)
