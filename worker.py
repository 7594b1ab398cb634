"""The worker: runs PushJourney and its activities against any Temporal address."""

import asyncio
import logging
import signal
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.audience import AudienceActivities
from activities.callbacks import CallbackActivities, CallbackConfig
from activities.journey import JourneyActivities
from activities.providers import Provider, SimulatorProvider
from activities.schedules import ScheduleActivities
from activities.send_ahead import SendAheadLoop
from relance import sealing
from relance.db import make_engine
from relance.journey import shard_queue
from relance.metrics import MetricsServer, temporal_sdk_runtime
from relance.migrate import ensure_current
from relance.settings import Settings, get_settings
from relance.temporal_client import connect_temporal
from relance.temporal_client import describe as describe_temporal
from workflows.callback_forwarder import CallbackForwarder
from workflows.push_journey import PushJourney
from workflows.scheduled_push import ScheduledPush

log = logging.getLogger("relance.worker")


class RelanceWorker:
    """The Temporal workers (the journeys' queue, and the queue of big stages' shards), and the
    provider and callback clients they close when they stop."""

    def __init__(
        self,
        workers: list[Worker],
        journey: JourneyActivities,
        callbacks: CallbackActivities,
        ahead: SendAheadLoop | None = None,
    ) -> None:
        self.workers, self.journey, self.callbacks = workers, journey, callbacks
        self.ahead = ahead  # RELANCE_SEND_AHEAD: stage 0 of small pushes, before their journey
        self._ahead_task: asyncio.Task[None] | None = None

    def _start_ahead(self) -> None:
        if self.ahead is not None and self._ahead_task is None:
            self._ahead_task = asyncio.create_task(self.ahead.run())

    async def run(self) -> None:
        self._start_ahead()
        try:
            await asyncio.gather(*(w.run() for w in self.workers))
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._ahead_task is not None:
            self._ahead_task.cancel()
            await asyncio.gather(self._ahead_task, return_exceptions=True)
            self._ahead_task = None
        await self.journey.registry.aclose()
        await self.callbacks.http.aclose()

    async def __aenter__(self) -> "RelanceWorker":
        for w in self.workers:
            await w.__aenter__()
        self._start_ahead()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await asyncio.gather(*(w.__aexit__(*exc) for w in self.workers))
        finally:
            await self.aclose()


def build_worker(
    client: Client,
    settings: Settings,
    providers: dict[str, Provider] | None = None,
    provider_options: dict[str, dict[str, Any]] | None = None,
) -> RelanceWorker:
    engine = make_engine(settings.database_url)
    # Refuse a ledger that is behind (LedgerNotCurrent): `relance db upgrade` changes its shape.
    ensure_current(engine)
    # Refuse sealed secrets that the keys cannot open (SecretsLocked), rather than fail a send.
    sealing.start(engine, settings.secret_keys.get_secret_value(), "worker")
    providers = providers or {"simulator": SimulatorProvider(settings.simulator_url)}
    journey = JourneyActivities(
        engine,
        providers,
        settings.send_batch_size,
        provider_options if provider_options is not None else settings.provider_options,
        shard_size=settings.send_shard_size,
        max_shards=settings.send_max_shards,
    )
    callbacks = CallbackActivities(
        engine,
        CallbackConfig(
            schedule=settings.callback_retry_schedule_seconds,
            timeout=settings.callback_timeout_seconds,
            batch_size=settings.callback_batch_size,
            allowed_networks=tuple(settings.callback_allowed_networks),
        ),
    )
    audience = AudienceActivities(
        engine, chunk_size=settings.send_shard_size, max_chunks=settings.send_max_shards
    )
    schedules = ScheduleActivities(engine)
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[PushJourney, CallbackForwarder, ScheduledPush],
        activities=[
            audience.materialise_audience,
            audience.materialise_chunk,
            journey.send_stage,
            journey.finish_journey,
            journey.plan_zones,
            journey.plan_stage,
            journey.read_stage,
            callbacks.deliver_callbacks,
            schedules.fire_schedule,
        ],
        workflow_runner=(
            SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner()
        ),
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_graceful_shutdown_seconds),
        disable_eager_activity_execution=not settings.worker_eager_activities,
    )
    shards = Worker(
        client,
        task_queue=shard_queue(settings.task_queue),
        activities=[journey.send_stage],
        max_concurrent_activities=settings.send_shard_slots,
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_graceful_shutdown_seconds),
    )
    ahead = SendAheadLoop(journey, client, settings) if settings.send_ahead else None
    return RelanceWorker([worker, shards], journey, callbacks, ahead)


def serve_metrics(settings: Settings) -> tuple[Runtime | None, MetricsServer | None]:
    """The worker's metrics port: relance's metrics and the Temporal SDK's (exported by the
    runtime to loopback, re-exposed here). A port already taken is logged, not fatal: the
    worker's job is sending, and two workers on one host must not stop each other."""
    if not settings.worker_metrics_port:
        return None, None
    runtime, sdk_url = temporal_sdk_runtime()
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    try:
        server = MetricsServer(host, port, sdk_url)
    except OSError as exc:
        log.error(
            "metrics not served on %s:%s (%s): set RELANCE_WORKER_METRICS_PORT (0: none)",
            host,
            port,
            exc,
        )
        return runtime, None
    log.info("metrics at http://%s:%s/metrics", host, server.port)
    return runtime, server


async def main(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    # Checked before connecting, so a ledger that is behind stops the worker at once instead of
    # after Temporal answers.
    ensure_current(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        sealing.start(engine, settings.secret_keys.get_secret_value(), "worker")
    finally:
        engine.dispose()
    runtime, metrics = serve_metrics(settings)
    try:
        log.info("connecting to Temporal at %s", describe_temporal(settings))
        client: Client = await connect_temporal(settings, runtime)
        log.info("worker on task queue %r at %s", settings.task_queue, settings.temporal_address)
        # SIGTERM (a deploy) and SIGINT (Ctrl-C) stop polling, let running activities finish
        # within worker_graceful_shutdown_seconds, then cancel the rest for Temporal to retry.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with build_worker(client, settings):
            await stop.wait()
            log.info("stopping: finishing running activities")
    finally:
        if metrics is not None:
            metrics.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
