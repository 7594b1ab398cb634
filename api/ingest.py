"""The one path of a status event into relance, whichever door it came in by: stored in the
ledger (queued behind other event writes on SQLite), then its journeys marked for a coalesced
signal and its app's callback forwarder woken."""

from fastapi.concurrency import run_in_threadpool

from api.deps import Context
from relance import ledger, metrics
from relance.models import StatusEventIn


async def ingest(
    ctx: Context,
    app_key: str,
    events: list[StatusEventIn],
    invalid_tokens: dict[str, str] | None = None,
) -> ledger.IngestResult:
    """Acknowledge only what is committed: the signal and the wake come after the commit."""
    async with ctx.event_writes:
        result = await run_in_threadpool(
            ledger.ingest_events, ctx.engine, app_key, events, invalid_tokens
        )
    metrics.count_events((e.status for e in events), result.accepted, result.duplicates)
    if result.accepted:
        ctx.coalescer.mark(result.msg_ids)
    if result.callbacks_queued:
        ctx.coalescer.wake_app(app_key)
    return result
