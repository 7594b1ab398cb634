"""Conversions, unsubscribes and the report, on the ledger (SQLite and PostgreSQL): the
attribution window, a repeated conversion counted once, an unsubscribed device kept out of
later stages and pushes, held-out recipients observed, and the report equal to the ledger."""

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from relance import ledger
from relance.db import Delivery, Device, Recipient, utcnow
from relance.ledger import LedgerError
from relance.models import PushRequest, StatusEventIn
from tests.relance.test_ledger import (  # noqa: F401 — the fixture
    NOT_CLICKED,
    app,
    materialise,
    register,
    send,
)


def accept(engine: Engine, app: str, to: Any, **options: Any) -> str:  # noqa: F811
    request = PushRequest.model_validate(
        {
            "to": to,
            "body": {"notification": {"alert": "Flash sale"}, "options": options},
            "resend": NOT_CLICKED,
        }
    )
    msg_id = ledger.accept_push(engine, app, request).push.msg_id
    materialise(engine, msg_id)
    return msg_id


def ev(msg_id: str, rid: str, status: str, **kw: Any) -> StatusEventIn:
    return StatusEventIn.model_validate(
        {"msg_id": msg_id, "registration_id": rid, "status": status} | kw
    )


def recipient(engine: Engine, msg_id: str, rid: str) -> Recipient:
    with Session(engine) as s:
        return s.execute(
            select(Recipient).where(Recipient.msg_id == msg_id, Recipient.registration_id == rid)
        ).scalar_one()


def test_a_conversion_counts_once_within_the_window_and_not_outside(
    engine: Engine,
    app: str,  # noqa: F811
) -> None:
    register(engine, app, *({"registration_id": r} for r in "abc"))
    msg_id = accept(engine, app, {"registration_id": ["a", "b", "c"]}, attribution_window="2h")
    send(engine, msg_id, 0)
    now = utcnow()
    result = ledger.ingest_events(
        engine,
        app,
        [
            ev(msg_id, "a", "converted", at=now + timedelta(hours=1), value=30, currency="EUR"),
            ev(msg_id, "a", "converted", at=now + timedelta(hours=1), value=30, currency="EUR"),
            ev(msg_id, "b", "converted", at=now + timedelta(hours=3), value=99),
        ],
    )
    assert (result.accepted, result.duplicates) == (2, 1)
    # A second, later conversion of the same recipient at the same stage changes nothing.
    later = ledger.ingest_events(
        engine, app, [ev(msg_id, "a", "converted", at=now + timedelta(hours=1, minutes=5))]
    )
    assert later.duplicates == 1
    a, b = recipient(engine, msg_id, "a"), recipient(engine, msg_id, "b")
    assert (a.converted_stage, a.conversion_value, a.conversion_currency) == (0, 30.0, "EUR")
    assert b.converted_at is None  # 3h after the send, outside the 2h window: not attributed
    stored = [e.status for e in ledger.list_events(engine, msg_id, 0, 100)]
    assert stored.count("converted") == 2  # b's is kept as an event, only not counted

    stage0 = ledger.funnel(engine, msg_id).stages[0]
    assert (stage0.converted, stage0.conversion_value, stage0.converted_rate) == (1, 30.0, 0.3333)
    report = ledger.report(engine, msg_id)
    assert report.attribution_window == "2h" and report.currencies == ["EUR"]
    assert (report.stages[0].converted, report.stages[0].conversion_value) == (1, 30.0)


def test_a_conversion_goes_to_the_latest_stage_before_it(engine: Engine, app: str) -> None:  # noqa: F811
    register(engine, app, {"registration_id": "a"})
    msg_id = accept(engine, app, {"registration_id": ["a"]})
    send(engine, msg_id, 0)
    assert ledger.select_resend_audience(engine, msg_id, 1) == 1
    send(engine, msg_id, 1)
    ledger.ingest_events(engine, app, [ev(msg_id, "a", "converted", value=5)])
    assert recipient(engine, msg_id, "a").converted_stage == 1
    assert [s.converted for s in ledger.report(engine, msg_id).stages] == [0, 1]


def test_an_unsubscribed_device_gets_no_later_stage_nor_push_until_it_registers_again(
    engine: Engine,
    app: str,  # noqa: F811
) -> None:
    register(engine, app, *({"registration_id": r, "tags": ["news"]} for r in "ab"))
    msg_id = accept(engine, app, {"registration_id": ["a", "b"]})
    other = accept(engine, app, {"registration_id": ["a", "b"]})  # another push, running too
    send(engine, msg_id, 0)
    send(engine, other, 0)
    ledger.ingest_events(engine, app, [ev(msg_id, "a", "unsubscribed")])
    assert ledger.select_resend_audience(engine, other, 1) == 1  # the device opted out
    assert send(engine, other, 1) == ["b"]
    a = recipient(engine, msg_id, "a")
    assert (a.unsubscribed_stage, a.stopped) == (0, True)
    assert ledger.select_resend_audience(engine, msg_id, 1) == 1  # b only
    assert send(engine, msg_id, 1) == ["b"]
    funnel = ledger.funnel(engine, msg_id)
    assert (funnel.stages[0].unsubscribed, funnel.stages[0].unsubscribed_rate) == (1, 0.5)

    later = accept(engine, app, {"tag": ["news"]})
    assert {r for r in ("a", "b") if _is_recipient(engine, later, r)} == {"b"}
    with pytest.raises(LedgerError):  # a push to it alone reaches nobody
        accept(engine, app, {"registration_id": ["a"]})

    register(engine, app, {"registration_id": "a", "tags": ["news"]})  # registers again
    again = accept(engine, app, {"tag": ["news"]})
    assert _is_recipient(engine, again, "a")


