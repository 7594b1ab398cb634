"""The materialise_audience activity in Temporal's ActivityEnvironment, on SQLite and
PostgreSQL: it heartbeats its cursor, a retry resumes from the heartbeat it is handed, and it
ends with the push's recipients counted."""

import dataclasses
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.audience import AudienceActivities
from relance import ledger
from relance.journey import AudienceChunkInput, MaterialiseInput, MaterialiseResult
from tests.relance.test_audience import rows
from tests.relance.test_ledger import push_request, register

EXPECTED = sorted(f"m{i:02d}" for i in range(11))


@pytest.fixture
def msg_id(engine: Engine) -> str:
    app = ledger.create_app(engine, "shop")[0]
    register(engine, app, *({"registration_id": r, "tags": ["many"]} for r in EXPECTED))
    register(engine, app, {"registration_id": "other", "tags": ["few"]})
    return ledger.accept_push(engine, app, push_request({"tag": ["many"]})).push.msg_id


def environment(heartbeat: Any = None, attempt: int = 1) -> tuple[ActivityEnvironment, list[Any]]:
    """An activity environment that records heartbeats; `heartbeat` as a retry would get it."""
    env, beats = ActivityEnvironment(), []
    env.info = dataclasses.replace(
        env.info, attempt=attempt, heartbeat_details=[] if heartbeat is None else [heartbeat]
    )
    env.on_heartbeat = lambda *details: beats.append(details[0])
    return env, beats


async def test_it_writes_the_audience_page_by_page_heartbeating_its_cursor(
    engine: Engine, msg_id: str
) -> None:
    env, beats = environment()
    result = await env.run(
        AudienceActivities(engine, page_size=4).materialise_audience,
        MaterialiseInput(msg_id=msg_id),
    )
    assert result == MaterialiseResult(recipients=11)
    assert len(beats) == 3 and all(set(b) == {"cursor"} for b in beats)
    cursors = [b["cursor"] for b in beats]
    assert cursors == sorted(cursors)
    assert rows(engine, msg_id) == (EXPECTED, EXPECTED)
    push = ledger.get_push(engine, None, msg_id)
    assert push.audience_ready and push.recipients == 11


async def test_a_retry_resumes_from_its_heartbeat(engine: Engine, msg_id: str) -> None:
    """The first attempt died after two pages (and a third, written but not heartbeaten):
    the retry starts from the last heartbeat and ends with everyone once."""
    cursors, cursor = [], 0
    for _page in range(3):
        last, _ = ledger.materialise_page(engine, msg_id, cursor, 3)
        assert last is not None
        cursors.append(cursor := last)
    heartbeat = {"cursor": cursors[1]}
    assert ledger.get_push(engine, None, msg_id).recipients == 0

    env, beats = environment(heartbeat, attempt=2)
    result = await env.run(
        AudienceActivities(engine, page_size=3).materialise_audience,
        MaterialiseInput(msg_id=msg_id),
    )
    assert result.recipients == 11
    assert beats and beats[0]["cursor"] > heartbeat["cursor"]
    assert len(beats) == 2  # 5 devices left after the heartbeat: two pages, not four
    assert rows(engine, msg_id) == (EXPECTED, EXPECTED)


async def test_a_ready_audience_returns_at_once(engine: Engine, msg_id: str) -> None:
    activities = AudienceActivities(engine, page_size=100)
    env, _ = environment()
    first = await env.run(activities.materialise_audience, MaterialiseInput(msg_id=msg_id))
    env, beats = environment({"cursor": "garbage"}, attempt=3)
    again = await env.run(activities.materialise_audience, MaterialiseInput(msg_id=msg_id))
    assert first == again == MaterialiseResult(recipients=11) and beats == []


async def test_an_unknown_push_is_not_retried(engine: Engine) -> None:
    env, _ = environment()
    with pytest.raises(ApplicationError) as info:
        await env.run(
            AudienceActivities(engine).materialise_audience, MaterialiseInput(msg_id="nope")
        )
    assert info.value.non_retryable


async def test_on_postgresql_the_tables_an_audience_grows_get_statistics_as_it_goes(
    engine: Engine,
) -> None:
    """A first big push on a fresh ledger: without statistics for `recipient` and `delivery`,
    PostgreSQL planned each page's deliveries against every recipient written so far (page
    times growing 0.19 -> 0.50 s over 100,000 devices, bench_fanout.py). The activity ANALYZEs
    them while it writes, so the planner knows at least the first page's rows."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite plans without statistics")
    app = ledger.create_app(engine, "big")[0]
    devices = [{"registration_id": f"g{i:05d}", "tags": ["grow"]} for i in range(2_000)]
    register(engine, app, *devices)
    msg_id = ledger.accept_push(engine, app, push_request({"tag": ["grow"]})).push.msg_id
    env, _ = environment()
    result = await env.run(
        AudienceActivities(engine, page_size=500).materialise_audience,
        MaterialiseInput(msg_id=msg_id),
    )
    assert result.recipients == 2_000
    with engine.connect() as conn:
        known = dict(
            conn.exec_driver_sql(
                "SELECT c.relname, c.reltuples FROM pg_class c JOIN pg_stat_user_tables s "
                "ON s.relid = c.oid WHERE c.relname IN ('recipient', 'delivery') "
                "AND s.last_analyze IS NOT NULL"
            ).all()
        )
    assert set(known) == {"recipient", "delivery"}
    assert all(rows >= 500 for rows in known.values()), known


async def test_materialise_chunk_streams_the_audience_chunk_by_chunk(
    engine: Engine, msg_id: str
) -> None:
    """The streamed journey's activity: 11 devices in chunks of 4, each call one chunk and its
    delivery-id bound, the last with the push's recipients; each heartbeats (a worker lost
    mid-chunk is noticed after the heartbeat timeout). An unknown push is not retried."""
    activities = AudienceActivities(engine, chunk_size=4)
    results, cursor = [], 0
    while True:
        env, beats = environment()
        chunk = await env.run(
            activities.materialise_chunk, AudienceChunkInput(msg_id=msg_id, after_device_id=cursor)
        )
        assert beats
        results.append(chunk)
        if chunk.cursor is None:
            break
        cursor = chunk.cursor
    assert [r.recipients for r in results] == [None, None, 11]
    assert 0 < results[0].upto_id < results[1].upto_id < results[2].upto_id
    assert rows(engine, msg_id) == (EXPECTED, EXPECTED)
    env, _ = environment()
    with pytest.raises(ApplicationError) as info:
        await env.run(activities.materialise_chunk, AudienceChunkInput(msg_id="nope"))
    assert info.value.non_retryable


async def test_the_first_chunk_sizes_the_others_to_at_most_max_chunks(
    engine: Engine, msg_id: str
) -> None:
    """Each chunk is one send: the first chunk (2 devices) counts the 9 left, and the others
    share them so that the audience comes in 3 chunks, not 6. Each next chunk is asked for
    the size the previous one said, as the journey does."""
    activities = AudienceActivities(engine, chunk_size=2, max_chunks=3)
    sizes, cursor, limit, upto = [], 0, None, 0
    while True:
        env, _ = environment()
        chunk = await env.run(
            activities.materialise_chunk,
            AudienceChunkInput(msg_id=msg_id, after_device_id=cursor, limit=limit),
        )
        sizes.append(chunk.upto_id - upto)
        upto = chunk.upto_id
        if chunk.cursor is None:
            break
        cursor, limit = chunk.cursor, chunk.next_limit
    assert sizes == [2, 5, 4]
    assert chunk.recipients == 11
    assert rows(engine, msg_id) == (EXPECTED, EXPECTED)
