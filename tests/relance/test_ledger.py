"""The ledger on SQLite and PostgreSQL: apps, accepting pushes, status events, sending, funnel."""

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from relance import ledger
from relance.db import CallbackRow, Delivery, Device, Push, Recipient, StatusEvent
from relance.ledger import LedgerError, NotFound, SendOutcomeRow
from relance.models import DeviceIn, PushRequest, StatusEventIn

NOT_CLICKED = {
    "trigger": {"condition": "not_clicked", "within": "2h"},
    "stages": [
        {"after": "1h", "notification": {"title": "Still on"}},
        {"after": "3h", "notification": {"append": "3 more stories"}},
    ],
}


@pytest.fixture
def app(engine: Engine) -> str:
    return ledger.create_app(engine, "shop")[0]


def register(engine: Engine, app: str, *devices: dict[str, Any]) -> None:
    ledger.upsert_devices(engine, app, [DeviceIn.model_validate(d) for d in devices])


def push_request(to: Any, request_id: str | None = None, platform: Any = "all") -> PushRequest:
    return PushRequest.model_validate(
        {
            "to": to,
            "body": {"platform": platform, "notification": {"alert": "Flash sale"}},
            "request_id": request_id,
            "resend": NOT_CLICKED,
        }
    )


def materialise(engine: Engine, msg_id: str, page: int = 2) -> int:
    """What the journey's first activity does: the audience into the ledger, page by page."""
    cursor: int | None = 0
    while cursor is not None:
        cursor, _ = ledger.materialise_page(engine, msg_id, cursor, page)
    return ledger.finish_materialise(engine, msg_id)


def push(engine: Engine, app: str, to: Any, **kw: Any) -> str:
    """Accept a push and materialise its audience, as accepting and the journey do."""
    msg_id = ledger.accept_push(engine, app, push_request(to, **kw)).push.msg_id
    materialise(engine, msg_id)
    return msg_id


def recipients(engine: Engine, msg_id: str) -> set[str]:
    with Session(engine) as s:
        q = select(Recipient.registration_id).where(Recipient.msg_id == msg_id)
        return set(s.execute(q).scalars())


def count(engine: Engine, table: Any, **where: Any) -> int:
    q = select(func.count()).select_from(table)
    for column, value in where.items():
        q = q.where(getattr(table, column) == value)
    with Session(engine) as s:
        return int(s.execute(q).scalar_one())


def ev(msg_id: str, rid: str, status: str, stage: int | None = 0) -> StatusEventIn:
    return StatusEventIn.model_validate(
        {"msg_id": msg_id, "registration_id": rid, "status": status, "stage": stage}
    )


def send(engine: Engine, msg_id: str, stage: int, dead: frozenset[str] = frozenset()) -> list[str]:
    """Send a stage as the send activity does; tokens in `dead` come back as unregistered."""
    sent, after = [], 0
    while True:
        page = ledger.claim_batch(engine, msg_id, stage, after, 2)
        batch = page.items
        if page.last_id is None:
            return sent
        after = page.last_id
        ledger.record_outcomes(
            engine,
            msg_id,
            stage,
            [
                SendOutcomeRow(
                    o.delivery_id,
                    o.registration_id,
                    ok=o.registration_id not in dead,
                    error="Unregistered" if o.registration_id in dead else None,
                    token_invalid=o.registration_id in dead,
                    title="T",
                    alert=f"alert {stage}",
                )
                for o in batch
            ],
        )
        sent += [o.registration_id for o in batch if o.registration_id not in dead]
        if page.exhausted:
            return sent


# ---- apps ---------------------------------------------------------------------------------


def test_create_app_and_authenticate(engine: Engine) -> None:
    key, secret = ledger.create_app(engine, "shop")
    found = ledger.authenticate(engine, key, secret)
    assert found is not None and found.app_key == key and found.name == "shop"
    assert ledger.authenticate(engine, key, secret + "x") is None
    assert ledger.authenticate(engine, "nope", secret) is None


def test_create_app_with_a_given_key_rotates_its_secret(engine: Engine) -> None:
    key, old = ledger.create_app(engine, "shop", app_key="k1", secret="old-secret")
    ledger.create_app(engine, "shop", app_key="k1", secret="new-secret")
    assert ledger.authenticate(engine, key, old) is None
    assert ledger.authenticate(engine, key, "new-secret") is not None


