"""What relance exposes to Prometheus, defined once for both processes: the API serves them at
`/metrics`, the worker on a port of its own together with the Temporal SDK's metrics.

Every name starts with `relance_` and says its unit (`_seconds`, `_total`). Callers record
through the small helpers below, one line at each place that knows a fact; nothing here holds
per-push or per-app labels, so the number of series stays fixed whatever the traffic."""

import logging
import socket
import time
import urllib.request
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import lru_cache

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from relance.ledger.outbox import oldest_rows
from relance.ledger.pushes import journeys_by_state
from relance.states import TERMINAL_STATES, CallbackBatchState, JourneyState

log = logging.getLogger("relance.metrics")

# No `_created` twin of every counter and histogram: Prometheus does not need it, and it
# doubles what each scrape carries.
disable_created_metrics()

# Seconds, from a loopback provider (milliseconds) to a slow one under backoff (a minute).
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Seconds, from a timer that fires on time to a worker that was down for an hour; callbacks
# also wait out EngageLab's retry schedule (up to an hour between tries).
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200)

SENDS = Counter(
    "relance_sends_total",
    "Messages handed to a provider, by provider and outcome: ok, failed, retry_later (handed "
    "back for a later try), token_invalid, config_error (the app's credentials are wrong), "
    "error (the whole call raised; the activity retries it).",
    ["provider", "outcome"],
)
PROVIDER_SECONDS = Histogram(
    "relance_provider_send_duration_seconds",
    "How long one provider call (one batch of messages) took, by provider.",
    ["provider"],
    buckets=_CALL_BUCKETS,
)
STAGE_LATENESS = Histogram(
    "relance_stage_lateness_seconds",
    "How long after its scheduled time a stage's send began (first attempt), for stage 0 "
    "(scheduled when its journey started) and for resend stages (scheduled by the timer).",
    ["stage"],
    buckets=_LAG_BUCKETS,
)
EVENTS_RECEIVED = Counter(
    "relance_events_received_total",
    "Status events that reached the API (either door), by status, repeats included.",
    ["status"],
)
EVENTS_INGESTED = Counter(
    "relance_events_ingested_total",
    "Status events committed to the ledger (accepted) or recognised as repeats (duplicate).",
    ["result"],
)
SIGNALS = Counter(
    "relance_signals_total",
    "Coalesced progress signals from the API to journeys, by outcome: sent or failed (a lost "
    "signal costs freshness; the next one carries the same absolute counts).",
    ["outcome"],
)
CALLBACK_LAG = Histogram(
    "relance_callback_delivery_lag_seconds",
    "From the API's receipt of a status event to the recorded delivery of its callback batch, "
    "measured on each delivered batch's oldest event.",
    buckets=_LAG_BUCKETS,
)
DEAD_LETTERS = Counter(
    "relance_callback_dead_letters_total",
    "Callback batches that failed their last try and went to the dead-letter list.",
)


def count_sends(provider: str, outcomes: Iterable[str]) -> None:
    for outcome, n in Tally(outcomes).items():
        SENDS.labels(provider, outcome).inc(n)


def observe_stage_lateness(stage: int, scheduled_at: datetime | None, attempt: int) -> None:
    """A send that starts before its time (a time-skipping test server) counts as on time; a
    retried attempt is not counted again."""
    if scheduled_at is None or attempt > 1:
        return
    late = (datetime.now(UTC) - scheduled_at).total_seconds()
    STAGE_LATENESS.labels("0" if stage == 0 else "resend").observe(max(late, 0.0))


def count_events(statuses: Iterable[str], accepted: int, duplicates: int) -> None:
    for status, n in Tally(statuses).items():
        EVENTS_RECEIVED.labels(status).inc(n)
    EVENTS_INGESTED.labels("accepted").inc(accepted)
    EVENTS_INGESTED.labels("duplicate").inc(duplicates)


def count_signal(sent: bool) -> None:
    SIGNALS.labels("sent" if sent else "failed").inc()


def observe_callback_batches(engine: Engine, states: dict[int, str]) -> None:
    """After one round of callback tries (batch id -> its new state): the lag of each batch
    delivered, and how many went dead. Reads the ledger once, only when some were delivered."""
    DEAD_LETTERS.inc(sum(s == CallbackBatchState.dead for s in states.values()))
    delivered = [i for i, s in states.items() if s == CallbackBatchState.delivered]
    now = datetime.now(UTC)
    for received in oldest_rows(engine, delivered).values():
        CALLBACK_LAG.observe(max((now - received).total_seconds(), 0.0))


