"""The journey's first activity: a tag, alias or "all" push's audience into the ledger, a page
at a time, so that accepting it costs the same whatever its size."""

import asyncio
from typing import Any

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from relance import ledger
from relance.journey import (
    AudienceChunkInput,
    AudienceChunkResult,
    MaterialiseInput,
    MaterialiseResult,
)

HEARTBEAT_EVERY = 5.0  # seconds


def _cursor(details: Any) -> int:
    """Heartbeat details come back untyped on a retry: rebuild the cursor explicitly."""
    if isinstance(details, dict):
        return int(details.get("cursor", 0) or 0)
    return 0


class AudienceActivities:
    def __init__(
        self, engine: Engine, page_size: int = 5000, chunk_size: int = 10_000, max_chunks: int = 8
    ) -> None:
        self.engine = engine
        # Devices per transaction: one page's recipients and deliveries, then a heartbeat.
        self.page_size = page_size
        # Devices in the first chunk of a streamed audience (one transaction, then a send
        # starts on it), and at least in each of the others; 0: the whole audience in one chunk.
        self.chunk_size = chunk_size
        # The most chunks an audience comes in (RELANCE_SEND_MAX_SHARDS): the first counts
        # the devices left, and the others share them.
        self.max_chunks = max_chunks

    @activity.defn
    async def materialise_chunk(self, inp: AudienceChunkInput) -> AudienceChunkResult:
        """The next chunk of the push's audience into the ledger (ledger.materialise_chunk): a
        retry writes the same chunk again, which adds nothing."""
        first = inp.after_device_id == 0
        if first:
            await asyncio.to_thread(ledger.refresh_statistics, self.engine)
        limit = inp.limit or (self.chunk_size if self.chunk_size > 0 else 2**31 - 1)
        write = asyncio.ensure_future(
            asyncio.to_thread(
                ledger.materialise_chunk,
                self.engine,
                inp.msg_id,
                inp.after_device_id,
                limit,
                first and self.max_chunks > 1,
            )
        )
        try:
            # One transaction, heartbeating while it runs: a worker lost mid-chunk is noticed
            # after the heartbeat timeout, not after the chunk's whole start-to-close.
            while not write.done():
                await asyncio.wait([write], timeout=HEARTBEAT_EVERY)
                activity.heartbeat({"after": inp.after_device_id})
            chunk = write.result()
        except ledger.NotFound as exc:
            raise ApplicationError(str(exc), non_retryable=True) from exc
        if chunk.cursor is not None:  # as materialise_audience does after each page
            await asyncio.to_thread(
                ledger.refresh_statistics, self.engine, ledger.GROWN_BY_AUDIENCE
            )
        next_limit = inp.limit
        if chunk.rest is not None:  # the others share what is left, none smaller than the first
            next_limit = max(limit, -(-chunk.rest // (self.max_chunks - 1)))
        return AudienceChunkResult(
            cursor=chunk.cursor,
            upto_id=chunk.upto_id,
            recipients=chunk.recipients,
            next_limit=next_limit,
        )

    @activity.defn
    async def materialise_audience(self, inp: MaterialiseInput) -> MaterialiseResult:
        """Write the push's Recipient and stage-0 Delivery rows page by page, heartbeating the
        last device id written; a retry resumes there (a page written again adds nothing).
        A push whose audience is ready (a registration_id list, or a finished attempt) returns
        at once."""
        try:
            push = await asyncio.to_thread(ledger.get_push, self.engine, None, inp.msg_id)
        except ledger.NotFound as exc:
            raise ApplicationError(str(exc), non_retryable=True) from exc
        if push.audience_ready:
            return MaterialiseResult(recipients=push.recipients)
        details = activity.info().heartbeat_details
        cursor: int | None = _cursor(details[0]) if details else 0
        await asyncio.to_thread(ledger.refresh_statistics, self.engine)
        while cursor is not None:
            cursor, _ = await asyncio.to_thread(
                ledger.materialise_page, self.engine, inp.msg_id, cursor, self.page_size
            )
            if cursor is not None:
                activity.heartbeat({"cursor": cursor})
                # PostgreSQL: ANALYZE what this audience grew once it outgrew its statistics
                # (a look at pg_stat_user_tables per page; nothing on SQLite).
                await asyncio.to_thread(
                    ledger.refresh_statistics, self.engine, ledger.GROWN_BY_AUDIENCE
                )
        recipients = await asyncio.to_thread(ledger.finish_materialise, self.engine, inp.msg_id)
        return MaterialiseResult(recipients=recipients)
