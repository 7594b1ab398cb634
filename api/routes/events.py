"""POST /v4/events: the native door for status events from devices, SDKs and the simulator."""

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from api.deps import AppDep, ContextDep
from api.ingest import ingest
from relance.models import EventBatch

router = APIRouter(tags=["events"])


class EventsAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"accepted": 1, "duplicates": 0}]})

    accepted: int
    duplicates: int


@router.post("/v4/events", response_model=EventsAccepted)
async def post_events(batch: EventBatch, app: AppDep, ctx: ContextDep) -> EventsAccepted:
    """Store a batch of status events; acknowledged only once committed to the ledger.

    Idempotent (a repeat changes nothing) and order-tolerant (a click implies delivered and
    displayed). Journeys learn of them through one coalesced signal per push."""
    result = await ingest(ctx, app.app_key, batch.events)
    return EventsAccepted(accepted=result.accepted, duplicates=result.duplicates)