def _is_recipient(engine: Engine, msg_id: str, rid: str) -> bool:
    with Session(engine) as s:
        n = s.execute(
            select(func.count())
            .select_from(Recipient)
            .where(Recipient.msg_id == msg_id, Recipient.registration_id == rid)
        ).scalar_one()
    return bool(n)


def test_held_out_recipients_clicks_and_conversions_count(engine: Engine, app: str) -> None:  # noqa: F811
    rids = [f"d{i}" for i in range(4)]
    register(engine, app, *({"registration_id": r} for r in rids))
    msg_id = accept(engine, app, {"registration_id": rids})
    send(engine, msg_id, 0)
    assert ledger.select_resend_audience(engine, msg_id, 1) == 4
    with Session(engine) as s:  # what the journey's holdout does: d0 and d1 never sent
        s.execute(
            update(Delivery)
            .where(
                Delivery.msg_id == msg_id,
                Delivery.stage == 1,
                Delivery.registration_id.in_(["d0", "d1"]),  # type: ignore[attr-defined]
            )
            .values(status="held_out")
        )
        s.commit()
    assert sorted(send(engine, msg_id, 1)) == ["d2", "d3"]
    ledger.ingest_events(
        engine,
        app,
        [
            ev(msg_id, "d0", "clicked"),  # no stage: the latest sent or held out, stage 1
            ev(msg_id, "d0", "converted", value=10),
            ev(msg_id, "d1", "converted", value=4),
            ev(msg_id, "d2", "clicked"),
        ],
    )
    assert recipient(engine, msg_id, "d0").stopped
    stage1 = ledger.report(engine, msg_id).stages[1]
    assert (stage1.targeted, stage1.sent, stage1.held_out, stage1.clicked) == (4, 2, 2, 1)
    assert stage1.holdout is not None
    assert (stage1.holdout.clicked, stage1.holdout.converted) == (1, 2)
    assert stage1.holdout.conversion_value == 14.0
    assert stage1.lift is not None and not stage1.lift["clicked"].enough_data
    assert stage1.lift["clicked"].note and "not enough data" in stage1.lift["clicked"].note
    funnel = ledger.funnel(engine, msg_id).stages[1]
    assert (funnel.held_out, funnel.clicked, funnel.converted) == (2, 1, 0)


def test_the_live_per_stage_counts_equal_the_funnel(engine: Engine, app: str) -> None:  # noqa: F811
    """What the API signals the journey for its live details: per stage, the funnel's delivered,
    displayed and clicked (the held-out not counted), read only when the push is small enough;
    a duplicate event changes nothing."""
    rids = [f"d{i}" for i in range(6)]
    register(engine, app, *({"registration_id": r} for r in rids))
    msg_id = accept(engine, app, {"registration_id": rids})
    send(engine, msg_id, 0)
    events = [ev(msg_id, r, "delivered", stage=0) for r in rids[:5]]
    events += [ev(msg_id, "d0", "clicked", stage=0), ev(msg_id, "d1", "displayed", stage=0)]
    ledger.ingest_events(engine, app, events)
    assert ledger.select_resend_audience(engine, msg_id, 1) == 5
    with Session(engine) as s:  # the holdout: d1 never sent stage 1
        s.execute(
            update(Delivery)
            .where(Delivery.msg_id == msg_id, Delivery.stage == 1, Delivery.registration_id == "d1")
            .values(status="held_out")
        )
        s.commit()
    send(engine, msg_id, 1)
    later = [ev(msg_id, "d1", "clicked", stage=1), ev(msg_id, "d2", "clicked", stage=1)]
    later += [ev(msg_id, "d3", "delivered", stage=1), ev(msg_id, "d0", "delivered", stage=0)]
    ledger.ingest_events(engine, app, later)
    ledger.ingest_events(engine, app, later)  # again: nothing changes

    live = ledger.progress(engine, msg_id, stages_up_to=6)
    funnel = ledger.funnel(engine, msg_id)
    assert [(s.stage, s.delivered, s.displayed, s.clicked) for s in live.stages] == [
        (f.stage, f.delivered, f.displayed, f.clicked) for f in funnel.stages
    ]
    assert [(s.delivered, s.clicked) for s in live.stages] == [
        (5, 1),
        (2, 1),
    ]  # d1 held out; a click is a delivery
    assert ledger.progress(engine, msg_id, stages_up_to=5).stages == []  # 6 recipients: too many
    assert ledger.progress(engine, msg_id).stages == []


