"""Set-based event ingest, on SQLite and PostgreSQL: concurrent batches, events without a
stage, order inside one batch, errors, and agreement with the ORM form of the same rule."""

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from relance import ledger
from relance.db import Delivery, Recipient
from relance.ledger.transitions import DELIVERY_STATE, RECIPIENT_STATE, apply_status
from relance.models import EventStatus, StatusEventIn
from tests.relance.test_ledger import app, push, register, send  # noqa: F401 — the fixture

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def ev(
    msg_id: str, rid: str, status: str, stage: int | None = 0, at: datetime = T0, **kw: str
) -> StatusEventIn:
    return StatusEventIn.model_validate(
        {"msg_id": msg_id, "registration_id": rid, "status": status, "stage": stage, "at": at} | kw
    )


def rows(engine: Engine, msg_id: str, rid: str) -> tuple[Recipient, dict[int, Delivery]]:
    with Session(engine) as s:
        r = s.execute(
            select(Recipient).where(Recipient.msg_id == msg_id, Recipient.registration_id == rid)
        ).scalar_one()
        ds = s.execute(
            select(Delivery).where(Delivery.msg_id == msg_id, Delivery.registration_id == rid)
        ).scalars()
        return r, {d.stage: d for d in ds}


def utc(t: datetime | None) -> datetime | None:
    return t if t is None or t.tzinfo else t.replace(tzinfo=UTC)


def test_concurrent_batches_count_each_first_transition_once(engine: Engine, app: str) -> None:  # noqa: F811
    rids = [f"d{i:03d}" for i in range(60)]
    msg_id = push(engine, app, {"registration_id": rids})
    batches = [
        [ev(msg_id, r, status) for r in rids[i : i + 10]]
        for status in ("delivered", "displayed", "clicked")
        for i in range(0, len(rids), 10)
    ]
    batches += batches[:4]  # and some retried
    random.Random(7).shuffle(batches)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: ledger.ingest_events(engine, app, b), batches))
    assert sum(r.accepted for r in results) == 3 * len(rids)
    assert sum(r.duplicates for r in results) == 40
    p = ledger.progress(engine, msg_id)
    assert (p.delivered, p.displayed, p.clicked, p.stopped) == (60, 60, 60, 60)


def test_an_event_without_a_stage_counts_for_the_latest_stage_sent(
    engine: Engine,
    app: str,  # noqa: F811
) -> None:
    register(engine, app, {"registration_id": "a"}, {"registration_id": "b"})
    msg_id = push(engine, app, {"registration_id": ["a", "b"]})
    send(engine, msg_id, 0)
    assert ledger.select_resend_audience(engine, msg_id, 1) == 2
    send(engine, msg_id, 1)
    result = ledger.ingest_events(engine, app, [ev(msg_id, "a", "clicked", stage=None)])
    assert result.accepted == 1
    again = ledger.ingest_events(engine, app, [ev(msg_id, "a", "clicked", stage=1)])
    assert again.duplicates == 1  # the same transition: stage 1, found by itself
    _, deliveries = rows(engine, msg_id, "a")
    assert deliveries[0].clicked_at is None and deliveries[1].clicked_at is not None
    assert deliveries[1].delivered_at is not None  # implied, on the delivery too


def test_one_batch_is_applied_in_its_order(engine: Engine, app: str) -> None:  # noqa: F811
    msg_id = push(engine, app, {"registration_id": ["a", "b"]})
    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    ledger.ingest_events(
        engine,
        app,
        [
            ev(msg_id, "a", "clicked", at=t1),  # first: stamps delivered and displayed too
            ev(msg_id, "a", "delivered", at=t2),
            ev(msg_id, "b", "failed", at=t1, error="Unregistered"),
            ev(msg_id, "b", "delivered", at=t2),  # a delivery after all: no longer failed for good
        ],
    )
    a, (da,) = rows(engine, msg_id, "a")[0], rows(engine, msg_id, "a")[1].values()
    assert [utc(a.delivered_at), utc(a.displayed_at), utc(a.clicked_at)] == [t1, t1, t1]
    assert [utc(da.delivered_at), utc(da.clicked_at)] == [t1, t1]
    b, (db,) = rows(engine, msg_id, "b")[0], rows(engine, msg_id, "b")[1].values()
    assert (utc(b.failed_at), b.error, utc(b.delivered_at)) == (t1, "Unregistered", t2)
    assert (utc(db.failed_at), db.error) == (t1, "Unregistered")
    assert b.stopped  # it stopped when it failed; a stop is never undone
    p = ledger.progress(engine, msg_id)
    assert (p.delivered, p.displayed, p.clicked, p.failed, p.stopped) == (2, 1, 1, 1, 2)


