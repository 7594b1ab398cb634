"""SIGKILL the worker in the middle of a stage-0 send to 2,000 recipients, start a new one:
every recipient gets stage 0 exactly once, as counted by the simulated devices."""

from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from tests.e2e.conftest import relance_stack
from tests.stack import eventually

RECIPIENTS = [f"silent-crash-{i:04d}" for i in range(2000)]


async def test_worker_killed_mid_send_sends_everyone_exactly_once(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    simulator = ["--send-latency-ms", "40"]
    with relance_stack(dev_server.client, tmp_path, simulator, batch_size=50) as stack:
        async with stack.api() as api, stack.simulator() as sim:
            await api.post(
                "/v4/devices",
                json={
                    "devices": [{"registration_id": rid, "tags": ["crash"]} for rid in RECIPIENTS]
                },
            )
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

            await eventually(lambda: _at_least(received, 400), timeout=60)
            stack.parts["worker"].kill()
            at_kill = await received()
            assert at_kill < len(RECIPIENTS), "the send finished before the kill"
            stack.parts["worker"].start()

            async def completed() -> bool:
                return (await api.get(f"/v4/push/{msg_id}")).json()["state"] == "completed"

            await eventually(completed, timeout=120)
            stats = (await sim.get(f"/v1/stats/{msg_id}")).json()["stages"]["0"]
            per_device = (await sim.get(f"/v1/messages/{msg_id}/0")).json()
            funnel = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]

    assert stats["received"] == len(RECIPIENTS)
    assert stats["repeats"] == 0
    assert sorted(m["registration_id"] for m in per_device) == RECIPIENTS
    assert {m["received"] for m in per_device} == {1}
    assert funnel["stages"][0]["sent"] == len(RECIPIENTS)
    assert at_kill >= 400


async def _at_least(count: object, n: int) -> bool:
    return bool(await count() >= n)  # type: ignore[operator]
