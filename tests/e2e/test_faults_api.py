"""The API killed in the middle of `POST /v4/push`: afterwards every push in the ledger has its
journey (which sends it once), a request retried with its request_id converges on one msg_id,
and nothing else exists. Counted at the simulated devices, on SQLite and on PostgreSQL.

Two faults: a SIGKILL of the API process while 40 pushes are in flight (where each one dies is
up to the scheduler), and the exact window between the two steps of accepting a push, made by
running the API's first step (`ledger.accept_push`, which records the push) without its second
(starting the journey), as an API killed right between them leaves it. What repairs the second:
the same request retried (its journey is started with USE_EXISTING), else the API's journey
repair loop (api/journeys.py), here run every 0.5 s for pushes older than 2 s (30 s by
default)."""

import asyncio
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from relance import ledger
from relance.models import PushRequest
from tests.e2e.conftest import _wait_healthy, relance_stack
from tests.e2e.faults import (
    fresh_database,
    ledger_pushes,
    per_device,
    post_until_answered,
    register,
)
from tests.stack import eventually

DEVICES = [f"silent-apikill-{i:02d}" for i in range(10)]
REPAIR = {
    "RELANCE_JOURNEY_REPAIR_INTERVAL_SECONDS": "0.5",
    "RELANCE_JOURNEY_REPAIR_AFTER_SECONDS": "2",
}


def body(request_id: str | None) -> dict[str, object]:
    found: dict[str, object] = {
        "to": {"registration_id": DEVICES},
        "body": {"notification": {"alert": "Once"}},
    }
    return found if request_id is None else {**found, "request_id": request_id}


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return fresh_database(request.getfixturevalue("postgres_url"))


async def test_api_killed_mid_push_leaves_each_push_with_its_journey_or_nothing(
    dev_server: WorkflowEnvironment, tmp_path: Path, ledger_url: str | None
) -> None:
    with relance_stack(
        dev_server.client, tmp_path, [], extra_env=REPAIR, database_url=ledger_url
    ) as stack:
        await register(stack, DEVICES, "apikill")
        # The window between the two steps, hit exactly: recorded, journey not started.
        recorded_rid = ledger.accept_push(
            stack.engine, stack.app_key, PushRequest.model_validate(body("half-done"))
        ).push.msg_id
        recorded_anonymous = ledger.accept_push(
            stack.engine, stack.app_key, PushRequest.model_validate(body(None))
        ).push.msg_id

        # A storm of pushes, the API SIGKILLed once a few were answered.
        request_ids = [f"storm-{i:02d}" for i in range(40)]
        answered: dict[str, str] = {}

        async def push_once(rid: str) -> None:
            try:
                async with stack.api() as api:
                    response = await api.post("/v4/push", json=body(rid))
            except httpx.HTTPError:
                return  # no answer: the client does not know what happened
            if response.status_code == 200:
                answered[rid] = response.json()["msg_id"]

        storm = [asyncio.create_task(push_once(rid)) for rid in request_ids]
        await eventually(lambda: len(answered) >= 3, timeout=60)
        stack.parts["api"].kill()
        await asyncio.gather(*storm)
        assert len(answered) < len(request_ids), "every push was answered before the kill"
        stack.parts["api"].start()
        _wait_healthy(stack.api_url)

        # Every client retries its request (with its request_id) until answered.
        retried: dict[str, str] = {}
        for rid in [*request_ids, "half-done"]:
            response = await post_until_answered(stack, body(rid))
            assert response.status_code == 200, response.text
            retried[rid] = response.json()["msg_id"]
        for rid, msg_id in answered.items():
            assert retried[rid] == msg_id, f"{rid} answered {msg_id} then {retried[rid]}"
        assert retried["half-done"] == recorded_rid
        assert len(set(retried.values())) == len(retried)

        # Every push recorded is one a client knows of, or the one without request_id whose
        # answer was lost; each journey runs (the repair loop starts the latter) and ends.
        expected = {*retried.values(), recorded_anonymous}
        assert set(ledger_pushes(stack)) == expected

        def all_completed() -> bool:
            return set(ledger_pushes(stack).values()) == {"completed"}

        await eventually(all_completed, timeout=90)
        for msg_id in expected:
            await dev_server.client.get_workflow_handle(f"push-{msg_id}").describe()
            counts = await per_device(stack, msg_id)
            assert counts == dict.fromkeys(DEVICES, 1), msg_id
