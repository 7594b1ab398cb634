"""GET/PUT /v4/app/policy: when and how often the app's pushes may reach a device."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import AppDep, ContextDep
from relance import ledger
from relance.ledger.apps import policy_of
from relance.timing import AppPolicy

router = APIRouter(tags=["policy"])


@router.get("/v4/app/policy", response_model=AppPolicy)
async def get_policy(app: AppDep, ctx: ContextDep) -> AppPolicy:
    """The app's default time zone, quiet hours, frequency caps and throttle."""
    return policy_of(await run_in_threadpool(ledger.get_app, ctx.engine, app.app_key))


@router.put("/v4/app/policy", response_model=AppPolicy)
async def put_policy(policy: AppPolicy, app: AppDep, ctx: ContextDep) -> AppPolicy:
    """Replace the app's policy; a field left out goes back to its default (no quiet hours, no
    caps, no throttle, UTC). Pushes accepted from then on follow it (an API process may use
    the previous one for up to RELANCE_AUTH_CACHE_SECONDS)."""
    stored = await run_in_threadpool(ledger.set_policy, ctx.engine, app.app_key, policy)
    ctx.auth.forget(app.app_key)
    return stored
