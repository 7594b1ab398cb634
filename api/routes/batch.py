"""EngageLab's batch single push: `POST /v4/batch/push/regid` and `/v4/batch/push/alias`, up
to 500 requests, each to one registration id or one alias with its own content. Each request
that is valid and reaches its target becomes a push of its own (own msg_id, own journey);
the others get an error under their target, and nothing of theirs is stored."""

import asyncio
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api.deps import AppDep, ContextDep
from api.errors import CODES, ApiError, located
from api.routes.push import accept_and_start
from relance import ledger
from relance.db import App
from relance.models import PushRequest

router = APIRouter(tags=["push"])

MAX_REQUESTS = 500
# EngageLab's "no suitable push target found".
NO_TARGET = 21011
# Requests of one batch accepted and started at once.
CONCURRENCY = 8


class BatchPushIn(BaseModel):
    """Each request: `target` plus EngageLab's `platform`, `notification`, `message`,
    `options`, `custom_args`; relance also takes `request_id`, `resend` and `callback_url`
    per request. Requests are checked one by one: a bad one is an error under its target."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "requests": [
                        {
                            "target": "120c83f760363f06840",
                            "platform": "android",
                            "notification": {"alert": "Your order has shipped"},
                        }
                    ]
                }
            ]
        },
    )

    requests: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_REQUESTS)

    @model_validator(mode="after")
    def _targets(self) -> "BatchPushIn":
        """Results are keyed by target: each request needs one of its own."""
        seen: set[str] = set()
        for i, request in enumerate(self.requests):
            target = request.get("target")
            where = f"requests[{i}].target"
            if not isinstance(target, str) or not target or len(target) > 2048:
                raise ValueError(f"{where}: expected a registration id or an alias")
            if target in seen:
                raise ValueError(f"{where}: {target!r} appears twice; one request per target")
            seen.add(target)
        return self


class BatchError(BaseModel):
    code: int
    message: str


class BatchResult(BaseModel):
    target: str
    success: bool
    msg_id: int | None = None
    error: BatchError | None = None


class BatchPushOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": {
                        "120c83f760363f06840": {
                            "target": "120c83f760363f06840",
                            "success": True,
                            "msg_id": 1795429543454486250,
                        },
                        "unknown-device": {
                            "target": "unknown-device",
                            "success": False,
                            "error": {"code": 21011, "message": "No suitable push target found"},
                        },
                    }
                }
            ]
        }
    )

    results: dict[str, BatchResult]


BODY_FIELDS = ("platform", "notification", "message", "options")
TOP_FIELDS = ("custom_args", "request_id", "resend", "callback_url")


def _push_request(kind: str, item: dict[str, Any]) -> PushRequest:
    unknown = sorted(set(item) - {"target", *BODY_FIELDS, *TOP_FIELDS})
    if unknown:
        raise ValueError(f"{unknown[0]}: not a field of a batch push request")
    return PushRequest.model_validate(
        {
            "from": "push",
            "to": {kind: [item["target"]]},
            "body": {k: item[k] for k in BODY_FIELDS if k in item},
            **{k: item[k] for k in TOP_FIELDS if k in item},
        }
    )


def _failed(target: str, code: int, message: str) -> BatchResult:
    return BatchResult(target=target, success=False, error=BatchError(code=code, message=message))


async def _one(
    ctx: ContextDep, app: App, kind: str, item: dict[str, Any], known: set[str] | None
) -> BatchResult:
    target = item["target"]
    try:
        request = _push_request(kind, item)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function"))
        field, message = located(loc or "body", dict(err))
        return _failed(target, CODES[400], f"{field}: {message}")
    except ValueError as exc:
        return _failed(target, CODES[400], str(exc))
    if known is not None and target not in known:
        return _failed(target, NO_TARGET, "No suitable push target found: no such registration id")
    try:
        accepted = await accept_and_start(ctx, app, request)
    except ledger.LedgerError as exc:
        if exc.field == "to":
            return _failed(target, NO_TARGET, f"No suitable push target found: {exc.message}")
        return _failed(target, CODES[400], f"{exc.field}: {exc.message}")
    except ApiError as exc:
        return _failed(target, CODES.get(exc.status, 21000 + exc.status), exc.message)
    return BatchResult(target=target, success=True, msg_id=int(accepted.msg_id))


async def _batch(
    ctx: ContextDep, app: App, kind: Literal["registration_id", "alias"], body: BatchPushIn
) -> BatchPushOut:
    known: set[str] | None = None
    if kind == "registration_id":
        # Unlike POST /v4/push, a batch does not register unknown ids: an unknown one is an
        # error under its target, as EngageLab answers.
        targets = [item["target"] for item in body.requests]
        known = await run_in_threadpool(
            ledger.valid_registration_ids, ctx.engine, app.app_key, targets
        )
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(item: dict[str, Any]) -> BatchResult:
        async with slots:
            return await _one(ctx, app, kind, item, known)

    results = await asyncio.gather(*(one(item) for item in body.requests))
    return BatchPushOut(results={r.target: r for r in results})


@router.post("/v4/batch/push/regid", response_model=BatchPushOut, response_model_exclude_none=True)
async def batch_push_regid(body: BatchPushIn, app: AppDep, ctx: ContextDep) -> BatchPushOut:
    """Up to 500 pushes, each to one registered device (`target` is its registration id),
    each with its own content, msg_id and journey. Per-target errors: 21011 the registration
    id is unknown or its token invalid, 21003 the request is invalid."""
    return await _batch(ctx, app, "registration_id", body)


@router.post("/v4/batch/push/alias", response_model=BatchPushOut, response_model_exclude_none=True)
async def batch_push_alias(body: BatchPushIn, app: AppDep, ctx: ContextDep) -> BatchPushOut:
    """Up to 500 pushes, each to the device of one alias (`target`), each with its own content,
    msg_id and journey. Per-target errors: 21011 no valid device has the alias, 21003 the
    request is invalid."""
    return await _batch(ctx, app, "alias", body)
