"""EngageLab's own Python SDK (engagelab-apppush) against relance over real HTTP, on the dev
server: tag_and/tag_not audiences, custom (data-only) messages, validate, withdraw and batch
push, with their effects checked at the simulator's devices and in the ledger."""

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import engagelab
import pytest
from engagelab.errors import ApiError
from engagelab.push import (
    BatchPushParam,
    BatchPushRequest,
    CustomMessage,
    NotificationMessage,
    PushBody,
    PushParam,
    PushTo,
)
from sqlmodel import Session, func, select
from temporalio.testing import WorkflowEnvironment

from relance.db import Delivery
from tests.e2e.conftest import Stack, relance_stack
from tests.stack import eventually

# Nobody clicks or fails: every recipient still matches a resend, and sends are deterministic.
SIMULATOR = ["--seed", "3", "--min-delay-ms", "10", "--max-delay-ms", "50", "--p-click", "0"]
SIMULATOR += ["--p-fail", "0"]


@pytest.fixture(scope="module")
def stack(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with relance_stack(dev_server.client, tmp_path_factory.mktemp("elsdk"), SIMULATOR) as s:
        yield s


def sdk(stack: Stack) -> engagelab.Client:
    return engagelab.Client(stack.app_key, stack.master_secret, base_url=stack.api_url)


def tag(name: str) -> str:
    """A tag of this test alone: the stack's registry is shared by the module."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def register(stack: Stack, *devices: dict[str, Any]) -> None:
    async with stack.api() as api:
        response = await api.post("/v4/devices", json={"devices": list(devices)})
        assert response.status_code == 200, response.text


async def received(stack: Stack, msg_id: str, stage: int = 0) -> list[dict[str, Any]]:
    async with stack.simulator() as sim:
        return list((await sim.get(f"/v1/messages/{msg_id}/{stage}")).json())


async def reached(stack: Stack, msg_id: str, expected: int) -> dict[str, dict[str, Any]]:
    """The devices stage 0 reached, once it reached `expected` of them."""
    rows = await eventually(lambda: _at_least(stack, msg_id, expected))
    return {r["registration_id"]: r for r in rows}


async def _at_least(stack: Stack, msg_id: str, n: int) -> list[dict[str, Any]] | None:
    rows = await received(stack, msg_id)
    return rows if len(rows) >= n else None


async def push_state(stack: Stack, msg_id: str) -> dict[str, Any]:
    async with stack.api() as api:
        return dict((await api.get(f"/v4/push/{msg_id}")).json())


async def test_tag_and_reaches_devices_with_every_tag_and_tag_not_leaves_devices_out(
    stack: Stack,
) -> None:
    a, b, c = tag("a"), tag("b"), tag("c")
    await register(
        stack,
        {"registration_id": "ta-ab", "tags": [a, b]},
        {"registration_id": "ta-abc", "tags": [a, b, c]},
        {"registration_id": "ta-a", "tags": [a]},
        {"registration_id": "ta-b", "tags": [b]},
    )
    client = sdk(stack)
    note = NotificationMessage(alert="For A and B")
    both = await asyncio.to_thread(
        client.push.send,
        PushParam(from_="push", to=PushTo(tag_and=[a, b]), body=PushBody(notification=note)),
    )
    but_c = await asyncio.to_thread(
        client.push.send,
        PushParam(
            from_="push",
            to=PushTo(tag_and=[a, b], tag_not=[c]),
            body=PushBody(platform=["android", "hmos"], notification=note),
        ),
    )
    assert both.msg_id != but_c.msg_id
    assert set(await reached(stack, both.msg_id, 2)) == {"ta-ab", "ta-abc"}
    assert set(await reached(stack, but_c.msg_id, 1)) == {"ta-ab"}
    funnel = (await push_state(stack, but_c.msg_id))["funnel"]
    await asyncio.sleep(0.3)  # nobody else arrives late
    assert set(await reached(stack, but_c.msg_id, 1)) == {"ta-ab"}
    assert funnel["recipients"] == 1 and funnel["stages"][0]["sent"] == 1


async def test_a_message_only_push_reaches_devices_as_data_and_feeds_the_journey(
    stack: Stack,
) -> None:
    await register(stack, {"registration_id": "msg-1"})
    result = await asyncio.to_thread(
        sdk(stack).push.send_raw,
        {
            "from": "push",
            "to": {"registration_id": ["msg-1"]},
            "body": {
                "platform": "android",
                "message": {
                    "title": "sync",
                    "msg_content": {"order": 42},
                    "content_type": "json",
                    "extras": {"kind": "order"},
                },
            },
            "request_id": "message-only-1",
        },
    )
    assert result.request_id == "message-only-1"
    row = (await reached(stack, result.msg_id, 1))["msg-1"]
    assert row["notify"] is False and row["received"] == 1
    assert row["message"] == {
        "msg_content": {"order": 42},
        "title": "sync",
        "content_type": "json",
        "extras": {"kind": "order"},
    }

    async def delivered() -> bool:
        return bool((await push_state(stack, result.msg_id))["funnel"]["delivered"] == 1)

    await eventually(delivered)  # the device's report counts like any other


async def test_validate_answers_engagelabs_shape_and_names_what_is_not_supported(
    stack: Stack,
) -> None:
    await register(stack, {"registration_id": "val-1"})
    client = sdk(stack)
    ok = await asyncio.to_thread(
        client.push.validate,
        PushParam(
            to=PushTo(registration_id=["val-1"]),
            request_id="validate-1",
            body=PushBody(notification=NotificationMessage(alert="hi")),
        ),
    )
    assert (ok.request_id, ok.msg_id) == ("validate-1", "0")
    assert await received(stack, "0") == []
    for to, field in (({"seg": {"id": "s"}}, "to.seg"), ({"live_activity_id": "x"}, "to")):
        with pytest.raises(ApiError) as refused:
            await asyncio.to_thread(
                client.push.send_raw, {"to": to, "body": {"notification": {"alert": "hi"}}}
            )
        assert (refused.value.status_code, refused.value.error.code) == (400, 21003)
        assert field in refused.value.error.message
        assert "not supported by relance" in refused.value.error.message
    with pytest.raises(ApiError) as empty:
        await asyncio.to_thread(
            client.push.send_raw, {"to": {"registration_id": ["val-1"]}, "body": {}}
        )
    assert empty.value.error.code == 21003
    assert "notification or message" in empty.value.error.message


async def test_a_withdrawn_push_sends_no_further_stage(stack: Stack) -> None:
    await register(stack, {"registration_id": "wd-1"})
    client = sdk(stack)
    result = await asyncio.to_thread(
        client.push.send_raw,
        {
            "to": {"registration_id": ["wd-1"]},
            "body": {"notification": {"alert": "first"}},
            "request_id": "withdraw-1",
            "resend": {
                "trigger": {"condition": "not_clicked", "within": "2s"},
                "stages": [{"after": "1s", "notification": {"alert": "second"}}],
            },
        },
    )
    await reached(stack, result.msg_id, 1)
    withdrawn = await asyncio.to_thread(client.push.withdraw, result.msg_id)
    assert (withdrawn.msg_id, withdrawn.request_id) == (result.msg_id, "withdraw-1")

    async def cancelled() -> bool:
        return bool((await push_state(stack, result.msg_id))["state"] == "cancelled")

    await eventually(cancelled)
    again = await asyncio.to_thread(client.push.withdraw, result.msg_id)  # a retry: the same
    assert again.msg_id == result.msg_id
    await asyncio.sleep(3.5)  # past the time stage 1 was due (send + 2s + 1s)
    assert await received(stack, result.msg_id, 1) == []
    with Session(stack.engine) as s:
        stage_1 = select(func.count()).where(Delivery.msg_id == result.msg_id, Delivery.stage == 1)
        assert s.exec(stage_1).one() == 0
    with pytest.raises(ApiError) as unknown:
        await asyncio.to_thread(client.push.withdraw, "1234567890123456789")
    assert (unknown.value.status_code, unknown.value.error.code) == (404, 21404)

    # A journey that ended by itself has nothing left to withdraw.
    done = await asyncio.to_thread(
        client.push.send_raw,
        {"to": {"registration_id": ["wd-1"]}, "body": {"notification": {"alert": "once"}}},
    )

    async def completed() -> bool:
        return bool((await push_state(stack, done.msg_id))["state"] == "completed")

    await eventually(completed)
    with pytest.raises(ApiError) as ended:
        await asyncio.to_thread(client.push.withdraw, done.msg_id)
    assert (ended.value.status_code, ended.value.error.code) == (409, 21409)


async def test_batch_push_gives_each_target_its_own_msg_id_and_one_send(stack: Stack) -> None:
    await register(
        stack,
        *({"registration_id": f"bt-{i}", "alias": f"user-{i}"} for i in range(3)),
        {"registration_id": "bt-alias-only", "alias": "only"},
    )
    client = sdk(stack)
    by_regid = await asyncio.to_thread(
        client.push.batch_by_regid,
        BatchPushParam(
            requests=[
                *(
                    BatchPushRequest(
                        target=f"bt-{i}",
                        platform="android",
                        notification=NotificationMessage(alert=f"Order {i} shipped"),
                    )
                    for i in range(3)
                ),
                BatchPushRequest(
                    target="bt-unknown", notification=NotificationMessage(alert="nobody")
                ),
                BatchPushRequest(target="bt-alias-only"),  # no content: invalid alone
            ]
        ),
    )
    results = by_regid.results
    ok = {t: r for t, r in results.items() if r.success}
    assert set(ok) == {"bt-0", "bt-1", "bt-2"}
    assert len({r.msg_id for r in ok.values()}) == 3
    assert results["bt-unknown"].error == {
        "code": 21011,
        "message": "No suitable push target found: no such registration id",
    }
    assert results["bt-alias-only"].error is not None
    assert results["bt-alias-only"].error["code"] == 21003
    assert "notification or message" in results["bt-alias-only"].error["message"]
    for i in range(3):
        row = (await reached(stack, str(ok[f"bt-{i}"].msg_id), 1))[f"bt-{i}"]
        assert (row["alert"], row["received"]) == (f"Order {i} shipped", 1)
    assert await received(stack, "bt-unknown") == []

    by_alias = await asyncio.to_thread(
        client.push.batch_by_alias,
        BatchPushParam(
            requests=[
                BatchPushRequest(target="user-1", message=CustomMessage(msg_content="ping")),
                BatchPushRequest(target="nobody", notification=NotificationMessage(alert="x")),
            ]
        ),
    )
    alias_ok = by_alias.results["user-1"]
    assert alias_ok.success and alias_ok.msg_id not in {r.msg_id for r in ok.values()}
    assert by_alias.results["nobody"].error is not None
    assert by_alias.results["nobody"].error["code"] == 21011
    row = (await reached(stack, str(alias_ok.msg_id), 1))["bt-1"]
    assert row["notify"] is False and row["message"] == {"msg_content": "ping"}

    with pytest.raises(ApiError) as too_many:
        await asyncio.to_thread(
            client.push.batch_by_regid,
            BatchPushParam(
                requests=[
                    BatchPushRequest(target=f"x-{i}", notification=NotificationMessage(alert="x"))
                    for i in range(501)
                ]
            ),
        )
    assert (too_many.value.status_code, too_many.value.error.code) == (400, 21003)
    assert "requests" in too_many.value.error.message
