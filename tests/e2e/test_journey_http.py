"""The whole thing over real HTTP on the dev server: a 200-device journey whose funnel matches
what the simulator's devices recorded, request_id idempotency, bad input, event idempotency."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, func, select
from temporalio.testing import WorkflowEnvironment

from relance.db import Push, StatusEvent
from tests.e2e.conftest import Stack, relance_stack
from tests.stack import eventually

SIMULATOR = [
    "--seed",
    "7",
    "--min-delay-ms",
    "20",
    "--max-delay-ms",
    "300",
    "--p-click",
    "0.3,0.3,0.3",
    "--p-fail",
    "0.03",
]


@pytest.fixture(scope="module")
def stack(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with relance_stack(dev_server.client, tmp_path_factory.mktemp("e2e"), SIMULATOR) as s:
        yield s


def body(rids: list[str], resend: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "from": "push",
        "to": {"registration_id": rids},
        "body": {
            "platform": "android",
            "notification": {"android": {"title": "News", "alert": "Top story"}},
        },
        **extra,
    }
    if resend:
        out["resend"] = resend
    return out


async def journeys(stack: Stack, query: str) -> int:
    return len([w async for w in stack.client.list_workflows(query)])


async def test_push_to_200_devices_runs_every_stage_and_funnel_matches_the_devices(
    stack: Stack,
) -> None:
    rids = [f"e2e-{i:03d}" for i in range(200)]
    resend = {
        "trigger": {"condition": "not_clicked", "within": "4s"},
        "stages": [
            {"after": "2s", "notification": {"title": "Still news"}},
            {"after": "5s", "notification": {"append": "One more line"}},
        ],
    }
    async with stack.api() as api, stack.simulator() as sim:
        accepted = await api.post("/v4/push", json=body(rids, resend))
        assert accepted.status_code == 200, accepted.text
        msg_id = accepted.json()["msg_id"]
        assert len(accepted.json()["schedule"]) == 3

        async def completed() -> bool:
            return (await api.get(f"/v4/push/{msg_id}")).json()["state"] == "completed"

        await eventually(completed, timeout=90)

        async def quiet() -> dict[str, Any] | None:
            stats = (await sim.get(f"/v1/stats/{msg_id}")).json()
            return stats if stats["pending_reports"] == 0 else None

        await asyncio.sleep(0.5)
        stats = await eventually(quiet, timeout=30)
        await asyncio.sleep(1)  # the API commits before it acknowledges; give the last POST time
        status = (await api.get(f"/v4/push/{msg_id}")).json()

    funnel = status["funnel"]
    assert [s["stage"] for s in funnel["stages"]] == [0, 1, 2]
    for stage in funnel["stages"]:
        seen = stats["stages"][str(stage["stage"])]
        assert stage["sent"] == seen["received"], stage
        assert seen["repeats"] == 0
        for status_name in ("delivered", "displayed", "clicked", "failed"):
            assert stage[status_name] == seen[status_name], (stage, seen)
    # Each resend went only to those who had not clicked (or failed) before it.
    assert (
        funnel["stages"][1]["sent"]
        == 200 - funnel["stages"][0]["clicked"] - funnel["stages"][0]["failed"]
    )
    assert funnel["clicked"] == sum(s["clicked"] for s in funnel["stages"])
    assert (
        funnel["clicked_after_resend"]
        == funnel["stages"][1]["clicked"] + funnel["stages"][2]["clicked"]
    )
    assert await journeys(stack, f'RelanceMsgId="{msg_id}" AND RelanceState="completed"') == 1


async def test_same_request_id_gives_one_msg_id_and_one_journey(stack: Stack) -> None:
    rids = ["silent-idem-1", "silent-idem-2"]
    async with stack.api() as api:
        first = await api.post("/v4/push", json=body(rids, request_id="order-42"))
        again = await api.post("/v4/push", json=body(rids, request_id="order-42"))
        racing = await asyncio.gather(
            *(api.post("/v4/push", json=body(rids, request_id="order-43")) for _ in range(6))
        )
    assert first.status_code == again.status_code == 200
    assert first.json()["msg_id"] == again.json()["msg_id"]
    assert all(r.status_code == 200 for r in racing), [r.text for r in racing]
    assert len({r.json()["msg_id"] for r in racing}) == 1
    for msg_id in (first.json()["msg_id"], racing[0].json()["msg_id"]):
        await eventually(lambda m=msg_id: journeys(stack, f'RelanceMsgId="{m}"'))
        assert await journeys(stack, f'RelanceMsgId="{msg_id}"') == 1
    with Session(stack.engine) as session:
        count = session.exec(
            select(func.count())
            .select_from(Push)
            .where(Push.request_id.in_(["order-42", "order-43"]))
        ).one()  # type: ignore[union-attr]
    assert count == 2


BAD = [
    ("malformed JSON", b'{"to": ', 400, "body"),
    (
        "unknown condition",
        body(
            ["x"],
            {"trigger": {"condition": "not_opened", "within": "2h"}, "stages": [{"after": "1h"}]},
        ),
        400,
        "resend.trigger.condition",
    ),
    (
        "negative after",
        body(
            ["x"],
            {"trigger": {"condition": "not_clicked", "within": "2h"}, "stages": [{"after": "-1h"}]},
        ),
        400,
        "resend.stages[0].after",
    ),
    (
        "non-increasing after",
        body(
            ["x"],
            {
                "trigger": {"condition": "not_clicked", "within": "2h"},
                "stages": [{"after": "3h"}, {"after": "1h"}],
            },
        ),
        400,
        "stages[1].after",
    ),
    (
        "bad duration",
        body(
            ["x"],
            {
                "trigger": {"condition": "not_clicked", "within": "soon"},
                "stages": [{"after": "1h"}],
            },
        ),
        400,
        "resend.trigger.within",
    ),
    ("empty audience", {**body(["x"]), "to": {"tag": ["nobody-has-this-tag"]}}, 400, "to"),
    ("no audience values", {**body(["x"]), "to": {"registration_id": []}}, 400, "to"),
]


@pytest.mark.parametrize(("case", "payload", "status", "field"), BAD, ids=[b[0] for b in BAD])
async def test_bad_push_gets_a_4xx_naming_the_field_and_starts_nothing(
    stack: Stack, case: str, payload: Any, status: int, field: str
) -> None:
    before = await journeys(stack, f'RelanceApp="{stack.app_key}"')
    with Session(stack.engine) as session:
        pushes = session.exec(select(func.count()).select_from(Push)).one()
    async with stack.api() as api:
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response = await api.post(
            "/v4/push", content=content, headers={"content-type": "application/json"}
        )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["code"], int) and field in error["message"], error
    assert any(field in d["field"] for d in response.json().get("details", [])), response.json()
    with Session(stack.engine) as session:
        assert session.exec(select(func.count()).select_from(Push)).one() == pushes
    assert await journeys(stack, f'RelanceApp="{stack.app_key}"') == before


async def test_wrong_credentials_and_unknown_msg_id(stack: Stack) -> None:
    async with stack.api() as api:
        wrong = await api.post("/v4/push", json=body(["x"]), auth=(stack.app_key, "nope"))
        unknown = await api.get("/v4/push/123456")
        events = await api.post(
            "/v4/events",
            json={"events": [{"msg_id": "123456", "registration_id": "x", "status": "clicked"}]},
        )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == 21004
    assert unknown.status_code == 404 and "msg_id" in unknown.json()["error"]["message"]
    assert events.status_code == 404 and "events[0].msg_id" in events.json()["error"]["message"]


async def test_another_apps_msg_id_is_a_404(stack: Stack, tmp_path: Path) -> None:
    from relance import ledger

    other_key, other_secret = ledger.create_app(stack.engine, "other")
    async with stack.api() as api:
        mine = (await api.post("/v4/push", json=body(["silent-mine"]))).json()["msg_id"]
        theirs = await api.get(f"/v4/push/{mine}", auth=(other_key, other_secret))
        cancel = await api.delete(f"/v4/push/{mine}", auth=(other_key, other_secret))
    assert theirs.status_code == 404 and cancel.status_code == 404


async def test_acknowledged_event_is_in_the_ledger_and_a_duplicate_changes_nothing(
    stack: Stack,
) -> None:
    async with stack.api() as api:
        msg_id = (await api.post("/v4/push", json=body(["silent-ev-1", "silent-ev-2"]))).json()[
            "msg_id"
        ]

        async def sent() -> bool:
            return (await api.get(f"/v4/push/{msg_id}")).json()["state"] == "completed"

        await eventually(sent)
        click = {
            "events": [
                {
                    "msg_id": msg_id,
                    "registration_id": "silent-ev-1",
                    "status": "clicked",
                    "stage": 0,
                }
            ]
        }
        first = await api.post("/v4/events", json=click)
        assert first.status_code == 200 and first.json() == {"accepted": 1, "duplicates": 0}
        with Session(stack.engine) as session:
            stored = session.exec(
                select(StatusEvent).where(
                    StatusEvent.msg_id == msg_id, StatusEvent.status == "clicked"
                )
            ).all()
        assert [e.registration_id for e in stored] == ["silent-ev-1"]
        counts = ("delivered", "displayed", "clicked", "failed", "stages")
        funnel = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]
        second = await api.post("/v4/events", json=click)
        assert second.json() == {"accepted": 0, "duplicates": 1}
        again = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]
        assert {k: again[k] for k in counts} == {k: funnel[k] for k in counts}
        assert funnel["clicked"] == 1 and funnel["delivered"] == 1 and funnel["displayed"] == 1
        page = (await api.get(f"/v4/push/{msg_id}/callbacks", params={"limit": 2})).json()
        assert [e["status"] for e in page["events"]] == ["sent", "sent"]
        rest = (
            await api.get(f"/v4/push/{msg_id}/callbacks", params={"cursor": page["next_cursor"]})
        ).json()
        assert [e["status"] for e in rest["events"]] == ["clicked"]
