"""The ledger reads behind the dashboard, on SQLite and PostgreSQL: an app's pushes by state
and date, when each stage went, its failed sends and invalidated tokens; never another app's."""

from datetime import timedelta

from sqlalchemy.engine import Engine

from relance import ledger
from relance.db import utcnow
from relance.states import JourneyState
from tests.relance.test_ledger import push, register, send


def test_pushes_by_state_and_date_of_one_app_only(engine: Engine) -> None:
    shop, other = ledger.create_app(engine, "shop")[0], ledger.create_app(engine, "other")[0]
    register(engine, shop, {"registration_id": "a"}, {"registration_id": "b"})
    register(engine, other, {"registration_id": "z"})
    first = push(engine, shop, {"registration_id": ["a"]})
    second = push(engine, shop, {"registration_id": ["a", "b"]})
    theirs = push(engine, other, {"registration_id": ["z"]})
    ledger.set_state(engine, first, JourneyState.completed)

    listed = [p.msg_id for p in ledger.list_pushes(engine, shop)]
    assert listed == [second, first]  # newest first, not the other app's
    assert theirs not in listed
    done = ledger.list_pushes(engine, shop, state="completed")
    assert [p.msg_id for p in done] == [first]
    now = utcnow()
    assert ledger.list_pushes(engine, shop, since=now + timedelta(minutes=1)) == []
    assert len(ledger.list_pushes(engine, shop, until=now + timedelta(minutes=1))) == 2
    assert ledger.list_pushes(engine, shop, until=now - timedelta(hours=1)) == []
    assert len(ledger.list_pushes(engine, shop, limit=1)) == 1


def test_stage_slots_send_errors_and_invalidated_tokens(engine: Engine) -> None:
    shop, other = ledger.create_app(engine, "shop")[0], ledger.create_app(engine, "other")[0]
    devices = [{"registration_id": r, "platform": "ios"} for r in ("a", "b", "dead")]
    register(engine, shop, *devices)
    msg_id = push(engine, shop, {"registration_id": ["a", "b", "dead"]})
    before = utcnow()
    send(engine, msg_id, 0, dead=frozenset({"dead"}))

    (slot,) = ledger.stage_slots(engine, msg_id)
    assert (slot.stage, slot.held_until, slot.deliveries, slot.sent) == (0, None, 3, 2)
    assert slot.first_sent_at is not None and slot.last_sent_at is not None
    assert slot.first_sent_at <= slot.last_sent_at

    (error,) = ledger.recent_send_errors(engine, shop, before - timedelta(days=1))
    assert (error.msg_id, error.registration_id, error.platform) == (msg_id, "dead", "ios")
    assert error.error == "Unregistered"
    assert ledger.recent_send_errors(engine, shop, utcnow() + timedelta(minutes=1)) == []
    assert ledger.recent_send_errors(engine, other, before - timedelta(days=1)) == []

    (tokens,) = ledger.invalidated_tokens(engine, shop, before - timedelta(seconds=1))
    assert (tokens.platform, tokens.count) == ("ios", 1)
    assert ledger.invalidated_tokens(engine, shop, utcnow() + timedelta(minutes=1)) == []
    assert ledger.invalidated_tokens(engine, other, before - timedelta(days=1)) == []
