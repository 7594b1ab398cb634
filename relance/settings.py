"""Settings, read from RELANCE_* environment variables (and TEMPORAL_ADDRESS)."""

from functools import lru_cache
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    """A setting read from `name`, or RELANCE_`name`, or its field name (in code)."""
    return AliasChoices(name, f"RELANCE_{name}", name.lower())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELANCE_", extra="ignore")

    database_url: str = "sqlite:///.relance/relance.db"
    temporal_address: str = Field(
        "localhost:7233",
        validation_alias=AliasChoices("TEMPORAL_ADDRESS", "RELANCE_TEMPORAL_ADDRESS"),
    )
    temporal_namespace: str = "default"
    # Temporal beyond one machine (README "Temporal TLS and Cloud"). Certificates and keys are
    # PEM: either the PEM text itself (it starts with "-----BEGIN") or the path of a PEM file.
    # Any of them turns TLS on; TEMPORAL_TLS=true turns it on with the system's CAs alone.
    temporal_tls: bool = Field(False, validation_alias=_env("TEMPORAL_TLS"))
    # mTLS: the client certificate (with its chain) and its private key.
    temporal_tls_cert: str | None = Field(None, validation_alias=_env("TEMPORAL_TLS_CERT"))
    temporal_tls_key: SecretStr | None = Field(None, validation_alias=_env("TEMPORAL_TLS_KEY"))
    # The CA that signed the server's certificate (a self-hosted cluster); else the system's.
    temporal_tls_ca: str | None = Field(None, validation_alias=_env("TEMPORAL_TLS_CA"))
    # The name the server's certificate is checked against, when not the address's host.
    temporal_tls_server_name: str | None = Field(
        None, validation_alias=_env("TEMPORAL_TLS_SERVER_NAME")
    )
    # Temporal Cloud's API key (sent as a bearer token; implies TLS).
    temporal_api_key: SecretStr | None = Field(None, validation_alias=_env("TEMPORAL_API_KEY"))
    # Fernet keys that encrypt provider credentials and callback secrets in the ledger,
    # comma-separated, newest first (relance/sealing.py; README "Keys and rotation").
    secret_keys: SecretStr = SecretStr("")
    task_queue: str = "relance"
    temporal_ui_url: str = "http://localhost:8233"
    api_url: str = "http://127.0.0.1:8000"
    simulator_url: str = "http://127.0.0.1:8100"
    # How long the API gathers status events of one push before signalling its journey; a
    # journey never gets more than one signal per second (api/signals.py) whatever this is.
    signal_interval_seconds: float = 0.5
    send_batch_size: int = Field(100, ge=1, le=1000)
    # A stage with at least twice this many deliveries is cut into shards of about this size,
    # sent by that many activities at once (spread over every worker on the task queue), at
    # most send_max_shards; 0: never sharded.
    send_shard_size: int = Field(10_000, ge=0)
    send_max_shards: int = Field(8, ge=2, le=64)
    # Shards one worker sends at once. They wait on a queue of their own (<task_queue>-shards):
    # with Temporal's 100 activity slots, a worker took as many of a stage's shards as it could
    # poll (one of two workers sent three quarters of a 100,000-recipient stage). Two are enough
    # to keep a worker's 50 provider requests in flight while a page is claimed or recorded.
    send_shard_slots: int = Field(2, ge=1, le=64)
    # Send ahead: a push to a few listed devices with a trigger window has its stage 0 sent by
    # a worker as soon as it is accepted (polling the ledger every send_ahead_poll_seconds),
    # and its journey starts only when the window ends (Temporal's start delay): one workflow
    # start per push instead of a start, a workflow task and a timer. On by default since
    # 2026-12-06: it is what makes small pushes 2.7x the naive peer. Off: the journey sends
    # stage 0 itself. The API and the workers must agree. README "Send ahead".
    send_ahead: bool = True
    send_ahead_poll_seconds: float = Field(0.02, gt=0, le=5)
    # ...doubling while none comes, up to this: what an idle worker spends on polls, against
    # how late the first push after a quiet spell can leave.
    send_ahead_idle_poll_seconds: float = Field(0.2, gt=0, le=30)
    # Pushes one worker sends ahead at once, and how long a taken push is its own before
    # another worker may take it (a worker that died mid-send).
    send_ahead_concurrency: int = Field(16, ge=1, le=256)
    send_ahead_lease_seconds: float = Field(60, ge=5)
    # Status callbacks: EngageLab's retry schedule (10 s, 1 min, 5 min, 30 min, 1 h), the
    # per-try timeout, rows per POST, and networks allowed besides public addresses.
    callback_retry_schedule_seconds: list[float] = [10, 60, 300, 1800, 3600]
    callback_timeout_seconds: float = 5.0
    callback_batch_size: int = Field(100, ge=1, le=1000)
    callback_allowed_networks: list[str] = []
    # Worker-side options per provider client, e.g. {"webpush": {"max_in_flight": 100}}.
    provider_options: dict[str, dict[str, Any]] = {}
    # Temporal's workflow sandbox re-imports a workflow's module for every run: about 30% of the
    # worker's CPU per small push (bench/bench_small_pushes.py). relance's workflows import only
    # deterministic modules, and the suite replays every recorded history inside the sandbox
    # (tests/workflows/test_continue_and_replay.py), so the worker runs them without it unless
    # this is set.
    workflow_sandbox: bool = False
    # Prometheus: the worker's own metrics port (with the Temporal SDK's metrics; 0: none) and
    # whether the API answers GET /metrics (unauthenticated: keep it off the public internet).
    worker_metrics_port: int = Field(9464, ge=0, le=65535)
    worker_metrics_host: str = "0.0.0.0"
    api_metrics: bool = True
    # How long the API trusts an appKey:masterSecret it has checked against the ledger (only
    # successes, keyed by the SHA-256 of the secret): a rotated or removed secret still works
    # for up to this many seconds in a running API. 0: read the ledger for every request.
    auth_cache_seconds: float = Field(5.0, ge=0)
    # EngageLab's tag and alias limits, per app (relance/ledger/tags.py checks them in the
    # same transaction as the write). Settings so that a test, or a bigger plan, can change them.
    tags_per_app: int = Field(100_000, ge=1)
    tag_max_bytes: int = Field(40, ge=1, le=128)
    tags_per_device: int = Field(100, ge=1)
    devices_per_tag: int = Field(100_000, ge=1)
    aliases_per_app: int = Field(100_000, ge=1)
    alias_max_bytes: int = Field(40, ge=1, le=128)
    # `POST /v4/devices/status`: a device is online if it reported a status of its own
    # (delivered, displayed, clicked) within this many seconds.
    device_online_seconds: float = Field(300.0, gt=0)
    # EngageLab's per-app request rate: requests per second each app may make to the
    # authenticated routes of one API process (429 with code 23008 beyond it). 0: no limit.
    rate_limit_per_second: int = Field(500, ge=0)
    # A push recorded whose journey never started (its API was killed between the two steps)
    # gets its journey from the API's repair loop: every `interval` seconds it looks at the
    # unfinished pushes recorded between `window` and `after` seconds ago (api/journeys.py).
    journey_repair_interval_seconds: float = Field(10.0, gt=0)
    journey_repair_after_seconds: float = Field(30.0, ge=0)
    journey_repair_window_seconds: float = Field(86400.0, gt=0)
    # On SIGTERM/SIGINT the worker stops polling and gives running activities this long to
    # finish; then they are cancelled and Temporal retries them on another worker at once
    # (no heartbeat timeout to wait for). Below a deploy's kill grace period (Docker: 10 s).
    worker_graceful_shutdown_seconds: float = Field(5.0, ge=0)
    # Eager activity execution: Temporal hands the activities a workflow task schedules straight
    # back to the worker that ran it. Off, every activity goes through the task queue, so the
    # shards of a big stage spread over all the workers instead of up to three of them going to
    # the one that planned it (bench_fanout --workers 2: 547 and 500 ms of CPU per 1,000 sends
    # on the two workers, where it was 717 and 208). Small stages are local activities either way.
    worker_eager_activities: bool = False
    # The largest request body the API reads; larger ones are refused with 413 (code 21413).
    # 4 MiB holds the largest legitimate bodies: 5,000 devices (POST /v4/devices) or 5,000
    # events (POST /v4/events) with FCM-length (~160-character) registration ids, tags and a
    # few attributes, measured at about 2 MB in tests/api/test_limits.py.
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    dev_app_key: str | None = None
    dev_master_secret: str | None = None

    @field_validator(
        "temporal_tls_cert",
        "temporal_tls_key",
        "temporal_tls_ca",
        "temporal_tls_server_name",
        "temporal_api_key",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # docker-compose passes `${TEMPORAL_TLS_CERT:-}` as an empty string: not set.
        return None if isinstance(value, str) and not value.strip() else value


@lru_cache
def get_settings() -> Settings:
    return Settings()
