"""EngageLab's official SDK (engagelab-apppush) against relance over HTTP: statistics equal the
funnel after real sends through the FCM fake and real status events, the lifecycle per device,
the per-app rate limit (429/23008), and every method relance does not support raising ApiError
with code 21501. The SDK is synchronous: it runs in a thread, so the fakes keep answering."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import engagelab
import httpx
import pytest
from engagelab import ApiError, GroupPushClient
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from relance import ledger
from relance.settings import Settings
from tests.e2e.conftest import Stack, relance_stack
from tests.providers.fakes import fcm_fake
from tests.stack import eventually, free_port, serve

TOKENS = [f"fcm-token-{i}" for i in range(6)]  # the last one is unregistered at FCM


@pytest.fixture(scope="module")
async def fcm() -> AsyncIterator[tuple[fcm_fake.FakeFcm, dict[str, str]]]:
    info, public_key = fcm_fake.new_service_account("shop-123")
    fake = fcm_fake.FakeFcm("shop-123", info["client_email"], public_key)
    fake.unregistered.add(TOKENS[-1])
    async with fcm_fake.running_fcm(fake):
        yield fake, {**info, "token_uri": fake.token_uri}


@pytest.fixture(scope="module")
def stack(
    dev_server: WorkflowEnvironment,
    tmp_path_factory: pytest.TempPathFactory,
    fcm: tuple[fcm_fake.FakeFcm, dict[str, str]],
) -> Iterator[Stack]:
    options = json.dumps({"fcm": {"base_url": fcm[0].url}})
    with relance_stack(
        dev_server.client,
        tmp_path_factory.mktemp("sdk"),
        [],
        extra_env={"RELANCE_PROVIDER_OPTIONS": options},
    ) as s:
        yield s


def sdk(stack: Stack, key: str | None = None, secret: str | None = None) -> engagelab.Client:
    return engagelab.Client(
        key or stack.app_key, secret or stack.master_secret, base_url=stack.api_url, timeout=10
    )


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def raised(fn: Callable[..., Any], *args: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call(fn, *args)
    return caught.value


def push_body(rids: list[str], resend: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": "push",
        "to": {"registration_id": rids},
        "body": {
            "platform": "android",
            "notification": {"android": {"title": "Shop", "alert": "Flash sale"}},
        },
    }
    return {**body, "resend": resend} if resend else body


def events(msg_id: str, stage: int, **by_status: list[str]) -> dict[str, Any]:
    return {
        "events": [
            {"msg_id": msg_id, "registration_id": rid, "status": status, "stage": stage}
            for status, rids in by_status.items()
            for rid in rids
        ]
    }


async def test_statistics_equal_the_funnel_after_real_sends_and_events(
    stack: Stack, fcm: tuple[fcm_fake.FakeFcm, dict[str, str]]
) -> None:
    fake, credentials = fcm
    t = TOKENS
    async with stack.api() as api:
        configured = await api.put(
            "/v4/app/providers/fcm", json={"platforms": ["android"], "credentials": credentials}
        )
        assert configured.status_code == 200, configured.text
        resend = {
            "trigger": {"condition": "not_clicked", "within": "4s"},
            "stages": [{"after": "1s", "notification": {"alert": "Still on sale"}}],
        }
        accepted = await api.post("/v4/push", json=push_body(t, resend))
        assert accepted.status_code == 200, accepted.text
        a = accepted.json()["msg_id"]

        async def stage_sent(msg_id: str, stage: int, sent: int) -> bool:
            stages = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]["stages"]
            return len(stages) > stage and stages[stage]["sent"] == sent

        await eventually(lambda: stage_sent(a, 0, 5), timeout=30)
        # Within the trigger window: t0 clicks, t1 sees it, t2 only receives it.
        stage0 = events(a, 0, clicked=[t[0]], displayed=[t[1]], delivered=[t[2]])
        assert (await api.post("/v4/events", json=stage0)).status_code == 200

        async def completed(msg_id: str) -> bool:
            return (await api.get(f"/v4/push/{msg_id}")).json()["state"] == "completed"

        await eventually(lambda: completed(a), timeout=60)
        # The resend went to t1..t4; t1 clicks it, t3 receives it.
        stage1 = events(a, 1, clicked=[t[1]], delivered=[t[3]])
        assert (await api.post("/v4/events", json=stage1)).status_code == 200

        b = (await api.post("/v4/push", json=push_body(t[:3]))).json()["msg_id"]
        await eventually(lambda: stage_sent(b, 0, 3), timeout=30)
        assert (await api.post("/v4/events", json=events(b, 0, clicked=[t[2]]))).status_code == 200
        funnels = {m: (await api.get(f"/v4/push/{m}")).json()["funnel"] for m in (a, b)}
    assert [fake.accepted_tokens().count(x) for x in t] == [1 + 1, 1 + 2, 1 + 2, 2, 2, 0]

    client = sdk(stack)
    detail = await call(client.status.message_detail, [a, "1234567890123", b])
    assert list(detail) == [a, b]  # an unknown msg_id is left out
    for msg_id, stats in detail.items():
        f = funnels[msg_id]
        assert stats["targets"] == f["recipients"]
        assert (stats["delivered"], stats["impressions"], stats["clicks"], stats["failed"]) == (
            f["delivered"],
            f["displayed"],
            f["clicked"],
            f["failed"],
        )
        assert stats["stages"] == f["stages"]
        assert stats["clicked_after_resend"] == f["clicked_after_resend"]
    # Per device: A reached t0..t4 (t5 is dead at FCM), t0..t3 received, t0 and t1 clicked.
    assert {k: detail[a][k] for k in ("targets", "sent", "delivered", "impressions", "clicks")} == {
        "targets": 6,
        "sent": 5,
        "delivered": 4,
        "impressions": 2,
        "clicks": 2,
    }
    assert [(s["stage"], s["targeted"], s["sent"], s["clicked"]) for s in detail[a]["stages"]] == [
        (0, 6, 5, 1),
        (1, 4, 4, 1),
    ]
    assert detail[a]["clicked_after_resend"] == 1

    batch = await call(client.status.batch_message_detail, [b, "1234567890123", a])
    assert [item.pop("message_id") for item in batch] == [b, a]
    assert batch == [detail[b], detail[a]]

    life = await call(client.status.message_lifecycle, a, [t[1], t[5], t[0], "not-in-this-push"])
    assert life[t[1]]["status"] == "click"
    assert [(s["stage"], s["status"]) for s in life[t[1]]["stages"]] == [(0, "sent"), (1, "sent")]
    assert life[t[1]]["stages"][0]["displayed_at"] and life[t[1]]["stages"][1]["clicked_at"]
    assert life[t[0]]["status"] == "click" and len(life[t[0]]["stages"]) == 1
    assert life[t[5]]["status"] == "sent_failed" and life[t[5]]["stages"][0]["error"]
    assert life["not-in-this-push"] == {"status": None, "stages": []}

    # Another app sees none of it: left out of the statistics, 404 for the lifecycle.
    other = sdk(stack, *ledger.create_app(stack.engine, "other"))
    assert await call(other.status.message_detail, [a, b]) == {}
    assert await call(other.status.batch_message_detail, [a]) == []
    unknown = await raised(other.status.message_lifecycle, a, [t[0]])
    assert (unknown.status_code, unknown.error.code) == (404, 21404)

    empty = await raised(client.status.message_detail, [])
    assert (empty.status_code, empty.error.code) == (400, 21003)
    assert "message_ids" in empty.error.message
    too_many = await raised(client.status.batch_message_detail, [str(i) for i in range(101)])
    assert (too_many.status_code, too_many.error.code) == (400, 21003)
    wrong = await raised(sdk(stack, stack.app_key, "wrong-secret").status.message_detail, [a])
    assert (wrong.status_code, wrong.error.code) == (401, 21004)


async def test_over_the_rate_limit_the_sdk_raises_23008(stack: Stack, tmp_path: Path) -> None:
    """An API process with a limit of 2 per second on the same ledger."""
    settings = Settings(
        database_url=stack.engine.url.render_as_string(hide_password=False),
        rate_limit_per_second=2,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with serve(create_app(settings, client=stack.client), port):
        async with httpx.AsyncClient(
            base_url=url, auth=(stack.app_key, stack.master_secret)
        ) as http:
            answers = [await http.get("/v4/status/detail?message_ids=x") for _ in range(3)]
        statuses = [r.status_code for r in answers]
        assert statuses[0] == 200 and 429 in statuses, statuses
        over = answers[statuses.index(429)]
        assert over.json()["error"]["code"] == 23008
        assert over.headers["X-Rate-Limit-Limit"] == "2"
        assert over.headers["X-Rate-Limit-Remaining"] == "0"
        assert int(over.headers["X-Rate-Limit-Reset"]) in (1, 2)
        assert answers[0].headers["X-Rate-Limit-Remaining"] == "1"

        client = engagelab.Client(stack.app_key, stack.master_secret, base_url=url, timeout=10)
        errors = []
        for _ in range(6):  # at most 2 per window pass; 6 calls take well under 2 windows
            try:
                await call(client.status.message_detail, ["x"])
            except ApiError as exc:
                errors.append(exc)
        assert errors and {(e.status_code, e.error.code) for e in errors} == {(429, 23008)}


def _voice_file(tmp_path: Path) -> str:
    path = tmp_path / "hello.mp3"
    path.write_bytes(b"ID3 not really an mp3")
    return str(path)


NOT_SUPPORTED: dict[str, Callable[[engagelab.Client, Path], Any]] = {
    "voice.create": lambda c, tmp: c.voice.create("en", _voice_file(tmp)),
    "voice.list": lambda c, _: c.voice.list(),
    "voice.get": lambda c, _: c.voice.get("en"),
    "voice.delete": lambda c, _: c.voice.delete("en"),
    "image.upload_oppo": lambda c, _: c.image.upload_oppo(
        engagelab.OppoImageParam(big_picture_url="https://shop.example/big.png")
    ),
    "app.get_vip_status": lambda c, _: c.app.get_vip_status(),
    "plan.create_or_update": lambda c, _: c.plan.create_or_update(
        engagelab.PushPlanParam(plan_id="p1", plan_description="launch")
    ),
    "plan.list": lambda c, _: c.plan.list(),
    "plan.query_msg": lambda c, _: c.plan.query_msg("p1", "2026-11-01", "2026-11-23"),
    "plan.delete": lambda c, _: c.plan.delete("p1"),
    "plan.batch_delete": lambda c, _: c.plan.batch_delete("p1,p2"),
    "status.users": lambda c, _: c.status.users("DAY", "2026-11-01", 7),
    "status.plan_detail": lambda c, _: c.status.plan_detail(["p1"], "2026-11-01", "2026-11-23"),
}


@pytest.mark.parametrize("method", sorted(NOT_SUPPORTED))
async def test_not_supported_methods_raise_21501(stack: Stack, tmp_path: Path, method: str) -> None:
    error = await raised(NOT_SUPPORTED[method], sdk(stack), tmp_path)
    assert (error.status_code, error.error.code) == (404, 21501)
    assert "is not supported by relance" in error.error.message


async def test_group_push_is_not_supported(stack: Stack) -> None:
    group = GroupPushClient("group-key", "group-secret", base_url=stack.api_url, timeout=10)
    param = engagelab.PushParam(from_="push", to="all")
    error = await raised(group.send, param)
    assert (error.status_code, error.error.code) == (404, 21501)
    assert error.error.message.startswith("group push is not supported by relance")
