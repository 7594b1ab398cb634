"""POST /v4/callbacks/engagelab: EngageLab's status callbacks, when relance sends through
EngageLab. Its address check (echostr), its X-CALLBACK-ID signature, and its rows as relance
status events (a dead token invalidates the device)."""

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict

from api.deps import ContextDep
from api.errors import ApiError, ErrorOut
from api.ingest import ingest
from relance import ledger
from relance.credentials import EngageLabCredentials
from relance.engagelab_callbacks import (
    CallbackSignatureError,
    echostr_reply,
    parse_callback,
    verify_callback_signature,
)

router = APIRouter(tags=["relay"])


class RelayAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"accepted": 2, "duplicates": 0, "skipped": 1}]}
    )

    accepted: int
    duplicates: int
    skipped: int


@router.post(
    "/v4/callbacks/engagelab",
    response_model=RelayAccepted,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},  # the echostr check
        401: {"model": ErrorOut, "description": "X-CALLBACK-ID signature is wrong."},
    },
    # The body is read by hand (two forms): documented, so clients and the fuzzer send one.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "examples": [{"echostr": "a1b2c3"}, {"total": 0, "rows": []}],
                    }
                }
            },
        }
    },
)
async def engagelab_callback(request: Request, ctx: ContextDep) -> Response:
    """EngageLab's callback body `{"total", "rows": [...]}`, or its `{"echostr"}` check.

    Rows find their push through the `custom_args` relance gave EngageLab. When the app's
    EngageLab credentials name a callback username and secret, the signature is required."""
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):  # invalid JSON or UTF-8, or nested past Python's stack
        raise ApiError(400, "body: expected valid JSON", "body") from None
    if not isinstance(body, dict):
        raise ApiError(
            400, 'body: expected a JSON object, {"total", "rows"} or {"echostr"}', "body"
        )
    reply = echostr_reply(body)
    if reply is not None:
        return PlainTextResponse(reply)
    try:
        parsed = parse_callback(body)
    except ValueError as exc:
        raise ApiError(400, str(exc), "rows") from None
    by_app: dict[str, list[Any]] = {}
    for relay in parsed.events:
        try:
            push = await run_in_threadpool(ledger.get_push, ctx.engine, None, relay.event.msg_id)
        except ledger.NotFound:
            continue
        by_app.setdefault(push.app_key, []).append(relay)
    accepted = duplicates = 0
    for app_key, relays in by_app.items():
        await run_in_threadpool(
            _check_signature, ctx, app_key, request.headers.get("x-callback-id")
        )
        invalid = {
            r.event.registration_id: r.event.error or "EngageLab: invalid registration id"
            for r in relays
            if r.token_invalid
        }
        result = await ingest(ctx, app_key, [r.event for r in relays], invalid)
        accepted, duplicates = accepted + result.accepted, duplicates + result.duplicates
    skipped = len(parsed.skipped) + len(parsed.events) - sum(len(r) for r in by_app.values())
    return JSONResponse(
        RelayAccepted(accepted=accepted, duplicates=duplicates, skipped=skipped).model_dump()
    )


def _check_signature(ctx: ContextDep, app_key: str, header: str | None) -> None:
    config = next(
        (c for c in ledger.provider_configs(ctx.engine, app_key) if c.provider == "engagelab"),
        None,
    )
    if config is None:
        return
    credentials = EngageLabCredentials.model_validate(config.credentials)
    if credentials.callback_username and credentials.callback_secret:
        try:
            verify_callback_signature(
                header,
                username=credentials.callback_username,
                secret=credentials.callback_secret,
                now=time.time(),
            )
        except CallbackSignatureError as exc:
            raise ApiError(401, f"X-CALLBACK-ID: {exc}", "X-CALLBACK-ID") from None
