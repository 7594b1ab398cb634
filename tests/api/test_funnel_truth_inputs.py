"""Bad holdout, variant and observation inputs are refused with 400/21003 naming the field, and
nothing is accepted."""

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from api.main import create_app
from relance import ledger, migrate
from relance.db import Push
from relance.settings import Settings


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, Any]:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    app = create_app(Settings(database_url=url, auth_cache_seconds=5))
    ctx = app.state.context
    ledger.create_app(ctx.engine, "shop", app_key="k1", secret="s1")
    client = TestClient(app)  # no `with`: Temporal is not needed to refuse a body
    client.auth = ("k1", "s1")
    return client, ctx


def two(**changes: Any) -> list[dict[str, Any]]:
    variants = [
        {"name": "A", "weight": 50, "notification": {"alert": "Save 10%"}},
        {"name": "B", "weight": 50, "notification": {"alert": "Free shipping"}},
    ]
    variants[1].update(changes)
    return variants


def push(resend: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "to": {"registration_id": ["d1"]},
        "body": {"notification": {"alert": "hi"}},
        **top,
    }
    if resend is not None:
        body["resend"] = {
            "trigger": {"condition": "not_clicked", "within": "2h"},
            "stages": [{"after": "1h"}],
            **resend,
        }
    return body


def stage(**fields: Any) -> dict[str, Any]:
    return {"stages": [{"after": "1h", **fields}]}


def eight_plus(n: int) -> list[dict[str, Any]]:
    return [{"name": f"V{i}", "weight": 1} for i in range(n)]


BAD = [
    ("holdout 1.0", push({"holdout": 1.0}), "resend.holdout"),
    ("negative holdout", push({"holdout": -0.1}), "resend.holdout"),
    ("one variant", push(variants=two()[:1]), "variants"),
    ("nine variants", push(variants=eight_plus(9)), "variants"),
    ("zero weight", push(variants=two(weight=0)), "variants[1].weight"),
    ("duplicate names", push(variants=two(name="A")), "variants"),
    ("name too long", push(variants=two(name="x" * 33)), "variants[1].name"),
    ("negative delay", push(variants=two(delay="-5m")), "variants[1].delay"),
    ("bad template", push(variants=two(notification={"template": "{{ x"})), "variants[1]"),
    ("stage: one variant", push(stage(variants=two()[:1])), "resend.stages[0].variants"),
    ("stage: zero weight", push(stage(variants=two(weight=0))), "resend.stages[0].variants[1]"),
    ("stage: duplicates", push(stage(variants=two(name="A"))), "resend.stages[0].variants"),
    ("negative observe", push({"observe": "-1h"}), "resend.observe"),
]


@pytest.mark.parametrize(("case", "payload", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_groups_are_refused_naming_the_field(
    api: tuple[TestClient, Any], case: str, payload: dict[str, Any], field: str
) -> None:
    client, ctx = api
    response = client.post("/v4/push", json=payload)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"]["code"] == 21003
    assert any(d["field"].startswith(field) for d in body["details"]), body
    with Session(ctx.engine) as session:
        assert session.exec(select(func.count()).select_from(Push)).one() == 0


def test_good_groups_pass_validation(api: tuple[TestClient, Any]) -> None:
    client, _ = api
    payload = push(
        {"holdout": 0.1, "observe": "1h", **stage(variants=two(delay="30m"))},
        variants=two(),
    )
    response = client.post("/v4/push/validate", json=payload)
    assert response.status_code == 200, response.text
