"""The API's /metrics over real HTTP, with the real worker in the same process: the counters
move by exactly what a journey and its events did, and journeys are counted by state."""

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from activities.providers.base import OutboundMessage, SendOutcome
from activities.providers.metered import MeteredProvider
from api.main import create_app
from relance import metrics, migrate
from relance.settings import Settings
from relance.simulator import Behaviour
from tests.scrape import Samples, parse, scrape, value
from tests.stack import eventually, inprocess_stack
from tests.workflows.test_push_journey import DEVICES, NEWS, stages_done, start


async def test_api_metrics_count_a_journey_and_its_events(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    behaviour = Behaviour(p_click=[0.0], p_fail=0.0, min_delay_ms=1, max_delay_ms=20)
    async with inprocess_stack(time_env.client, tmp_path, task_queue, behaviour) as stack:
        url = f"{stack.settings.api_url}/metrics"
        async with httpx.AsyncClient() as anonymous:  # no credentials: Prometheus has none
            before = await scrape(anonymous, url)
            msg_id = await start(stack, NEWS)
            await eventually(lambda: stages_done(time_env, msg_id, 1))
            await eventually(lambda: not stack.fleet.pending)
            sent = await scrape(anonymous, url)

            def moved(after: Samples, name: str, **labels: str) -> float:
                return value(after, name, **labels) - value(before, name, **labels)

            # The worker runs in this process: its sends show here too.
            assert moved(sent, "relance_sends_total", provider="simulator", outcome="ok") == 10
            assert moved(sent, "relance_sends_total") == len(DEVICES)
            calls = moved(sent, "relance_provider_send_duration_seconds_count")
            assert calls >= math.ceil(len(DEVICES) / stack.settings.send_batch_size)
            assert moved(sent, "relance_provider_send_duration_seconds_sum") > 0
            # The simulator reported through the API: every event it reported, counted once.
            reported = (await stack.simulator.get(f"/v1/stats/{msg_id}")).json()["stages"]["0"]
            for status in ("delivered", "displayed", "clicked", "failed"):
                got = moved(sent, "relance_events_received_total", status=status)
                assert got == reported[status], status
            assert moved(sent, "relance_events_ingested_total", result="accepted") == sum(
                reported[s] for s in ("delivered", "displayed")
            )

            # The journey waits for its trigger window: running, for the ledger (the count may
            # be a scrape old: it is reused for ten times what it took).
            async def journeys(state: str) -> Samples | None:
                after = await scrape(anonymous, url)
                return after if value(after, "relance_journeys", state=state) == 1 else None

            running = await eventually(lambda: journeys("accepted"), timeout=10)
            assert value(running, "relance_journeys") == 1

            # Two new clicks and a repeat: exactly that, and a signal to the waiting journey.
            events = [
                {"msg_id": msg_id, "registration_id": rid, "status": "clicked", "stage": 0}
                for rid in (DEVICES[0], DEVICES[1], DEVICES[0])
            ]
            response = await stack.api.post("/v4/events", json={"events": events})
            assert response.json() == {"accepted": 2, "duplicates": 1}

            async def signalled() -> Samples | None:
                after = await scrape(anonymous, url)
                return after if moved(after, "relance_signals_total", outcome="sent") else None

            clicked = await eventually(signalled)
            assert moved(clicked, "relance_events_received_total", status="clicked") == 3
            assert moved(clicked, "relance_events_ingested_total", result="duplicate") == 1

            assert (await stack.api.delete(f"/v4/push/{msg_id}")).status_code == 200
            await time_env.client.get_workflow_handle(f"push-{msg_id}").result()
            ended = await eventually(lambda: journeys("cancelled"), timeout=10)
            assert value(ended, "relance_journeys") == 1
            # OpenMetrics for a scraper that asks for it.
            response = await anonymous.get(
                url, headers={"accept": "application/openmetrics-text; version=1.0.0"}
            )
            assert response.headers["content-type"].startswith("application/openmetrics-text")
            assert response.text.rstrip().endswith("# EOF")


def test_metrics_route_can_be_turned_off_and_is_not_in_the_docs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    on = create_app(Settings(database_url=url))
    off = create_app(Settings(database_url=url, api_metrics=False))
    assert "/metrics" in {getattr(r, "path", None) for r in on.routes}
    assert "/metrics" not in {getattr(r, "path", None) for r in off.routes}
    assert "/metrics" not in on.openapi()["paths"]


def _lateness(stage: str) -> tuple[float, float]:
    samples = parse(metrics.exposition(metrics.REGISTRY, None)[0].decode())
    name = "relance_stage_lateness_seconds"
    return value(samples, f"{name}_count", stage=stage), value(samples, f"{name}_sum", stage=stage)


def test_stage_lateness_counts_first_attempts_from_the_scheduled_time() -> None:
    count, total = _lateness("resend")
    metrics.observe_stage_lateness(2, datetime.now(UTC) - timedelta(seconds=3), attempt=1)
    metrics.observe_stage_lateness(2, datetime.now(UTC) - timedelta(seconds=9), attempt=2)
    metrics.observe_stage_lateness(2, None, attempt=1)
    # Early (a time-skipping server runs ahead of the wall clock): on time, not negative.
    metrics.observe_stage_lateness(1, datetime.now(UTC) + timedelta(hours=1), attempt=1)
    after_count, after_total = _lateness("resend")
    assert after_count - count == 2
    assert 3 <= after_total - total < 10


class _Provider:
    name = "fake-metered"

    def __init__(self, outcomes: list[SendOutcome] | Exception) -> None:
        self.outcomes = outcomes

    async def send(self, messages: list[OutboundMessage]) -> list[SendOutcome]:
        if isinstance(self.outcomes, Exception):
            raise self.outcomes
        return self.outcomes

    async def already_received(self, keys: list[str]) -> set[str] | None:
        return None

    async def aclose(self) -> None:
        return None


async def test_provider_outcomes_are_counted_by_kind() -> None:
    def counts() -> dict[str, float]:
        samples = parse(metrics.exposition(metrics.REGISTRY, None)[0].decode())
        return {
            outcome: value(samples, "relance_sends_total", provider="fake-metered", outcome=outcome)
            for outcome in ("ok", "failed", "retry_later", "token_invalid", "config_error", "error")
        }

    before = counts()
    outcomes = [
        SendOutcome(registration_id="a", ok=True),
        SendOutcome(registration_id="b", ok=False, error="x"),
        SendOutcome(registration_id="c", ok=False, retry_after=2.0),
        SendOutcome(registration_id="d", ok=False, token_invalid=True),
        SendOutcome(registration_id="e", ok=False, config_error=True),
    ]
    message = OutboundMessage(
        idempotency_key="k", msg_id="m", stage=0, registration_id="a", platform="android", alert="x"
    )
    assert await MeteredProvider(_Provider(outcomes)).send([message] * 5) == outcomes
    with pytest.raises(RuntimeError):
        await MeteredProvider(_Provider(RuntimeError("down"))).send([message] * 3)
    after = counts()
    moved = {k: after[k] - before[k] for k in after}
    assert moved == {
        "ok": 1,
        "failed": 1,
        "retry_later": 1,
        "token_invalid": 1,
        "config_error": 1,
        "error": 3,
    }