def test_the_report_equals_the_ledger_stage_by_stage(engine: Engine, app: str) -> None:  # noqa: F811
    rids = [f"d{i:02d}" for i in range(12)]
    register(engine, app, *({"registration_id": r} for r in rids))
    msg_id = accept(engine, app, {"registration_id": rids})
    send(engine, msg_id, 0, dead=frozenset({"d11"}))
    with Session(engine) as s:  # what the journey's variant assignment records
        for variant, some in (("A", rids[::2]), ("B", rids[1::2])):
            s.execute(
                update(Delivery)
                .where(Delivery.msg_id == msg_id, Delivery.registration_id.in_(some))  # type: ignore[attr-defined]
                .values(variant=variant)
            )
        s.commit()
    events = [ev(msg_id, r, "delivered") for r in rids[:8]]
    events += [ev(msg_id, r, "clicked") for r in rids[:3]]
    events += [ev(msg_id, r, "converted", value=2.5) for r in rids[1:5]]
    events += [ev(msg_id, "d07", "unsubscribed")]
    ledger.ingest_events(engine, app, events)
    ledger.select_resend_audience(engine, msg_id, 1)
    send(engine, msg_id, 1)
    ledger.ingest_events(
        engine,
        app,
        [ev(msg_id, r, "displayed") for r in rids[3:6]]
        + [ev(msg_id, r, "clicked") for r in rids[5:7]]
        + [ev(msg_id, r, "converted", value=1) for r in rids[5:9]],
    )
    report = ledger.report(engine, msg_id)
    funnel = ledger.funnel(engine, msg_id)
    with Session(engine) as s:
        for stage, funnel_stage in zip(report.stages, funnel.stages, strict=True):
            n = stage.stage

            def deliveries(*where: Any, n: int = n) -> int:
                q = select(func.count()).select_from(Delivery).where(Delivery.msg_id == msg_id)
                return int(s.execute(q.where(Delivery.stage == n, *where)).scalar_one())

            def recipients(*where: Any) -> int:
                q = select(func.count()).select_from(Recipient).where(Recipient.msg_id == msg_id)
                return int(s.execute(q.where(*where)).scalar_one())

            expected = {
                "targeted": deliveries(),
                "sent": deliveries(Delivery.status == "sent"),
                "failed": deliveries(Delivery.failed_at.is_not(None)),  # type: ignore[union-attr]
                "delivered": deliveries(Delivery.delivered_at.is_not(None)),  # type: ignore[union-attr]
                "displayed": deliveries(Delivery.displayed_at.is_not(None)),  # type: ignore[union-attr]
                "clicked": deliveries(Delivery.clicked_at.is_not(None)),  # type: ignore[union-attr]
                "converted": recipients(Recipient.converted_stage == n),
                "unsubscribed": recipients(Recipient.unsubscribed_stage == n),
            }
            got = {k: getattr(stage, k) for k in expected}
            assert got == expected
            assert {k: getattr(funnel_stage, k) for k in expected} == expected
            value = s.execute(
                select(func.sum(Recipient.conversion_value)).where(
                    Recipient.msg_id == msg_id, Recipient.converted_stage == n
                )
            ).scalar_one()
            assert stage.conversion_value == funnel_stage.conversion_value == (value or 0.0)
    # d07 unsubscribed after stage 0 and got no stage 1: its conversion goes to stage 0.
    assert [s.converted for s in report.stages] == [5, 3]
    assert [s.clicked for s in report.stages] == [3, 2]
    variants = {v.variant: v for v in report.stages[0].variants}
    assert {k: (v.sent, v.clicked, v.converted) for k, v in variants.items()} == {
        "A": (6, 2, 2),  # d00 d02 d04 d06 d08 d10: clicked d00 d02, converted d02 d04
        "B": (5, 1, 3),  # d01 ... d09 (d11 failed): clicked d01, converted d01 d03 d07
    }


def test_conversion_fields_are_validated() -> None:
    with pytest.raises(ValidationError, match="value: only a converted event"):
        StatusEventIn.model_validate(
            {"msg_id": "1", "registration_id": "a", "status": "clicked", "value": 3}
        )
    with pytest.raises(ValidationError):
        StatusEventIn.model_validate(
            {"msg_id": "1", "registration_id": "a", "status": "converted", "currency": "euro"}
        )
    with pytest.raises(ValidationError, match="at most 30d"):
        PushRequest.model_validate(
            {
                "to": "all",
                "body": {"notification": {"alert": "x"}, "options": {"attribution_window": "0s"}},
            }
        )


def test_a_device_unsubscribed_is_marked_on_the_registry(engine: Engine, app: str) -> None:  # noqa: F811
    register(engine, app, {"registration_id": "a"})
    msg_id = accept(engine, app, {"registration_id": ["a"]})
    send(engine, msg_id, 0)
    ledger.ingest_events(engine, app, [ev(msg_id, "a", "unsubscribed")])
    with Session(engine) as s:
        assert s.execute(select(Device.unsubscribed_at)).scalar_one() is not None
    register(engine, app, {"registration_id": "a"})
    with Session(engine) as s:
        assert s.execute(select(Device.unsubscribed_at)).scalar_one() is None