# ---- accepting pushes ---------------------------------------------------------------------


def test_same_request_id_returns_the_same_push(engine: Engine, app: str) -> None:
    first = ledger.accept_push(engine, app, push_request({"registration_id": ["a", "b"]}, "r-1"))
    again = ledger.accept_push(engine, app, push_request({"registration_id": ["a", "b"]}, "r-1"))
    assert first.created and not again.created
    assert again.push.msg_id == first.push.msg_id
    assert count(engine, Push) == 1
    assert count(engine, Recipient) == 2


def test_the_accepted_push_is_what_the_ledger_holds(engine: Engine, app: str) -> None:
    register(engine, app, {"registration_id": "a", "platform": "ios"})
    request = push_request({"registration_id": ["a", "new", "a"]}, "r-1")
    accepted = ledger.accept_push(engine, app, request)
    stored = ledger.get_push(engine, app, accepted.push.msg_id)
    assert accepted.push.model_dump() == stored.model_dump()
    assert stored.recipients == 2 and stored.audience_ready and stored.state == "accepted"
    assert count(engine, Delivery, msg_id=stored.msg_id, stage=0, status="pending") == 2
    with Session(engine) as s:
        q = select(Recipient.registration_id, Recipient.platform)
        assert {tuple(r) for r in s.execute(q)} == {("a", "ios"), ("new", "android")}


def test_a_request_retried_after_its_devices_went_invalid_is_the_same_push(
    engine: Engine, app: str
) -> None:
    first = ledger.accept_push(engine, app, push_request({"registration_id": ["a"]}, "r-1"))
    with Session(engine) as s:
        s.execute(update(Device).values(valid=False))
        s.commit()
    again = ledger.accept_push(engine, app, push_request({"registration_id": ["a"]}, "r-1"))
    assert again.push.msg_id == first.push.msg_id and not again.created
    with pytest.raises(LedgerError) as info:
        ledger.accept_push(engine, app, push_request({"registration_id": ["a"]}, "r-2"))
    assert info.value.field == "to"
    assert count(engine, Push) == 1