def test_a_later_failure_keeps_the_first_error(engine: Engine, app: str) -> None:  # noqa: F811
    msg_id = push(engine, app, {"registration_id": ["a"]})
    ledger.ingest_events(engine, app, [ev(msg_id, "a", "failed", error="first")])
    ledger.ingest_events(engine, app, [ev(msg_id, "a", "failed", stage=1, error="second")])
    r, deliveries = rows(engine, msg_id, "a")
    assert r.error == "first" and deliveries[0].error == "first"
    assert ledger.progress(engine, msg_id).failed == 1


def test_set_based_ingest_agrees_with_the_orm_rule(engine: Engine, app: str) -> None:  # noqa: F811
    """Random event streams, ingested in random batches, end where `apply_status` on ORM
    objects ends for the same stream: one rule, two forms."""
    rnd = random.Random(11)
    rids = [f"r{i}" for i in range(30)]
    msg_id = push(engine, app, {"registration_id": rids})
    statuses = ["sent", "delivered", "displayed", "clicked", "failed"]
    stream = [
        ev(msg_id, rnd.choice(rids), rnd.choice(statuses), at=T0 + timedelta(seconds=i), error="e")
        for i in range(200)
    ]
    expected: dict[str, tuple[Recipient, Delivery]] = {
        r: (Recipient(msg_id=msg_id, registration_id=r), Delivery(msg_id=msg_id, stage=0))
        for r in rids
    }
    counts: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    for e in stream:
        if (e.registration_id, e.status.value) in seen:
            continue  # a repeat changes nothing
        seen.add((e.registration_id, e.status.value))
        r, d = expected[e.registration_id]
        assert e.at is not None
        apply_status("not_clicked", r, d, EventStatus(e.status), e.at, e.error, counts)
    i = 0
    while i < len(stream):
        n = rnd.randint(1, 40)
        ledger.ingest_events(engine, app, stream[i : i + n])
        i += n
    for rid, (want_r, want_d) in expected.items():
        got_r, got_d = rows(engine, msg_id, rid)
        for c in RECIPIENT_STATE:
            got = getattr(got_r, c)
            assert (utc(got) if c.endswith("_at") else got) == getattr(want_r, c), (rid, c)
        for c in DELIVERY_STATE:
            got = getattr(got_d[0], c)
            assert (utc(got) if c.endswith("_at") else got) == getattr(want_d, c), (rid, c)
    p = ledger.progress(engine, msg_id)
    assert (p.delivered, p.displayed, p.clicked, p.failed, p.stopped) == tuple(
        counts[f"n_{k}"] for k in ("delivered", "displayed", "clicked", "failed", "stopped")
    )


def test_a_devices_own_reports_mark_it_seen_once_a_minute(engine: Engine, app: str) -> None:  # noqa: F811
    rids = ["seen-a", "seen-b", "seen-c"]
    msg_id = push(engine, app, {"registration_id": rids})
    ledger.ingest_events(engine, app, [ev(msg_id, r, "delivered") for r in rids[:2]])
    later = T0 + timedelta(seconds=30)  # inside the minute: not written again
    ledger.ingest_events(engine, app, [ev(msg_id, "seen-a", "displayed", at=later)])
    much_later = T0 + timedelta(minutes=5)
    ledger.ingest_events(engine, app, [ev(msg_id, "seen-b", "clicked", at=much_later)])
    seen = {
        s.registration_id: s.last_online_time
        for s in ledger.device_status(engine, app, rids, online_seconds=60)
    }
    assert seen == {"seen-a": T0, "seen-b": much_later, "seen-c": None}
