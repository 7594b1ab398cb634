"""The atomic steps of when and how often, on SQLite and PostgreSQL, with real concurrency:
journeys racing for a device's last frequency-cap slot, and pushes sharing the app's
per-minute throttle."""

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from relance import ledger
from relance.ledger import timing as timed
from relance.models import PushRequest
from relance.timing import FrequencyCap

CAP = FrequencyCap.model_validate({"max": 2, "per": "1d"})
AT = datetime(2026, 11, 23, 10, tzinfo=UTC)


def push_to(engine: Engine, app_key: str, rid: str) -> str:
    request = PushRequest.model_validate(
        {"to": {"registration_id": [rid]}, "body": {"notification": {"alert": "hi"}}}
    )
    return ledger.accept_push(engine, app_key, request).push.msg_id


def race(n: int, work: Any) -> list[Any]:
    barrier, results = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_eight_journeys_race_for_the_last_slot_and_one_sends(engine: Engine) -> None:
    app_key, _ = ledger.create_app(engine, "shop")
    claim = timed.Claim(zones=None, at=AT, caps=[CAP])
    first = push_to(engine, app_key, "dev-1")
    assert len(timed.claim_timed(engine, first, 0, 0, 10, claim).items) == 1  # 1 of 2 used
    racers = [push_to(engine, app_key, "dev-1") for _ in range(8)]

    pages = race(8, lambda i: timed.claim_timed(engine, racers[i], 0, 0, 10, claim))

    assert sum(len(p.items) for p in pages) == 1
    assert sum(p.skipped["frequency_capped"] for p in pages) == 7
    # A day later the window has rolled on; a retry of the winner's claim is not counted twice.
    later = timed.Claim(zones=None, at=AT + timedelta(days=1, seconds=1), caps=[CAP])
    again = push_to(engine, app_key, "dev-1")
    assert len(timed.claim_timed(engine, again, 0, 0, 10, later).items) == 1


def test_the_app_throttle_is_shared_by_concurrent_pushes(engine: Engine) -> None:
    app_key, _ = ledger.create_app(engine, "shop")
    minute = AT.replace(second=0)
    granted = race(8, lambda _: timed.take_tokens(engine, app_key, minute, 50, 120))
    assert sum(granted) == 120
    assert Counter(granted)[0] >= 5
    timed.give_back(engine, app_key, minute, 20)
    assert timed.take_tokens(engine, app_key, minute, 50, 120) == 20
    assert timed.take_tokens(engine, app_key, minute + timedelta(minutes=1), 50, 120) == 50


def test_counts_older_than_any_window_are_pruned(engine: Engine) -> None:
    from sqlmodel import Session, select

    from relance.db import DeviceSend, ThrottleMinute

    app_key, _ = ledger.create_app(engine, "shop")
    claim = timed.Claim(zones=None, at=AT, caps=[CAP])
    timed.claim_timed(engine, push_to(engine, app_key, "dev-1"), 0, 0, 10, claim)
    later = timed.Claim(zones=None, at=AT + timedelta(days=91), caps=[CAP])
    timed.claim_timed(engine, push_to(engine, app_key, "dev-1"), 0, 0, 10, later)
    timed.take_tokens(engine, app_key, AT, 1, 10)
    timed.take_tokens(engine, app_key, AT + timedelta(hours=2), 1, 10)
    with Session(engine) as session:
        sends = list(session.exec(select(DeviceSend.at)))
        minutes = list(session.exec(select(ThrottleMinute.minute)))
    assert [s.replace(tzinfo=UTC) for s in sends] == [later.at]
    assert [m.replace(tzinfo=UTC) for m in minutes] == [AT + timedelta(hours=2)]
