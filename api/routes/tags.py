"""EngageLab's tag and alias routes (`client.tag.*`, `client.alias.*` of its SDK), over the
indexed DeviceTag table and the devices' aliases, within EngageLab's limits."""

from functools import partial
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AppDep, ContextDep
from api.errors import ApiError
from api.routes.devices import EMPTY_200, limits
from relance import ledger
from relance.models import Platform

router = APIRouter(tags=["tags and aliases"])

PLATFORMS = get_args(Platform)
Name = Annotated[str, Path(min_length=1, max_length=1024)]


def platforms(value: str | None) -> list[str] | None:
    """`platform=android,ios` (or repeated, or "all"): None for every platform."""
    if value is None or value.strip() in ("", "all"):
        return None
    out = [p.strip() for p in value.split(",") if p.strip()]
    for p in out:
        if p not in PLATFORMS:
            raise ApiError(
                400, f"platform: {p!r} is not one of {', '.join(PLATFORMS)} or all", "platform"
            )
    return out


def tag_list(values: list[str] | None, required: bool) -> list[str]:
    """`tags=a&tags=b` or `tags=a,b`."""
    out = [t.strip() for v in values or [] for t in v.split(",") if t.strip()]
    if required and not out:
        raise ApiError(400, "tags: expected at least one tag", "tags")
    if len(out) > 1000:
        raise ApiError(400, "tags: at most 1000 tags", "tags")
    return list(dict.fromkeys(out))


class TagList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"tags": ["news", "vip"]}]})

    tags: list[str]


@router.get("/v4/tags", response_model=TagList)
async def list_tags(app: AppDep, ctx: ContextDep) -> TagList:
    """Every tag the app's devices have, sorted."""
    return TagList(tags=await run_in_threadpool(ledger.list_tags, ctx.engine, app.app_key))


class TagsCount(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"tagsCount": {"vip": 12}}]})

    tagsCount: dict[str, int]  # noqa: N815 — EngageLab's name


@router.get("/v4/tags_count", response_model=TagsCount)
async def count_tags(
    app: AppDep,
    ctx: ContextDep,
    tags: Annotated[list[str] | None, Query()] = None,
    platform: str | None = None,
) -> TagsCount:
    """How many devices (of `platform`, comma-separated, if given) have each tag."""
    wanted, on = tag_list(tags, required=True), platforms(platform)
    counted = await run_in_threadpool(ledger.count_tags, ctx.engine, app.app_key, wanted, on)
    return TagsCount(tagsCount=counted)


class QuotaOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "data": {
                        "totalTagQuota": 100000,
                        "useTagQuota": 2,
                        "totalAliasQuota": 100000,
                        "useAliasQuota": 1,
                        "tagUidQuotaDetail": [
                            {"tagName": "vip", "totalUidQuota": 100000, "useUidQuota": 12}
                        ],
                    }
                }
            ]
        }
    )

    data: dict[str, Any]


@router.get("/v4/tags/quota-info", response_model=QuotaOut)
async def tag_quota(
    app: AppDep,
    ctx: ContextDep,
    tags: Annotated[list[str] | None, Query()] = None,
    platform: str | None = None,
) -> QuotaOut:
    """EngageLab's TagQuotaData: tags and aliases used against the app's limits, and for each
    tag asked its devices against the per-tag limit."""
    wanted, on = tag_list(tags, required=False), platforms(platform)
    data = await run_in_threadpool(ledger.quota, ctx.engine, app.app_key, wanted, on, limits(ctx))
    return QuotaOut(data=data)


class RegistrationIds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[Annotated[str, Field(min_length=1, max_length=2048)]] | None = Field(
        None, max_length=1000
    )
    remove: list[Annotated[str, Field(min_length=1, max_length=2048)]] | None = Field(
        None, max_length=1000
    )


class TagChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"registration_ids": {"add": ["120c83f760363f06840"], "remove": []}}]
        },
    )

    registration_ids: RegistrationIds


@router.post("/v4/tags/{tag}", responses=EMPTY_200, response_class=Response)
async def set_tag(tag: Name, body: TagChange, app: AppDep, ctx: ContextDep) -> Response:
    """Add the tag to devices and take it from others, all or none (200, empty body)."""
    ids = body.registration_ids
    if not ids.add and not ids.remove:
        raise ApiError(400, "registration_ids: expected add or remove", "registration_ids")
    await run_in_threadpool(
        partial(
            ledger.set_tag,
            ctx.engine,
            app.app_key,
            tag,
            ids.add or [],
            ids.remove or [],
            limits(ctx),
        )
    )
    return Response(status_code=200)


@router.delete("/v4/tags/{tag}", responses=EMPTY_200, response_class=Response)
async def delete_tag(
    tag: Name, app: AppDep, ctx: ContextDep, platform: str | None = None
) -> Response:
    """Take the tag from every device (of `platform`, comma-separated, if given)."""
    on = platforms(platform)
    await run_in_threadpool(ledger.delete_tag, ctx.engine, app.app_key, tag, on, limits(ctx))
    return Response(status_code=200)


class TagStatus(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"result": True}]})

    result: bool


@router.get("/v4/tags/{tag}/registration_ids/{registration_id}", response_model=TagStatus)
async def device_has_tag(
    tag: Name,
    registration_id: Annotated[str, Path(min_length=1, max_length=2048)],
    app: AppDep,
    ctx: ContextDep,
) -> TagStatus:
    """Whether the device has the tag (404 for a device this app does not have)."""
    found = await run_in_threadpool(
        ledger.device_has_tag, ctx.engine, app.app_key, tag, registration_id
    )
    return TagStatus(result=found)


class AliasDevices(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"registration_ids": ["120c83f760363f06840"]}]}
    )

    registration_ids: list[str]


@router.get("/v4/aliases/{alias}", response_model=AliasDevices)
async def alias_devices(
    alias: Name, app: AppDep, ctx: ContextDep, platform: str | None = None
) -> AliasDevices:
    """The devices bound to the alias (of `platform`, comma-separated, if given); an alias
    nobody has answers an empty list."""
    on = platforms(platform)
    found = await run_in_threadpool(ledger.alias_devices, ctx.engine, app.app_key, alias, on)
    return AliasDevices(registration_ids=found)


@router.delete("/v4/aliases/{alias}", responses=EMPTY_200, response_class=Response)
async def delete_alias(
    alias: Name, app: AppDep, ctx: ContextDep, platform: str | None = None
) -> Response:
    """Unbind the alias from its devices (of `platform`, if given); 200, empty body."""
    on = platforms(platform)
    await run_in_threadpool(ledger.delete_alias, ctx.engine, app.app_key, alias, on)
    return Response(status_code=200)
