"""POST /v4/devices: the device registry that `to.tag`, `to.alias`, `"all"` and templates read."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from api.deps import AppDep, ContextDep
from relance import ledger
from relance.models import DeviceBatch

router = APIRouter(tags=["devices"])


class DevicesStored(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"stored": 1}]})

    stored: int


@router.post("/v4/devices", response_model=DevicesStored)
async def register_devices(batch: DeviceBatch, app: AppDep, ctx: ContextDep) -> DevicesStored:
    """Register or update devices (platform, tags, alias, template attributes)."""
    stored = await run_in_threadpool(ledger.upsert_devices, ctx.engine, app.app_key, batch.devices)
    return DevicesStored(stored=stored)
