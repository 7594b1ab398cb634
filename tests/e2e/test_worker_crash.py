"""SIGKILL the worker in the middle of a stage-0 send, start a new one: every recipient gets
stage 0 exactly once, as counted by the simulated devices. Once for 2,000 recipients in small
batches, once for 20,000 with several pages in flight at the kill (the pipelined send)."""

from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.e2e.conftest import push_to_tag, relance_stack
from tests.stack import eventually


@pytest.mark.parametrize(
    ("size", "batch_size", "kill_after"),
    [(2_000, 50, 400), (20_000, 100, 5_000)],
    ids=["2k", "20k-pipelined"],
)
async def test_worker_killed_mid_send_sends_everyone_exactly_once(
    dev_server: WorkflowEnvironment, tmp_path: Path, size: int, batch_size: int, kill_after: int
) -> None:
    recipients = [f"silent-crash-{i:05d}" for i in range(size)]
    simulator = ["--send-latency-ms", "40"]
    with relance_stack(dev_server.client, tmp_path, simulator, batch_size=batch_size) as stack:
        async with stack.api() as api, stack.simulator() as sim:
            for i in range(0, size, 5000):
                devices = [
                    {"registration_id": r, "tags": ["crash"]} for r in recipients[i : i + 5000]
                ]
                registered = await api.post("/v4/devices", json={"devices": devices})
                assert registered.status_code == 200, registered.text
            accepted = await api.post(
                "/v4/push",
                json={
                    "to": {"tag": ["crash"]},
                    "body": {"notification": {"alert": "Exactly once, please"}},
                },
            )
            assert accepted.status_code == 200, accepted.text
            msg_id = accepted.json()["msg_id"]

            async def received() -> int:
                stats = (await sim.get(f"/v1/stats/{msg_id}")).json()["stages"]
                return int(stats.get("0", {}).get("received", 0))

            await eventually(lambda: _at_least(received, kill_after), timeout=120)
            stack.parts["worker"].kill()
            at_kill = await received()
            assert at_kill < len(recipients), "the send finished before the kill"
            stack.parts["worker"].start()

            async def completed() -> bool:
                return (await api.get(f"/v4/push/{msg_id}")).json()["state"] == "completed"

            await eventually(completed, timeout=300)
            stats = (await sim.get(f"/v1/stats/{msg_id}")).json()["stages"]["0"]
            per_device = (await sim.get(f"/v1/messages/{msg_id}/0")).json()
            funnel = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]

    assert stats["received"] == len(recipients)
    assert stats["repeats"] == 0
    assert sorted(m["registration_id"] for m in per_device) == recipients
    assert {m["received"] for m in per_device} == {1}
    assert funnel["stages"][0]["sent"] == len(recipients)
    assert at_kill >= kill_after


async def _at_least(count: object, n: int) -> bool:
    return bool(await count() >= n)  # type: ignore[operator]


async def test_a_worker_killed_during_a_sharded_stage_leaves_everyone_sent_once(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    """Two workers on the queue share a 20,000-recipient stage cut into 8 shards; one is
    SIGKILLed mid-stage and not restarted: the other takes its shards over (after their
    heartbeat timeout) and every device still gets the stage exactly once."""
    size = 20_000
    recipients = [f"silent-shard-{i:05d}" for i in range(size)]
    simulator = ["--send-latency-ms", "40"]
    env = {"RELANCE_SEND_SHARD_SIZE": "2500", "RELANCE_SEND_MAX_SHARDS": "8"}
    with relance_stack(
        dev_server.client, tmp_path, simulator, batch_size=100, extra_env=env
    ) as stack:
        first = stack.parts["worker"]
        stack.add_worker()
        async with stack.api() as api, stack.simulator() as sim:
            msg_id = await push_to_tag(api, recipients, "shard", "Once")

            async def received() -> int:
                stats = (await sim.get(f"/v1/stats/{msg_id}")).json()["stages"]
                return int(stats.get("0", {}).get("received", 0))

            await eventually(lambda: _at_least(received, 4_000), timeout=120)
            first.kill()
            at_kill = await received()
            assert at_kill < size, "the send finished before the kill"

            async def completed() -> bool:
                return (await api.get(f"/v4/push/{msg_id}")).json()["state"] == "completed"

            await eventually(completed, timeout=300)
            stats = (await sim.get(f"/v1/stats/{msg_id}")).json()["stages"]["0"]
            per_device = (await sim.get(f"/v1/messages/{msg_id}/0")).json()
            funnel = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]
        shards = [
            e.activity_task_scheduled_event_attributes
            async for e in stack.client.get_workflow_handle(f"push-{msg_id}").fetch_history_events()
            if e.HasField("activity_task_scheduled_event_attributes")
            and e.activity_task_scheduled_event_attributes.activity_type.name == "send_stage"
        ]

    assert len(shards) == 8  # the stage went out as 8 activities at once
    assert stats["received"] == size
    assert stats["repeats"] == 0
    assert sorted(m["registration_id"] for m in per_device) == recipients
    assert {m["received"] for m in per_device} == {1}
    assert funnel["stages"][0]["sent"] == size
