"""Kill the worker and restart the API while 10,000 status events are on their way: the
receiver ends with every event_id (duplicates allowed, none missing)."""

import asyncio
from pathlib import Path

import httpx
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from relance.db import StatusEvent
from tests.e2e.conftest import Stack, relance_stack
from tests.e2e.receiver import Receiver
from tests.stack import eventually, free_port, serve

DEVICES = [f"silent-durable-{i:04d}" for i in range(2500)]


async def post_until_acknowledged(stack: Stack, events: list[dict[str, object]]) -> None:
    """A well-behaved sender: retries a batch until relance acknowledges it."""
    while True:
        try:
            async with stack.api() as api:
                response = await api.post("/v4/events", json={"events": events})
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)


async def test_worker_killed_and_api_restarted_lose_no_callback(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    receiver, port = Receiver(), free_port()
    async with serve(receiver.app(), port):  # type: ignore[arg-type]
        with relance_stack(dev_server.client, tmp_path, [], batch_size=250) as stack:
            async with stack.api() as api:
                await api.post(
                    "/v4/devices",
                    json={
                        "devices": [
                            {"registration_id": rid, "tags": ["durable"]} for rid in DEVICES
                        ]
                    },
                )
                accepted = await api.post(
                    "/v4/push",
                    json={
                        "to": {"tag": ["durable"]},
                        "body": {"notification": {"alert": "Hi"}},
                        "callback_url": [f"http://127.0.0.1:{port}/cb"],
                    },
                )
                assert accepted.status_code == 200, accepted.text
                msg_id = accepted.json()["msg_id"]
            events = [
                {"msg_id": msg_id, "registration_id": rid, "status": status, "stage": 0}
                for status in ("delivered", "displayed", "clicked")
                for rid in DEVICES
            ]
            batches = [events[i : i + 250] for i in range(0, len(events), 250)]
            sender = asyncio.create_task(_send_all(stack, batches))

            await eventually(lambda: len(receiver.event_ids()) >= 500, timeout=60)
            stack.parts["worker"].kill()
            stack.parts["api"].kill()
            await asyncio.sleep(1)
            stack.parts["api"].start()
            await asyncio.sleep(2)
            stack.parts["worker"].start()
            await sender

            async def sent() -> bool:
                async with stack.api() as api:
                    state = (await api.get(f"/v4/push/{msg_id}")).json()["state"]
                return bool(state == "completed")

            # The killed worker's send resumes on the new one after its heartbeat timeout.
            await eventually(sent, timeout=120)
            with Session(stack.engine) as session:
                expected = set(
                    session.exec(select(StatusEvent.event_id).where(StatusEvent.msg_id == msg_id))
                )
            assert len(expected) == 10_000
            await eventually(lambda: set(receiver.event_ids()) >= expected, timeout=180)
    assert set(receiver.event_ids()) == expected


async def _send_all(stack: Stack, batches: list[list[dict[str, object]]]) -> None:
    for batch in batches:
        await post_until_acknowledged(stack, batch)
