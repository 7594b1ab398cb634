"""A stage's holdout and variants written into the ledger (SQLite and PostgreSQL): exactly the
recipients the pure draw names, decided once (a retried queuing changes nothing), across pages;
held-out deliveries are never claimed; a variant filter claims only that variant."""

from collections import Counter
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance import ledger
from relance.assignment import Split, held_out, variant
from relance.db import Delivery
from relance.ledger import SendOutcomeRow, groups
from relance.models import DeviceIn, PushRequest

RIDS = [f"r{i:04d}" for i in range(2500)]  # more than one page of groups.PAGE


@pytest.fixture
def app(engine: Engine) -> str:
    key = ledger.create_app(engine, "shop")[0]
    ledger.upsert_devices(engine, key, [DeviceIn(registration_id=r) for r in RIDS])
    return key


def accept(engine: Engine, app: str, **extra: Any) -> str:
    request = PushRequest.model_validate(
        {
            "to": "all",
            "body": {"notification": {"alert": "Flash sale"}},
            "resend": {
                "trigger": {"condition": "not_clicked", "within": "1h"},
                "stages": [
                    {
                        "after": "1h",
                        "variants": [
                            {"name": "A", "weight": 3, "notification": {"alert": "a"}},
                            {"name": "B", "weight": 1, "notification": {"alert": "b"}},
                        ],
                    }
                ],
                "holdout": 0.1,
            },
            **extra,
        }
    )
    msg_id = ledger.accept_push(engine, app, request).push.msg_id
    cursor: int | None = 0
    while cursor is not None:
        cursor, _ = ledger.materialise_page(engine, msg_id, cursor, 1000)
    ledger.finish_materialise(engine, msg_id)
    return msg_id


def stage_rows(engine: Engine, msg_id: str, stage: int) -> dict[str, tuple[str, str | None]]:
    with Session(engine) as s:
        rows = s.exec(
            select(Delivery).where(Delivery.msg_id == msg_id, col(Delivery.stage) == stage)
        ).all()
    return {d.registration_id: (d.status, d.variant) for d in rows}


def send_all(
    engine: Engine, msg_id: str, stage: int, variants: list[str] | None = None
) -> list[str]:
    sent, after = [], 0
    while True:
        page = ledger.claim_batch(engine, msg_id, stage, after, 500, variants)
        if page.last_id is None:
            return sent
        after = page.last_id
        rows = [SendOutcomeRow(i.delivery_id, i.registration_id, ok=True) for i in page.items]
        ledger.record_outcomes(engine, msg_id, stage, rows)
        sent += [i.registration_id for i in page.items]


def test_a_resend_stage_holds_out_and_splits_exactly_as_the_draw_says(
    engine: Engine, app: str
) -> None:
    msg_id = accept(engine, app)
    send_all(engine, msg_id, 0)
    assert ledger.select_resend_audience(engine, msg_id, 1) == len(RIDS)
    first = stage_rows(engine, msg_id, 1)
    assert ledger.select_resend_audience(engine, msg_id, 1) == len(RIDS)  # a retry
    assert stage_rows(engine, msg_id, 1) == first

    split = Split(("A", "B"), (3.0, 1.0))
    expected = {
        r: ("held_out", None)
        if held_out(msg_id, r, 1, 0.1)
        else ("pending", variant(msg_id, r, split))
        for r in RIDS
    }
    assert first == expected
    shares = Counter(v for _, v in first.values())
    assert abs(shares[None] / len(RIDS) - 0.1) < 0.02

    # Variant B alone first (as a delayed group would be sent last), then the rest.
    b = send_all(engine, msg_id, 1, ["B"])
    assert set(b) == {r for r, (s, v) in expected.items() if v == "B"}
    rest = send_all(engine, msg_id, 1)
    assert set(rest) == {r for r, (s, v) in expected.items() if v == "A"}
    funnel = ledger.funnel(engine, msg_id).stages[1]
    assert (funnel.targeted, funnel.sent, funnel.held_out) == (
        len(RIDS),
        len(b) + len(rest),
        shares[None],
    )


def test_stage_zero_variants_are_assigned_once_before_the_claim(engine: Engine, app: str) -> None:
    variants = [{"name": "X", "weight": 1}, {"name": "Y", "weight": 1}]
    msg_id = accept(engine, app, variants=variants)
    assert groups.assign_groups(engine, msg_id, 0) == 0  # stage 0 has no holdout
    first = stage_rows(engine, msg_id, 0)
    groups.assign_groups(engine, msg_id, 0)
    assert stage_rows(engine, msg_id, 0) == first
    split = Split(("X", "Y"), (1.0, 1.0))
    assert first == {r: ("pending", variant(msg_id, r, split)) for r in RIDS}