# Every series name is fixed, so pre-create them: a dashboard sees 0 rather than no data.
for _state in ("accepted", "duplicate"):
    EVENTS_INGESTED.labels(_state)
for _outcome in ("sent", "failed"):
    SIGNALS.labels(_outcome)


class JourneysByState(Collector):
    """`relance_journeys{state}`: pushes per journey state, read from the ledger at scrape time
    (one GROUP BY). The ledger holds `accepted` until the journey ends, then its end state, so
    those are always present, even at 0; the live phase (sending, waiting, resending) is the
    RelanceState search attribute in Temporal.

    The GROUP BY scans the push table (~0.1 s per 200,000 small rows on SQLite, up to ~1 s
    with real request bodies; an index on push.state would make it ~50 ms): a count that
    took d seconds is reused for the next 10·d seconds, so scrapes never spend more than a
    tenth of the time in it, and a small ledger is counted afresh at every scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._counts: dict[str, int] = {}
        self._fresh_until = 0.0

    def collect(self) -> Iterator[Metric]:
        if time.monotonic() >= self._fresh_until:
            started = time.monotonic()
            self._counts = journeys_by_state(self.engine)
            self._fresh_until = time.monotonic() + 10 * (time.monotonic() - started)
        counts = dict(self._counts)
        family = GaugeMetricFamily(
            "relance_journeys",
            "Pushes per journey state in the ledger: accepted (its journey still running), "
            "completed, cancelled, failed.",
            labels=["state"],
        )
        for known in (JourneyState.accepted, *sorted(TERMINAL_STATES)):
            family.add_metric([known.value], counts.pop(known.value, 0))
        for other, n in sorted(counts.items()):  # any other state the ledger holds
            family.add_metric([other], n)
        yield family


def api_registry(engine: Engine) -> CollectorRegistry:
    """What the API's /metrics shows: this process's metrics and the journeys by state."""
    registry = CollectorRegistry()
    registry.register(REGISTRY)
    registry.register(JourneysByState(engine))
    return registry


def exposition(registry: Collector, accept: str | None) -> tuple[bytes, str]:
    """The scrape body and its content type: OpenMetrics if the scraper asks for it."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class TemporalSdkMetrics(Collector):
    """The Temporal SDK's metrics (its Prometheus exporter on a loopback port), re-exposed with
    ours, so one scrape of the worker gets both. An unreachable exporter yields nothing."""

    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:  # noqa: S310
                text = response.read().decode()
        except OSError as exc:
            log.warning("Temporal SDK metrics at %s not read: %s", self.url, exc)
            return
        yield from text_string_to_metric_families(text)


def _loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@lru_cache(maxsize=1)
def temporal_sdk_runtime() -> tuple[Runtime, str]:
    """A Temporal runtime whose metrics go to a Prometheus exporter on a free loopback port,
    and the URL to scrape it. One per process: a runtime's exporter cannot be stopped, and the
    SDK's clients and workers all report through the runtime they were connected with.

    Counters get their `_total` suffix and durations are in seconds, as Prometheus names them
    (and as prometheus_client's parser expects when re-exposing them)."""
    error: Exception | None = None
    for _ in range(5):  # the port is free when chosen; another process may take it first
        address = f"127.0.0.1:{_loopback_port()}"
        config = PrometheusConfig(
            bind_address=address, counters_total_suffix=True, durations_as_seconds=True
        )
        try:
            return Runtime(telemetry=TelemetryConfig(metrics=config)), f"http://{address}/metrics"
        except ValueError as exc:  # "Failed starting Prometheus exporter: Address in use"
            error = exc
    raise RuntimeError(f"no loopback port for the Temporal SDK's metrics: {error}")


class MetricsServer:
    """The worker's metrics endpoint (prometheus_client's HTTP server, in a thread)."""

    def __init__(self, host: str, port: int, sdk_url: str | None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(REGISTRY)
        if sdk_url is not None:
            self.registry.register(TemporalSdkMetrics(sdk_url))
        self.server, self.thread = start_http_server(port, host, self.registry)

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
