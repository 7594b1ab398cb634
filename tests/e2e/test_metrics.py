"""Metrics of the real processes against the dev server: `relance worker` serves relance's
metrics and the Temporal SDK's on one port of its own, `relance api` serves /metrics, and both
agree with the ledger and the simulator about what happened."""

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select
from temporalio.testing import WorkflowEnvironment

from relance.db import CallbackBatch
from tests.e2e.conftest import Stack, relance_stack
from tests.e2e.receiver import Receiver
from tests.scrape import Samples, scrape, value
from tests.stack import eventually, free_port, serve

DEVICES = [f"metrics-{i:03d}" for i in range(30)]


@pytest.fixture(scope="module")
def stack(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # One retry, soon: a callback URL that never answers is dead-lettered within a second.
    env = {"RELANCE_CALLBACK_RETRY_SCHEDULE_SECONDS": "[0.3]"}
    simulator = ["--seed", "7", "--p-fail", "0", "--min-delay-ms", "5", "--max-delay-ms", "50"]
    with relance_stack(
        dev_server.client,
        tmp_path_factory.mktemp("metrics"),
        simulator,
        batch_size=8,
        extra_env=env,
    ) as s:
        yield s


def batches(stack: Stack, state: str) -> int:
    with Session(stack.engine) as session:
        return int(
            session.exec(select(func.count()).where(col(CallbackBatch.state) == state)).one()
        )


async def test_worker_and_api_metrics_agree_with_the_ledger(stack: Stack) -> None:
    receiver, port = Receiver(), free_port()
    dead_url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    async with (
        serve(receiver.app(), port),  # type: ignore[arg-type]
        stack.api() as api,
        stack.simulator() as sim,
        httpx.AsyncClient(timeout=10) as scraper,
    ):
        body = {
            "to": {"registration_id": DEVICES},
            "body": {"notification": {"alert": "Metrics"}},
            "callback_url": [f"http://127.0.0.1:{port}/cb", dead_url],
        }
        response = await api.post("/v4/push", json=body)
        assert response.status_code == 200, response.text
        msg_id = response.json()["msg_id"]

        async def settled() -> bool:
            stats = (await sim.get(f"/v1/stats/{msg_id}")).json()
            return stats["pending_reports"] == 0 and bool(stats["stages"])

        await eventually(settled, timeout=60)
        reported = (await sim.get(f"/v1/stats/{msg_id}")).json()["stages"]["0"]

        async def worker_settled() -> Samples | None:
            """Every sent, and every callback batch delivered or dead, as the ledger says."""
            samples = await scrape(scraper, stack.worker_metrics_url)
            lag = value(samples, "relance_callback_delivery_lag_seconds_count")
            dead = value(samples, "relance_callback_dead_letters_total")
            done = (
                value(samples, "relance_sends_total", outcome="ok") == len(DEVICES)
                and batches(stack, "pending") == 0
                and lag == batches(stack, "delivered") > 0
                and dead == batches(stack, "dead") > 0
            )
            return samples if done else None

        worker = await eventually(worker_settled, timeout=60)
        assert value(worker, "relance_sends_total") == len(DEVICES)
        assert (
            value(worker, "relance_provider_send_duration_seconds_count", provider="simulator") >= 4
        )
        assert value(worker, "relance_callback_delivery_lag_seconds_sum") > 0
        # The Temporal SDK's own metrics, on the same port.
        assert value(worker, "temporal_workflow_task_execution_latency_count") > 0
        assert value(worker, "temporal_activity_execution_latency_count") > 0
        assert value(worker, "temporal_request_total") > 0

        # The API: the simulator's every report, counted by status; the journey, by state.
        async def api_settled() -> Samples | None:
            samples = await scrape(scraper, f"{stack.api_url}/metrics")
            ended = value(samples, "relance_journeys", state="completed") == 1
            return samples if ended else None

        api_samples = await eventually(api_settled, timeout=60)
        for status in ("delivered", "displayed", "clicked"):
            got = value(api_samples, "relance_events_received_total", status=status)
            assert got == reported[status], status
        assert value(api_samples, "relance_events_ingested_total") == sum(
            reported[s] for s in ("delivered", "displayed", "clicked", "failed")
        )
        assert value(api_samples, "relance_signals_total") >= 1
        assert value(api_samples, "relance_journeys") == 1