def test_racing_the_same_request_id_of_a_tag_push_records_one_push(
    engine: Engine, app: str
) -> None:
    register(engine, app, *({"registration_id": f"d{i}", "tags": ["news"]} for i in range(3)))
    start = threading.Barrier(8)

    def attempt(_: int) -> tuple[str, bool]:
        start.wait()
        accepted = ledger.accept_push(engine, app, push_request({"tag": ["news"]}, "race"))
        return accepted.push.msg_id, accepted.created

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert len({msg_id for msg_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert count(engine, Push) == 1 and count(engine, Recipient) == 0


def test_request_ids_are_per_app(engine: Engine, app: str) -> None:
    other = ledger.create_app(engine, "other")[0]
    mine = push(engine, app, {"registration_id": ["a"]}, request_id="r-1")
    theirs = push(engine, other, {"registration_id": ["a"]}, request_id="r-1")
    assert mine != theirs


def test_racing_the_same_request_id_records_one_push(engine: Engine, app: str) -> None:
    register(engine, app, *({"registration_id": f"d{i}"} for i in range(5)))
    start = threading.Barrier(8)

    def attempt(_: int) -> tuple[str, bool]:
        start.wait()
        accepted = ledger.accept_push(
            engine, app, push_request({"registration_id": [f"d{i}" for i in range(5)]}, "race")
        )
        return accepted.push.msg_id, accepted.created

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert len({msg_id for msg_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert count(engine, Push) == 1
    assert count(engine, Recipient) == 5
    assert count(engine, Delivery) == 5


def test_racing_pushes_to_a_new_device_are_all_accepted(engine: Engine, app: str) -> None:
    start = threading.Barrier(8)

    def attempt(i: int) -> str:
        start.wait()
        to = {"registration_id": ["brand-new"]}
        return ledger.accept_push(engine, app, push_request(to, f"r-{i}")).push.msg_id

    with ThreadPoolExecutor(8) as pool:
        assert len(set(pool.map(attempt, range(8)))) == 8
    assert count(engine, Device, registration_id="brand-new") == 1


def test_empty_audience_is_refused(engine: Engine, app: str) -> None:
    register(engine, app, {"registration_id": "a", "tags": ["sport"]})
    with pytest.raises(LedgerError) as info:
        push(engine, app, {"tag": ["news"]})
    assert info.value.field == "to"
    assert count(engine, Push) == 0


def test_invalid_devices_are_left_out(engine: Engine, app: str) -> None:
    register(engine, app, *({"registration_id": r} for r in "abc"))
    with Session(engine) as s:
        s.execute(update(Device).where(Device.registration_id == "b").values(valid=False))
        s.commit()
    assert recipients(engine, push(engine, app, {"registration_id": ["a", "b", "c"]})) == {"a", "c"}
    assert recipients(engine, push(engine, app, "all")) == {"a", "c"}
    with pytest.raises(LedgerError) as info:
        push(engine, app, {"registration_id": ["b"]})
    assert info.value.field == "to"


def test_tag_alias_and_all_resolve_from_the_registry(engine: Engine, app: str) -> None:
    other = ledger.create_app(engine, "other")[0]
    register(
        engine,
        app,
        {"registration_id": "a", "tags": ["news"]},
        {"registration_id": "b", "tags": ["news", "sport"]},
        {"registration_id": "c", "tags": ["sport"]},
        {"registration_id": "i", "tags": ["news"], "platform": "ios"},
        {"registration_id": "d", "alias": "alice"},
        {"registration_id": "e", "alias": "alice"},
        {"registration_id": "f", "alias": "bob"},
    )
    register(engine, other, {"registration_id": "x", "tags": ["news"], "alias": "alice"})
    assert recipients(engine, push(engine, app, {"tag": ["news"]})) == {"a", "b", "i"}
    assert recipients(engine, push(engine, app, {"tag": ["news", "sport"]})) == {"a", "b", "c", "i"}
    assert recipients(engine, push(engine, app, {"tag": ["news"]}, platform="ios")) == {"i"}
    assert recipients(engine, push(engine, app, {"alias": ["alice"]})) == {"d", "e"}
    assert recipients(engine, push(engine, app, {"alias": ["alice", "bob"]})) == {"d", "e", "f"}
    assert recipients(engine, push(engine, app, "all")) == set("abcidef")


# ---- status events ------------------------------------------------------------------------


@pytest.fixture
def msg_id(engine: Engine, app: str) -> str:
    return push(engine, app, {"registration_id": ["a", "b", "c"]})


def test_a_duplicate_event_changes_nothing(engine: Engine, app: str, msg_id: str) -> None:
    first = ledger.ingest_events(engine, app, [ev(msg_id, "a", "delivered")])
    assert (first.accepted, first.duplicates, first.msg_ids) == (1, 0, {msg_id})
    before = ledger.progress(engine, msg_id)
    again = ledger.ingest_events(engine, app, [ev(msg_id, "a", "delivered")])
    assert (again.accepted, again.duplicates) == (0, 1)
    assert ledger.progress(engine, msg_id) == before
    assert before.delivered == 1
    assert count(engine, StatusEvent, msg_id=msg_id) == 1


def test_duplicates_inside_one_batch_count_once(engine: Engine, app: str, msg_id: str) -> None:
    result = ledger.ingest_events(engine, app, [ev(msg_id, "a", "clicked")] * 3)
    assert (result.accepted, result.duplicates) == (1, 2)
    assert ledger.progress(engine, msg_id).clicked == 1


def test_a_click_before_delivery_counts_as_delivered_and_displayed(
    engine: Engine, app: str, msg_id: str
) -> None:
    ledger.ingest_events(engine, app, [ev(msg_id, "a", "clicked")])
    with Session(engine) as s:
        r = s.execute(
            select(Recipient).where(Recipient.msg_id == msg_id, Recipient.registration_id == "a")
        ).scalar_one()
        d = s.execute(
            select(Delivery).where(
                Delivery.msg_id == msg_id, Delivery.stage == 0, Delivery.registration_id == "a"
            )
        ).scalar_one()
    assert None not in (r.delivered_at, r.displayed_at, r.clicked_at)
    assert None not in (d.delivered_at, d.displayed_at, d.clicked_at)
    assert r.stopped
    p = ledger.progress(engine, msg_id)
    assert (p.delivered, p.displayed, p.clicked, p.stopped) == (1, 1, 1, 1)

    late = ledger.ingest_events(
        engine, app, [ev(msg_id, "a", "delivered"), ev(msg_id, "a", "displayed")]
    )
    assert late.accepted == 2  # stored for the record, but already counted
    assert ledger.progress(engine, msg_id) == p


def test_another_apps_msg_id_is_not_found(engine: Engine, app: str, msg_id: str) -> None:
    other = ledger.create_app(engine, "other")[0]
    theirs = push(engine, other, {"registration_id": ["a"]})
    with pytest.raises(NotFound) as info:
        ledger.ingest_events(engine, app, [ev(msg_id, "a", "clicked"), ev(theirs, "a", "clicked")])
    assert info.value.field == "events[1].msg_id"
    assert ledger.progress(engine, msg_id).clicked == 0
    assert count(engine, StatusEvent) == 0


def test_an_event_for_a_non_recipient_is_refused(engine: Engine, app: str, msg_id: str) -> None:
    with pytest.raises(LedgerError) as info:
        ledger.ingest_events(engine, app, [ev(msg_id, "a", "clicked"), ev(msg_id, "zz", "clicked")])
    assert not isinstance(info.value, NotFound)
    assert info.value.field == "events[1].registration_id"
    assert count(engine, StatusEvent) == 0


def test_progress_and_seq(engine: Engine, app: str, msg_id: str) -> None:
    p0 = ledger.progress(engine, msg_id)
    assert (p0.recipients, p0.delivered, p0.clicked) == (3, 0, 0)

    ledger.ingest_events(engine, app, [ev(msg_id, "a", "delivered"), ev(msg_id, "b", "displayed")])
    p1 = ledger.progress(engine, msg_id)
    assert (p1.delivered, p1.displayed, p1.clicked, p1.stopped) == (2, 1, 0, 0)
    assert p1.seq > p0.seq

    ledger.ingest_events(engine, app, [ev(msg_id, "a", "delivered"), ev(msg_id, "c", "sent")])
    assert ledger.progress(engine, msg_id) == p1  # a duplicate and a "sent": nothing changed

    ledger.ingest_events(engine, app, [ev(msg_id, "c", "failed")])
    p2 = ledger.progress(engine, msg_id)
    assert (p2.failed, p2.stopped) == (1, 1)  # failed before any delivery: stops for good
    assert p2.seq > p1.seq


# ---- selecting and sending ---------------------------------------------------------------


def test_resend_audience_is_who_still_matches(engine: Engine, app: str) -> None:
    rids = ["a", "b", "c", "d"]
    register(engine, app, *({"registration_id": r} for r in rids))
    earlier = push(engine, app, {"registration_id": rids})
    msg_id = push(engine, app, {"registration_id": rids})
    send(engine, earlier, 0, dead=frozenset("b"))  # b's token died on an earlier push
    send(engine, msg_id, 0)
    ledger.ingest_events(engine, app, [ev(msg_id, "a", "clicked"), ev(msg_id, "d", "delivered")])

    assert ledger.select_resend_audience(engine, msg_id, 1) == 2
    assert ledger.select_resend_audience(engine, msg_id, 1) == 2
    with Session(engine) as s:
        queued = s.execute(
            select(Delivery.registration_id).where(Delivery.msg_id == msg_id, Delivery.stage == 1)
        ).scalars()
        assert sorted(queued) == ["c", "d"]


def test_batches_page_through_a_stage(engine: Engine, app: str) -> None:
    register(
        engine,
        app,
        {"registration_id": "a", "attributes": {"name": "Ann"}},
        {"registration_id": "b", "platform": "ios"},
        {"registration_id": "c"},
    )
    msg_id = push(engine, app, {"registration_id": ["a", "b", "c"]})
    first = ledger.claim_batch(engine, msg_id, 0, 0, 2)
    assert [(o.registration_id, o.platform, o.resend) for o in first.items] == [
        ("a", "android", False),
        ("b", "ios", False),
    ]
    assert first.items[0].attributes == {"name": "Ann"}
    assert first.last_id is not None and not first.exhausted
    rest = ledger.claim_batch(engine, msg_id, 0, first.last_id, 2)
    assert [o.registration_id for o in rest.items] == ["c"] and rest.exhausted
    assert ledger.claim_batch(engine, msg_id, 0, rest.last_id or 0, 2).items == []

    # Claimed but never recorded (a crash mid-send): the next attempt sees them as resends.
    again = ledger.claim_batch(engine, msg_id, 0, 0, 10)
    assert [o.resend for o in again.items] == [True, True, True]


def test_a_dead_token_invalidates_the_device(engine: Engine, app: str) -> None:
    register(engine, app, *({"registration_id": r} for r in "abc"))
    msg_id = push(engine, app, {"registration_id": ["a", "b", "c"]})
    assert send(engine, msg_id, 0, dead=frozenset("c")) == ["a", "b"]

    assert ledger.stage_result(engine, msg_id, 0)[0] == {"sent": 2, "failed": 1}
    p = ledger.progress(engine, msg_id)
    assert (p.failed, p.stopped) == (1, 1)
    with Session(engine) as s:
        device = s.execute(select(Device).where(Device.registration_id == "c")).scalar_one()
        assert not device.valid and device.invalid_reason == "Unregistered"
        alerts = dict(
            s.execute(
                select(Delivery.registration_id, Delivery.alert).where(Delivery.msg_id == msg_id)
            ).all()
        )
    assert alerts == {"a": "alert 0", "b": "alert 0", "c": "alert 0"}

    assert recipients(engine, push(engine, app, {"registration_id": ["a", "b", "c"]})) == {"a", "b"}
    with pytest.raises(LedgerError):
        push(engine, app, {"registration_id": ["c"]})
    register(engine, app, {"registration_id": "c"})  # the app registers the token again
    assert recipients(engine, push(engine, app, {"registration_id": ["c"]})) == {"c"}


def test_funnel_per_stage(engine: Engine, app: str) -> None:
    rids = ["a", "b", "c", "d"]
    register(engine, app, *({"registration_id": r} for r in rids))
    msg_id = push(engine, app, {"registration_id": rids})
    send(engine, msg_id, 0, dead=frozenset("d"))
    ledger.ingest_events(engine, app, [ev(msg_id, "a", "clicked"), ev(msg_id, "b", "displayed")])

    assert ledger.select_resend_audience(engine, msg_id, 1) == 2  # b and c
    ledger.ingest_events(engine, app, [ev(msg_id, "c", "clicked", stage=0)])  # c clicks late
    assert send(engine, msg_id, 1) == ["b"]  # c stopped meanwhile: skipped
    ledger.ingest_events(engine, app, [ev(msg_id, "b", "clicked", stage=1)])

    f = ledger.funnel(engine, msg_id)
    assert (f.recipients, f.delivered, f.displayed, f.clicked, f.failed) == (4, 3, 3, 3, 1)
    s0, s1 = f.stages
    assert (s0.stage, s0.targeted, s0.sent, s0.failed, s0.skipped) == (0, 4, 3, 1, 0)
    assert (s0.delivered, s0.displayed, s0.clicked) == (3, 3, 2)
    assert s0.clicked_rate == round(2 / 3, 4)
    assert (s1.stage, s1.targeted, s1.sent, s1.failed, s1.skipped) == (1, 2, 1, 0, 1)
    assert (s1.delivered, s1.displayed, s1.clicked, s1.clicked_rate) == (1, 1, 1, 1.0)
    assert f.clicked_after_resend == 1


def test_funnel_of_an_unknown_push(engine: Engine) -> None:
    with pytest.raises(NotFound):
        ledger.funnel(engine, "nope")


def test_a_page_bigger_than_one_statement_records_each_outcome_once(
    engine: Engine, app: str
) -> None:
    """A page of 1,200 (more than one multi-row statement holds on SQLite), with every kind of
    outcome: each delivery ends in its own status, with its time and content; one event per
    final outcome; recording the same page again (a retried activity) adds nothing."""
    n = 1_200
    ledger.upsert_devices(
        engine, app, [DeviceIn(registration_id=f"t{i:04d}", tags=["big"]) for i in range(n)]
    )
    msg_id = push(engine, app, {"tag": ["big"]})
    page = ledger.claim_batch(engine, msg_id, 0, 0, n)
    assert len(page.items) == n

    def kind(i: int) -> str:  # 800 sent, 200 not yet (a 429), 200 failed
        return {1: "pending", 2: "failed"}.get(i % 6, "sent")

    def title(i: int) -> str:  # two contents: 600 and 200 sent, several statements per page
        return "T1" if i % 6 == 3 else "T0"

    rows = [
        SendOutcomeRow(
            o.delivery_id,
            o.registration_id,
            ok=kind(i) == "sent",
            error={"pending": "QUOTA_EXCEEDED", "failed": "INVALID_ARGUMENT"}.get(kind(i)),
            retry_after=30.0 if kind(i) == "pending" else None,
            title=title(i),
            alert="A",
        )
        for i, o in enumerate(page.items)
    ]
    ledger.record_outcomes(engine, msg_id, 0, rows)
    ledger.record_outcomes(engine, msg_id, 0, rows)

    with Session(engine) as s:
        found = {
            rid: (status, title, sent_at is not None)
            for rid, status, title, sent_at in s.execute(
                select(
                    Delivery.registration_id, Delivery.status, Delivery.title, Delivery.sent_at
                ).where(Delivery.msg_id == msg_id)
            ).all()
        }
    expected = {
        o.registration_id: (kind(i), title(i), kind(i) == "sent") for i, o in enumerate(page.items)
    }
    assert found == expected
    assert count(engine, StatusEvent, msg_id=msg_id, status="sent") == 800
    assert count(engine, StatusEvent, msg_id=msg_id, status="failed") == 200
    assert ledger.stage_result(engine, msg_id, 0)[0] == {"sent": 800, "pending": 200, "failed": 200}


def test_a_stages_sent_events_are_queued_for_each_callback_url_once(
    engine: Engine, app: str
) -> None:
    """A stage's "sent" events go to the app's callback URLs (one row per event and URL),
    the same page recorded again (a retried activity) queues nothing more, and a push of an
    app with no callback URL queues none while its events are still stored."""
    ledger.upsert_devices(
        engine, app, [DeviceIn(registration_id=f"r{i:02d}", tags=["cb"]) for i in range(6)]
    )

    def send(limit: int) -> list[int]:
        msg_id = push(engine, app, {"tag": ["cb"]})
        page = ledger.claim_batch(engine, msg_id, 0, 0, limit)
        rows = [
            SendOutcomeRow(o.delivery_id, o.registration_id, ok=True, title="T", alert="A")
            for o in page.items
        ]
        queued = [ledger.record_and_claim(engine, msg_id, 0, rows, page.last_id or 0, limit)[0]]
        queued.append(ledger.record_outcomes(engine, msg_id, 0, rows))
        assert count(engine, StatusEvent, msg_id=msg_id, status="sent") == 4
        queued.append(count(engine, CallbackRow, msg_id=msg_id))
        return queued

    assert send(4) == [0, 0, 0]
    ledger.set_callbacks(engine, app, ["https://a.example/cb", "https://b.example/cb"], None, None)
    assert send(4) == [8, 0, 8]


def test_a_page_is_recorded_with_the_next_claim_in_one_transaction(
    engine: Engine, app: str
) -> None:
    """How a stage in flight moves on: page 1's outcomes and page 2's claim in one call. Page 1
    ends sent, page 2 is `sending`; the same call again (an activity retried after the commit)
    records nothing twice and hands page 2 back as resends, to be asked about before sending."""
    ledger.upsert_devices(
        engine, app, [DeviceIn(registration_id=f"r{i:02d}", tags=["two"]) for i in range(10)]
    )
    msg_id = push(engine, app, {"tag": ["two"]})
    first = ledger.claim_batch(engine, msg_id, 0, 0, 5)
    rows = [
        SendOutcomeRow(o.delivery_id, o.registration_id, ok=True, title="T", alert="A")
        for o in first.items
    ]
    assert first.last_id is not None
    for attempt in range(2):
        _, second = ledger.record_and_claim(engine, msg_id, 0, rows, first.last_id, 5)
        assert [o.registration_id for o in second.items] == [f"r{i:02d}" for i in range(5, 10)]
        assert all(o.resend == (attempt == 1) for o in second.items)
    with Session(engine) as s:
        statuses = dict(
            s.execute(
                select(Delivery.registration_id, Delivery.status).where(Delivery.msg_id == msg_id)
            ).all()
        )
    assert statuses == {f"r{i:02d}": "sent" if i < 5 else "sending" for i in range(10)}
    assert count(engine, StatusEvent, msg_id=msg_id, status="sent") == 5
    assert ledger.stage_result(engine, msg_id, 0)[0] == {"sent": 5, "sending": 5}
