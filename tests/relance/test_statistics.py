"""EngageLab's statistics read from the ledger, on SQLite and PostgreSQL: per-device totals
with the funnel per stage, another app's msg_id left out, and one push's lifecycle per device."""

import pytest
from sqlalchemy.engine import Engine

from relance import ledger
from relance.ledger import NotFound
from tests.relance.test_ledger import app, ev, push, register, send

__all__ = ["app"]  # the fixture, shared with test_ledger


def test_message_stats_are_the_funnel_counted_per_device(engine: Engine, app: str) -> None:
    rids = ["a", "b", "c", "d"]
    register(engine, app, *({"registration_id": r} for r in rids))
    msg_id = push(engine, app, {"registration_id": rids})
    send(engine, msg_id, 0, dead=frozenset("d"))
    ledger.ingest_events(engine, app, [ev(msg_id, "a", "clicked"), ev(msg_id, "b", "displayed")])
    ledger.select_resend_audience(engine, msg_id, 1)  # b and c
    assert send(engine, msg_id, 1) == ["b", "c"]
    ledger.ingest_events(engine, app, [ev(msg_id, "b", "clicked", stage=1)])
    other_app = ledger.create_app(engine, "other")[0]
    theirs = push(engine, other_app, {"registration_id": ["x"]})

    stats = ledger.message_stats(engine, app, [msg_id, "unknown", theirs, msg_id])
    assert list(stats) == [msg_id]
    s = stats[msg_id]
    f = ledger.funnel(engine, msg_id)
    # b and c got two stages each and count once; d's only send failed; c never answered.
    assert (s.targets, s.sent, s.delivered, s.impressions, s.clicks, s.failed) == (4, 3, 2, 2, 2, 1)
    assert (s.delivered, s.impressions, s.clicks) == (f.delivered, f.displayed, f.clicked)
    assert s.stages == f.stages and s.clicked_after_resend == 1
    assert ledger.message_stats(engine, other_app, [msg_id]) == {}


def test_lifecycle_of_one_push_per_device(engine: Engine, app: str) -> None:
    register(engine, app, *({"registration_id": r} for r in "abc"))
    msg_id = push(engine, app, {"registration_id": ["a", "b", "c"]})
    send(engine, msg_id, 0, dead=frozenset("c"))
    ledger.ingest_events(engine, app, [ev(msg_id, "a", "clicked")])

    life = ledger.message_lifecycle(engine, app, msg_id, ["a", "b", "c", "z", "a"])
    assert list(life) == ["a", "b", "c", "z"]
    assert life["a"].status == "click" and life["a"].stages[0].clicked_at is not None
    assert life["b"].status == "sent" and [s.status for s in life["b"].stages] == ["sent"]
    assert life["c"].status == "sent_failed" and life["c"].stages[0].error
    assert life["z"].status is None and life["z"].stages == []

    other_app = ledger.create_app(engine, "other")[0]
    with pytest.raises(NotFound):
        ledger.message_lifecycle(engine, other_app, msg_id, ["a"])
