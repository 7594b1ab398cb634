"""Faults in the middle of a stage-0 send, counted at the simulated devices: each device gets
the stage exactly once, and the funnel says every one was sent.

- PostgreSQL restarted (stopped as a crash does, `pg_ctl stop -m immediate`, and started again
  a second later) during a 5,000-recipient stage: the send activity's ledger writes fail, it
  is retried by Temporal (SEND_RETRY) and resumes from its heartbeat, and deliveries that were
  handed to the simulator but not recorded are found by its lookup instead of sent again.
  The cluster commits durably (fsync, synchronous_commit on) as production does: with the
  suite's fast settings a crash loses acknowledged commits, and this test once caught exactly
  that (a page marked `sending`, sent, then found `pending` again after the restart).
- Two workers on the task queue, the one running the send SIGKILLed: the other takes the
  activity over after its heartbeat timeout (30 s, the production value; the test waits it out).
"""

import asyncio
import signal
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.e2e.conftest import Part, Stack, relance_stack
from tests.e2e.faults import fresh_database, per_device, received, register, state
from tests.pgserver import postgres_available, postgres_cluster
from tests.stack import eventually, free_port


async def push_to_tag(stack: Stack, tag: str) -> str:
    async with stack.api() as api:
        accepted = await api.post(
            "/v4/push",
            json={"to": {"tag": [tag]}, "body": {"notification": {"alert": "Exactly once"}}},
        )
    assert accepted.status_code == 200, accepted.text
    return str(accepted.json()["msg_id"])


async def until_received(stack: Stack, msg_id: str, n: int) -> None:
    async def enough() -> bool:
        return (await received(stack, msg_id))["received"] >= n

    await eventually(enough, timeout=120)


async def assert_exactly_once(stack: Stack, msg_id: str, devices: list[str]) -> None:
    async def completed() -> bool:
        return await state(stack, msg_id) == "completed"

    await eventually(completed, timeout=180)
    assert await per_device(stack, msg_id) == dict.fromkeys(devices, 1)
    async with stack.api() as api:
        funnel = (await api.get(f"/v4/push/{msg_id}")).json()["funnel"]
    assert funnel["stages"][0]["sent"] == len(devices)
    assert funnel["stages"][0]["failed"] == 0


async def test_postgres_restarted_mid_stage_sends_each_device_once(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    if reason := postgres_available():
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    devices = [f"silent-pg-{i:04d}" for i in range(5000)]
    simulator = ["--send-latency-ms", "30"]
    with (
        postgres_cluster(tmp_path / "pg", durable=True) as (url, cluster),
        relance_stack(dev_server.client, tmp_path, simulator, 50, database_url=url) as stack,
    ):
        await register(stack, devices, "pg")
        msg_id = await push_to_tag(stack, "pg")
        await until_received(stack, msg_id, 1000)
        cluster.stop("immediate")
        at_stop = (await received(stack, msg_id))["received"]
        await asyncio.sleep(1)
        cluster.start()
        assert at_stop < len(devices), "the stage was sent before PostgreSQL stopped"
        await assert_exactly_once(stack, msg_id, devices)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return fresh_database(request.getfixturevalue("postgres_url"))


async def test_one_of_two_workers_killed_mid_stage_sends_each_device_once(
    dev_server: WorkflowEnvironment, tmp_path: Path, ledger_url: str | None
) -> None:
    devices = [f"silent-two-{i:04d}" for i in range(2000)]
    simulator = ["--send-latency-ms", "40"]
    with relance_stack(dev_server.client, tmp_path, simulator, 50, database_url=ledger_url) as st:
        first = st.parts["worker"]
        env = {**first.env, "RELANCE_WORKER_METRICS_PORT": str(free_port())}
        second = Part("worker2", ["worker"], env, tmp_path)
        st.parts["worker2"] = second
        second.start()
        await register(st, devices, "two")
        await asyncio.sleep(2)  # both polling
        msg_id = await push_to_tag(st, "two")
        await until_received(st, msg_id, 300)
        # The worker that runs the send: its identity is pid@host.
        handle = dev_server.client.get_workflow_handle(f"push-{msg_id}")
        pending = (await handle.describe()).raw_description.pending_activities
        identity = next(a.last_worker_identity for a in pending if a.last_worker_identity)
        pid = int(identity.split("@")[0])
        running = next(p for p in (first, second) if p.proc and p.proc.pid == pid)
        running.kill()
        assert running.proc is not None and running.proc.returncode == -signal.SIGKILL
        assert (await received(st, msg_id))["received"] < len(devices)
        await assert_exactly_once(st, msg_id, devices)


async def test_a_worker_sigtermed_mid_stage_hands_the_send_back_at_once(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    """A deploy stops a worker with SIGTERM mid-stage: it stops polling, gives the running send
    RELANCE_WORKER_GRACEFUL_SHUTDOWN_SECONDS (2 here) to finish, then hands it back; it exits 0
    within its grace, and the other worker completes the stage at once — well before the 30 s
    heartbeat timeout that a SIGKILLed worker's activity waits out — each device once."""
    devices = [f"silent-term-{i:04d}" for i in range(4000)]
    simulator = ["--send-latency-ms", "400"]  # a stage of ~8 s: longer than the grace
    grace = {"RELANCE_WORKER_GRACEFUL_SHUTDOWN_SECONDS": "2"}
    with relance_stack(dev_server.client, tmp_path, simulator, 50, extra_env=grace) as st:
        first = st.parts["worker"]
        env = {**first.env, "RELANCE_WORKER_METRICS_PORT": str(free_port())}
        second = Part("worker2", ["worker"], env, tmp_path)
        st.parts["worker2"] = second
        second.start()
        await register(st, devices, "term")
        await asyncio.sleep(2)  # both polling
        msg_id = await push_to_tag(st, "term")
        await until_received(st, msg_id, 300)
        handle = dev_server.client.get_workflow_handle(f"push-{msg_id}")
        pending = (await handle.describe()).raw_description.pending_activities
        identity = next(a.last_worker_identity for a in pending if a.last_worker_identity)
        pid = int(identity.split("@")[0])
        running = next(p for p in (first, second) if p.proc and p.proc.pid == pid)
        assert running.proc is not None
        stopped_at = asyncio.get_running_loop().time()
        running.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(running.proc.wait, 15)
        assert code == 0, f"the worker exited {code} on SIGTERM"
        assert (await received(st, msg_id))["received"] < len(devices)

        async def all_received() -> bool:
            return (await received(st, msg_id))["received"] >= len(devices)

        await eventually(all_received, timeout=60)
        took = asyncio.get_running_loop().time() - stopped_at
        assert took < 25, f"the stage finished {took:.1f} s after the SIGTERM"
        await assert_exactly_once(st, msg_id, devices)
