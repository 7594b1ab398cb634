"""Status callbacks to a real HTTP receiver: every event exactly once and signed when healthy;
retried on the (shortened) schedule; dead-lettered and redelivered; private targets refused."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from relance import ledger
from relance.db import StatusEvent
from tests.e2e.conftest import Stack, relance_stack
from tests.e2e.receiver import Receiver, verify
from tests.stack import eventually, free_port, serve

SCHEDULE = [0.5, 1.0, 1.5]


@pytest.fixture(scope="module")
def stack(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = {
        "RELANCE_CALLBACK_RETRY_SCHEDULE_SECONDS": str(SCHEDULE),
        "RELANCE_CALLBACK_TIMEOUT_SECONDS": "2",
    }
    simulator = ["--seed", "3", "--min-delay-ms", "20", "--max-delay-ms", "200"]
    with relance_stack(
        dev_server.client, tmp_path_factory.mktemp("cb"), simulator, extra_env=env
    ) as s:
        yield s


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    port = free_port()
    rec = Receiver()
    async with serve(rec.app(), port):  # type: ignore[arg-type]
        yield rec, f"http://127.0.0.1:{port}"


def push(rids: list[str], url: str, **extra: Any) -> dict[str, Any]:
    return {
        "to": {"registration_id": rids},
        "body": {"notification": {"alert": "Hello"}},
        "custom_args": {"order": 42},
        "callback_url": [url],
        **extra,
    }


def stored_events(stack: Stack, msg_id: str) -> list[str]:
    with Session(stack.engine) as session:
        return list(session.exec(select(StatusEvent.event_id).where(StatusEvent.msg_id == msg_id)))


async def test_healthy_receiver_gets_every_event_once_signed_with_custom_args(
    stack: Stack, receiver: tuple[Receiver, str]
) -> None:
    rec, base = receiver
    rids = [f"cb-{i:03d}" for i in range(200)]
    async with stack.api() as api, stack.simulator() as sim:
        response = await api.post("/v4/push", json=push(rids, f"{base}/healthy"))
        assert response.status_code == 200, response.text
        msg_id = response.json()["msg_id"]

        async def settled() -> bool:
            stats = (await sim.get(f"/v1/stats/{msg_id}")).json()
            return stats["pending_reports"] == 0 and bool(stats["stages"])

        await eventually(settled, timeout=60)
    expected = stored_events(stack, msg_id)
    assert len(expected) > 400  # sent + delivered + displayed + clicked / failed
    await eventually(lambda: set(rec.event_ids("/healthy")) >= set(expected), timeout=30)
    counts = Counter(rec.event_ids("/healthy"))
    assert set(counts) == set(expected) and set(counts.values()) == {1}
    app = ledger.get_app(stack.engine, stack.app_key)
    assert app.callback_secret
    for delivery in rec.deliveries:
        assert verify(delivery.headers, delivery.body, stack.app_key, app.callback_secret)
        assert not verify(
            delivery.headers, delivery.body + b" ", stack.app_key, app.callback_secret
        )
        for row in delivery.rows:
            assert row["custom_args"] == {"order": 42} and row["message_id"] == msg_id
            assert {"message_status", "status_data", "error_code", "error_detail"} <= set(
                row["status"]
            )


async def test_failing_receiver_gets_events_later_on_schedule(
    stack: Stack, receiver: tuple[Receiver, str]
) -> None:
    rec, base = receiver
    rec.failing["/flaky"] = 2
    async with stack.api() as api:
        msg_id = (await api.post("/v4/push", json=push(["silent-flaky"], f"{base}/flaky"))).json()[
            "msg_id"
        ]
    await eventually(lambda: rec.event_ids("/flaky"), timeout=30)
    tries = [at for at, path, _ in rec.attempts if path == "/flaky"]
    assert [s for _, p, s in rec.attempts if p == "/flaky"] == [503, 503, 200]
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps[0] >= SCHEDULE[0] * 0.8 and gaps[1] >= SCHEDULE[1] * 0.8, gaps
    assert rec.event_ids("/flaky") == stored_events(stack, msg_id)


async def test_always_failing_receiver_ends_in_dead_letters_and_redelivery_works(
    stack: Stack, receiver: tuple[Receiver, str]
) -> None:
    rec, base = receiver
    rec.failing["/down"] = -1
    async with stack.api() as api:
        msg_id = (await api.post("/v4/push", json=push(["silent-down"], f"{base}/down"))).json()[
            "msg_id"
        ]

        async def dead() -> list[dict[str, Any]]:
            return list((await api.get("/v4/callbacks/dead")).json()["batches"])

        batches = await eventually(dead, timeout=30)
        assert len(batches) == 1 and batches[0]["attempts"] == len(SCHEDULE) + 1
        assert batches[0]["last_error"] == "HTTP 503"
        assert [r["message_id"] for r in batches[0]["rows"]] == [msg_id]
        rec.failing["/down"] = 0
        again = await api.post(f"/v4/callbacks/dead/{batches[0]['id']}/redeliver")
        assert again.status_code == 200 and again.json()["state"] == "pending"
        await eventually(lambda: rec.event_ids("/down"), timeout=30)
        assert await dead() == []
        missing = await api.post("/v4/callbacks/dead/999999/redeliver")
        assert missing.status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/cb",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/x",
        "http://192.168.0.10/cb",
        "ftp://example.com/cb",
        "not a url",
    ],
)
async def test_callback_url_on_a_private_address_is_refused_at_push_time(
    stack: Stack, url: str
) -> None:
    async with stack.api() as api:
        response = await api.post("/v4/push", json=push(["silent-x"], url))
        settings = await api.put("/v4/app/callback", json={"urls": [url]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("callback_url[0]: ")
    assert settings.status_code == 400


async def test_app_default_callback_url_is_used_when_the_push_names_none(
    stack: Stack, receiver: tuple[Receiver, str]
) -> None:
    rec, base = receiver
    async with stack.api() as api:
        put = await api.put(
            "/v4/app/callback", json={"urls": [f"{base}/default"], "username": "shop"}
        )
        assert put.json() == {"urls": [f"{base}/default"], "username": "shop", "secret_set": True}
        body = push(["silent-default"], "x")
        del body["callback_url"]
        msg_id = (await api.post("/v4/push", json=body)).json()["msg_id"]
        # Only the worker's own 'sent' event: the worker wakes the forwarder by itself.
        await eventually(lambda: rec.event_ids("/default"), timeout=30)
        await api.put("/v4/app/callback", json={"urls": []})
    app = ledger.get_app(stack.engine, stack.app_key)
    delivery = next(d for d in rec.deliveries if d.path == "/default")
    assert verify(delivery.headers, delivery.body, "shop", app.callback_secret or "")
    assert delivery.rows[0]["message_id"] == msg_id
    assert delivery.rows[0]["status"]["message_status"] == "sent"


async def test_a_hanging_receiver_slows_no_other_app(
    stack: Stack, receiver: tuple[Receiver, str]
) -> None:
    rec, base = receiver
    rec.hanging.add("/hang")
    other_key, other_secret = ledger.create_app(stack.engine, "other")
    async with stack.api() as api:
        for _ in range(3):  # several batches stuck at the hanging receiver
            body = push([f"silent-hang-{_}"], f"{base}/hang")
            assert (await api.post("/v4/push", json=body)).status_code == 200
        await eventually(lambda: any(p == "/hang" for _, p, _ in rec.attempts), timeout=30)
        started = asyncio.get_running_loop().time()
        other = await api.post(
            "/v4/push", json=push(["silent-other"], f"{base}/other"), auth=(other_key, other_secret)
        )
        assert other.status_code == 200
        await eventually(lambda: rec.event_ids("/other"), timeout=30)
    # Well inside the hanging receiver's 2 s timeout and its retries.
    assert asyncio.get_running_loop().time() - started < 2.0
