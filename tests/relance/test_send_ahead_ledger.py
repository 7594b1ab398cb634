"""The send-ahead queue: a due row is leased to one taker at a time, comes due again when its
lease ends (a worker that died), and is gone once done; on SQLite and PostgreSQL."""

import time

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from relance import ledger
from relance.db import SendAhead, utcnow
from relance.ledger import send_ahead
from relance.models import PushRequest


def queue(engine: Engine, *msg_ids: str) -> None:
    with engine.begin() as conn:
        for msg_id in msg_ids:
            conn.execute(insert(SendAhead), {"msg_id": msg_id, "due_at": utcnow(), "attempts": 0})


def test_a_row_goes_to_one_taker_until_its_lease_ends(engine: Engine) -> None:
    queue(engine, "m-1", "m-2")
    assert sorted(send_ahead.take(engine, 10, lease_seconds=0.5)) == [("m-1", 0), ("m-2", 0)]
    assert send_ahead.take(engine, 10, lease_seconds=0.5) == []  # leased
    time.sleep(0.6)
    assert sorted(send_ahead.take(engine, 1, lease_seconds=60)) in ([("m-1", 1)], [("m-2", 1)])
    send_ahead.done(engine, ["m-1", "m-2"])
    assert send_ahead.pending(engine) == 0


def test_a_row_put_off_comes_due_at_its_time(engine: Engine) -> None:
    queue(engine, "m-1")
    assert send_ahead.take(engine, 10, lease_seconds=60) == [("m-1", 0)]
    send_ahead.later(engine, "m-1", utcnow())
    assert send_ahead.take(engine, 10, lease_seconds=60) == [("m-1", 1)]


PUSH = {
    "from": "push",
    "to": {"registration_id": ["a", "b"]},
    "body": {"platform": "android", "notification": {"android": {"alert": "Hi"}}},
    "resend": {
        "trigger": {"condition": "not_clicked", "within": "2h"},
        "stages": [{"after": "1h", "notification": {"alert": "Still hi"}}],
    },
}


def test_a_push_sent_ahead_is_forgotten_only_while_no_worker_took_it(engine: Engine) -> None:
    key, _ = ledger.create_app(engine, "t")
    request = PushRequest.model_validate(PUSH)
    untaken = ledger.accept_push(engine, key, request, send_ahead=True).push.msg_id
    assert ledger.forget_push(engine, untaken, sent_ahead=True)
    assert send_ahead.pending(engine) == 0  # its row went with it: no worker will take it

    taken = ledger.accept_push(engine, key, request, send_ahead=True).push.msg_id
    assert send_ahead.take(engine, 10, lease_seconds=60) == [(taken, 0)]
    assert not ledger.forget_push(engine, taken, sent_ahead=True)  # stage 0 may be out
    assert ledger.get_push(engine, key, taken).recipients == 2


def test_the_journey_takes_stage_0_over_only_from_no_worker(engine: Engine) -> None:
    assert send_ahead.take_over(engine, "none") is None  # not sent ahead, or done
    queue(engine, "due", "held")
    assert send_ahead.take(engine, 1, lease_seconds=30) == [("due", 0)]
    # "held" is due and untaken: the journey's now, and no worker takes it after.
    assert send_ahead.take_over(engine, "held") is None
    assert send_ahead.take(engine, 10, lease_seconds=30) == []
    # "due" is leased by a worker that may be sending: the journey waits out the lease.
    wait = send_ahead.take_over(engine, "due")
    assert wait is not None and 25 < wait <= 30
    assert send_ahead.pending(engine) == 1


def _sent(items: list[ledger.Outbound]) -> list[ledger.SendOutcomeRow]:
    return [ledger.SendOutcomeRow(i.delivery_id, i.registration_id, ok=True) for i in items]


def test_a_round_claims_its_pushes_at_once_and_ends_each_row_with_its_outcomes(
    engine: Engine,
) -> None:
    key, _ = ledger.create_app(engine, "t")
    request = PushRequest.model_validate(PUSH)
    ids = [ledger.accept_push(engine, key, request, send_ahead=True).push.msg_id for _ in range(3)]
    rows = dict(send_ahead.take(engine, 10, lease_seconds=60))
    assert sorted(rows) == sorted(ids)
    assert sorted(send_ahead.pushes(engine, [*ids, "gone"])) == sorted(ids)

    pages = send_ahead.claim_first_pages(engine, [(m, key) for m in ids], limit=10)
    for m in ids:
        assert sorted(i.registration_id for i in pages[m].items) == ["a", "b"]
        assert pages[m].exhausted and not any(i.resend for i in pages[m].items)
    # Claimed and unrecorded: whoever claims them again must ask the provider first.
    again = send_ahead.claim_first_pages(engine, [(ids[2], key)], limit=10)
    assert [i.resend for i in again[ids[2]].items] == [True, True]

    # Two pushes finish; the third (a provider asked it to wait) keeps its row; a push gone
    # since it was claimed is skipped, and its row goes.
    queue(engine, "gone")
    outcomes = {m: _sent(pages[m].items) for m in ids[:2]}
    outcomes["gone"] = [ledger.SendOutcomeRow(10**9, "x", ok=True)]
    send_ahead.record_first_pages(engine, outcomes, finished=[*ids[:2], "gone"])
    assert send_ahead.pending(engine) == 1
    assert send_ahead.take_over(engine, ids[2]) is not None  # still leased to its worker
    for m, sent in ((ids[0], 2), (ids[1], 2), (ids[2], 0)):
        counts, _ = ledger.stage_result(engine, m, 0)
        assert counts.get("sent", 0) == sent, (m, counts)
