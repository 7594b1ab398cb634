"""EngageLab's statistics: `/v4/status/detail`, `/v4/status/batch/message` and
`/v4/status/message`, read from relance's funnel (what `client.status.*` of EngageLab's SDKs
calls). A msg_id that is unknown, or another app's, is left out of the answer."""

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import ConfigDict, RootModel
from pydantic.config import JsonDict

from api.deps import AppDep, ContextDep
from api.errors import ApiError
from relance import ledger

router = APIRouter(tags=["statistics"])

MAX_MESSAGE_IDS = 100
MAX_REGISTRATION_IDS = 1000

_STATS_EXAMPLE: JsonDict = {
    "targets": 200,
    "sent": 200,
    "delivered": 196,
    "impressions": 170,
    "clicks": 52,
    "failed": 4,
    "state": "completed",
    "clicked_after_resend": 17,
    "stages": [
        {
            "stage": 0,
            "targeted": 200,
            "sent": 200,
            "failed": 4,
            "skipped": 0,
            "delivered": 196,
            "displayed": 167,
            "clicked": 35,
            "delivered_rate": 0.98,
            "displayed_rate": 0.835,
            "clicked_rate": 0.175,
        },
        {
            "stage": 1,
            "targeted": 161,
            "sent": 161,
            "failed": 0,
            "skipped": 0,
            "delivered": 150,
            "displayed": 60,
            "clicked": 17,
            "delivered_rate": 0.9317,
            "displayed_rate": 0.3727,
            "clicked_rate": 0.1056,
        },
    ],
}


class MessageDetail(RootModel[dict[str, ledger.MessageStats]]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"1795429543454486250": _STATS_EXAMPLE}]}
    )


class BatchItem(ledger.MessageStats):
    message_id: str


class BatchMessageDetail(RootModel[list[BatchItem]]):
    model_config = ConfigDict(
        json_schema_extra={"examples": [[{"message_id": "1795429543454486250", **_STATS_EXAMPLE}]]}
    )


class MessageLifecycle(RootModel[dict[str, ledger.DeviceLifecycle]]):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "120c83f760363f06840": {
                        "status": "click",
                        "stages": [
                            {
                                "stage": 0,
                                "status": "sent",
                                "sent_at": "2026-11-23T10:00:01Z",
                                "delivered_at": "2026-11-23T10:00:02Z",
                                "displayed_at": None,
                                "clicked_at": None,
                                "failed_at": None,
                                "error": None,
                            },
                            {
                                "stage": 1,
                                "status": "sent",
                                "sent_at": "2026-11-23T18:00:00Z",
                                "delivered_at": "2026-11-23T18:00:01Z",
                                "displayed_at": "2026-11-23T18:00:01Z",
                                "clicked_at": "2026-11-23T18:04:00Z",
                                "failed_at": None,
                                "error": None,
                            },
                        ],
                    },
                    "1a0018970a8e5a7a9b1": {"status": None, "stages": []},
                }
            ]
        }
    )


def id_list(value: str, field: str, most: int) -> list[str]:
    ids = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not ids:
        raise ApiError(400, f"{field}: expected one or more ids separated by commas", field)
    if len(ids) > most:
        raise ApiError(400, f"{field}: at most {most} ids, got {len(ids)}", field)
    if any(len(v) > 2048 for v in ids):
        raise ApiError(400, f"{field}: an id is longer than 2048 characters", field)
    return ids


# Published as `id_list` reads it: at least one id between the commas.
_IDS = r"[^,\s]"
_MESSAGE_IDS = Query(
    description=f"msg_ids separated by commas, up to {MAX_MESSAGE_IDS}.", pattern=_IDS
)


@router.get("/v4/status/detail", response_model=MessageDetail)
async def message_detail(
    app: AppDep, ctx: ContextDep, message_ids: str = _MESSAGE_IDS
) -> MessageDetail:
    """Each push's targets, sent, delivered, impressions (displayed) and clicks, counted per
    device (a device counts once however many stages reached it), with relance's funnel per
    stage. A msg_id that is unknown or another app's is left out."""
    ids = id_list(message_ids, "message_ids", MAX_MESSAGE_IDS)
    stats = await run_in_threadpool(ledger.message_stats, ctx.engine, app.app_key, ids)
    return MessageDetail(stats)


@router.get("/v4/status/batch/message", response_model=BatchMessageDetail)
async def batch_message_detail(
    app: AppDep, ctx: ContextDep, message_ids: str = _MESSAGE_IDS
) -> BatchMessageDetail:
    """The statistics of /v4/status/detail as a list, each with its message_id, in the order
    asked. A msg_id that is unknown or another app's is left out."""
    ids = id_list(message_ids, "message_ids", MAX_MESSAGE_IDS)
    stats = await run_in_threadpool(ledger.message_stats, ctx.engine, app.app_key, ids)
    return BatchMessageDetail(
        [BatchItem(message_id=msg_id, **s.model_dump()) for msg_id, s in stats.items()]
    )


@router.get("/v4/status/message", response_model=MessageLifecycle)
async def message_lifecycle(
    app: AppDep,
    ctx: ContextDep,
    message_id: str = Query(min_length=1, max_length=64),
    registration_ids: str = Query(
        description=f"Registration ids separated by commas, up to {MAX_REGISTRATION_IDS}.",
        pattern=_IDS,
    ),
) -> MessageLifecycle:
    """One push on each given device: every stage's status and times, and the furthest point
    reached in EngageLab's callback words. A device the push did not target answers
    `{"status": null, "stages": []}`; an unknown msg_id answers 404."""
    rids = id_list(registration_ids, "registration_ids", MAX_REGISTRATION_IDS)
    try:
        lifecycle = await run_in_threadpool(
            ledger.message_lifecycle, ctx.engine, app.app_key, message_id, rids
        )
    except ledger.NotFound as exc:
        raise ApiError(404, f"message_id: {exc.message}", "message_id") from exc
    return MessageLifecycle(lifecycle)
