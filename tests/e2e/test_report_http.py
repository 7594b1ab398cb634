"""The report over real HTTP on the dev server: a push, its devices' clicks, conversions and an
unsubscribe posted to /v4/events, and GET /v4/push/{msg_id}/report counting them per stage."""

from collections.abc import Iterator

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.e2e.conftest import Stack, relance_stack
from tests.e2e.test_journey_http import SIMULATOR, body
from tests.stack import eventually


@pytest.fixture(scope="module")
def stack(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with relance_stack(dev_server.client, tmp_path_factory.mktemp("report"), SIMULATOR) as s:
        yield s


async def test_the_report_counts_clicks_conversions_and_unsubscribes(stack: Stack) -> None:
    rids = [f"silent-report-{i}" for i in range(4)]
    async with stack.api() as api:
        push = body(rids)
        push["body"]["options"] = {"attribution_window": "1h"}
        accepted = await api.post("/v4/push", json=push)
        assert accepted.status_code == 200, accepted.text
        msg_id = accepted.json()["msg_id"]

        async def sent() -> bool:
            funnel = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]
            return bool(funnel["stages"]) and funnel["stages"][0]["sent"] == 4

        await eventually(sent, timeout=60)

        def event(rid: str, status: str, **kw: object) -> dict[str, object]:
            return {"msg_id": msg_id, "registration_id": rid, "status": status, **kw}

        posted = await api.post(
            "/v4/events",
            json={
                "events": [
                    event(rids[0], "clicked"),
                    event(rids[0], "converted", value=19.9, currency="EUR"),
                    event(rids[1], "converted", value=5, currency="EUR"),
                    event(rids[1], "converted", value=5, currency="EUR"),
                    event(rids[2], "unsubscribed"),
                ]
            },
        )
        assert posted.json() == {"accepted": 4, "duplicates": 1}
        bad = await api.post("/v4/events", json={"events": [event(rids[3], "clicked", value=3)]})
        report = await api.get(f"/v4/push/{msg_id}/report")
        unknown = await api.get("/v4/push/123456/report")
        funnel = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]

    assert bad.status_code == 400 and bad.json()["error"]["code"] == 21003
    assert "value" in bad.json()["error"]["message"]
    assert unknown.status_code == 404
    assert report.status_code == 200, report.text
    out = report.json()
    assert (out["msg_id"], out["attribution_window"], out["currencies"]) == (msg_id, "1h", ["EUR"])
    (stage,) = out["stages"]
    counts = ("targeted", "sent", "clicked", "converted", "conversion_value", "unsubscribed")
    assert {k: stage[k] for k in counts} == {
        "targeted": 4,
        "sent": 4,
        "clicked": 1,
        "converted": 2,
        "conversion_value": 24.9,
        "unsubscribed": 1,
    }
    assert (stage["converted_rate"], stage["unsubscribed_rate"]) == (0.5, 0.25)
    assert stage["lift"] is None and stage["holdout"] is None  # stage 0 has no holdout
    assert (funnel["stages"][0]["converted"], funnel["stages"][0]["unsubscribed"]) == (2, 1)
