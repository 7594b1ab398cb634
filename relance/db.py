"""SQLModel tables of the ledger and the engine: SQLite (WAL) by default, any SQLAlchemy URL."""

import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Index, Integer, UniqueConstraint, event, true
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Field, SQLModel, create_engine

from relance.sealing import SealedJSON, SealedText


def utcnow() -> datetime:
    return datetime.now(UTC)


class App(SQLModel, table=True):
    app_key: str = Field(primary_key=True, max_length=64)
    secret_hash: str = Field(max_length=128)
    name: str = Field(default="", max_length=128)
    provider: str = Field(default="simulator", max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
    # Where status callbacks go when a push names no callback_url, and how they are signed.
    callback_urls: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    callback_username: str | None = Field(default=None, max_length=128)
    # Signs every callback (the receiver holds the same secret): encrypted at rest
    # (relance/sealing.py), clear in memory.
    callback_secret: str | None = Field(default=None, sa_column=Column(SealedText, nullable=True))
    # When and how often (relance.timing.AppPolicy): defaults for every push of the app.
    timezone: str | None = Field(default=None, max_length=64)
    quiet_hours: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    frequency_caps: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    throttle_per_minute: int | None = None


class ProviderConfig(SQLModel, table=True):
    """How an app reaches its devices on some platforms: a provider and its credentials."""

    __table_args__ = (UniqueConstraint("app_key", "provider"),)

    id: int | None = Field(default=None, primary_key=True)
    app_key: str = Field(max_length=64, index=True)
    provider: str = Field(max_length=32)
    platforms: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Secrets included: never returned by the API, never passed to a workflow; encrypted at
    # rest as one sealed JSON object (relance/sealing.py).
    credentials: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(SealedJSON, nullable=False)
    )
    updated_at: datetime = Field(default_factory=utcnow)


class Device(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("app_key", "registration_id"),
        # `to.alias` finds an app's devices by alias: one index range per alias.
        Index("ix_device_app_alias", "app_key", "alias"),
    )

    id: int | None = Field(default=None, primary_key=True)
    app_key: str = Field(index=True, max_length=64)
    registration_id: str = Field(max_length=2048)
    platform: str = Field(default="android", max_length=16)
    # The device's own record of its tags, as registered; `DeviceTag` is what `to.tag` reads.
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    alias: str | None = Field(default=None, max_length=128)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    valid: bool = True
    invalid_reason: str | None = Field(default=None, max_length=500)
    updated_at: datetime = Field(default_factory=utcnow)
    # When the device last reported a status of its own (delivered, displayed, clicked), to
    # the minute: what `POST /v4/devices/status` calls its last online time.
    last_seen_at: datetime | None = None
    timezone: str | None = Field(default=None, max_length=64)  # IANA; None: the app's
    # Opted out by an `unsubscribed` event: no later stage or push reaches it until the device
    # registers again.
    unsubscribed_at: datetime | None = None


class DeviceTag(SQLModel, table=True):
    """One tag of one device: the truth about tags (`to.tag`, the tag and device routes read
    it), with `Device.tags` kept in step as a copy by every write. `to.tag` reads the
    (app_key, tag) range of its key instead of every device's JSON.

    Keyed by the device's id, not its registration id: an integer keeps the index small (a Web
    Push registration id is a subscription of up to 2 KB), joins the device by its key, and is
    the order in which the audience is materialised."""

    __table_args__ = (Index("ix_devicetag_device", "device_id"),)

    app_key: str = Field(primary_key=True, max_length=64)
    tag: str = Field(primary_key=True)
    device_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("device.id", ondelete="CASCADE"),
            primary_key=True,
            nullable=False,
        )
    )


class Push(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("app_key", "request_id"),
        # /metrics counts journeys by state at every scrape, and the repair loop pages through
        # the unfinished ones by creation (relance.ledger.unfinished_pushes).
        Index("ix_push_state_created", "state", "created_at", "msg_id"),
    )

    msg_id: str = Field(primary_key=True, max_length=64)
    app_key: str = Field(index=True, max_length=64)
    request_id: str | None = Field(default=None, max_length=128)
    request: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    condition: str | None = Field(default=None, max_length=32)
    stage_count: int = 0
    state: str = Field(default="accepted", max_length=32)  # indexed with created_at, above
    # Why the journey failed, in words a human can act on (e.g. the provider's credentials).
    error: str | None = Field(default=None, max_length=500)
    recipients: int = 0
    # Recipients and stage-0 deliveries are all in the ledger. A registration_id push is
    # materialised when accepted; a tag, alias or "all" push by the journey's first activity.
    audience_ready: bool = Field(default=True, sa_column_kwargs={"server_default": true()})
    created_at: datetime = Field(default_factory=utcnow)
    # Recipient-level first transitions, bumped in the same transaction as the events.
    seq: int = 0
    n_delivered: int = 0
    n_displayed: int = 0
    n_clicked: int = 0
    n_failed: int = 0
    n_stopped: int = 0


class SendAhead(SQLModel, table=True):
    """A small push whose stage 0 the worker sends at once, outside its journey, which Temporal
    starts only when the trigger window ends (RELANCE_SEND_AHEAD). A row is due from `due_at`;
    a worker taking it moves `due_at` a lease ahead, and deletes it once stage 0 is recorded."""

    __tablename__ = "send_ahead"

    msg_id: str = Field(primary_key=True, max_length=64)
    due_at: datetime = Field(index=True)
    attempts: int = 0


class Recipient(SQLModel, table=True):
    """One device of one push, across all its stages: what the trigger condition reads."""

    __table_args__ = (UniqueConstraint("msg_id", "registration_id"),)

    id: int | None = Field(default=None, primary_key=True)
    msg_id: str = Field(max_length=64)
    registration_id: str = Field(max_length=2048)
    platform: str = Field(default="android", max_length=16)
    delivered_at: datetime | None = None
    displayed_at: datetime | None = None
    clicked_at: datetime | None = None
    failed_at: datetime | None = None
    error: str | None = Field(default=None, max_length=500)
    stopped: bool = False
    # The device's time zone when a timed journey planned its slots (None: not planned).
    timezone: str | None = Field(default=None, max_length=64)
    # The first conversion attributed to this push (a repeated one counts once): when, its
    # value and currency, and the stage it is attributed to.
    converted_at: datetime | None = None
    conversion_value: float | None = None
    conversion_currency: str | None = Field(default=None, max_length=8)
    converted_stage: int | None = None
    # The device unsubscribed while this push was running (and at which stage).
    unsubscribed_at: datetime | None = None
    unsubscribed_stage: int | None = None


class Delivery(SQLModel, table=True):
    """One stage sent (or to send) to one recipient."""

    __table_args__ = (
        UniqueConstraint("msg_id", "stage", "registration_id"),
        Index("ix_delivery_page", "msg_id", "stage", "id"),
        # PostgreSQL: half of each page left free, so that a send's two updates of a row
        # (claimed, then its outcome) stay on its page and touch no index (migration 4c2d8e1f7a93).
        {"postgresql_with": {"fillfactor": 50}},
    )

    id: int | None = Field(default=None, primary_key=True)
    msg_id: str = Field(max_length=64)
    stage: int
    registration_id: str = Field(max_length=2048)
    status: str = Field(default="pending", max_length=16)  # pending|sending|sent|failed|skipped
    title: str | None = Field(default=None, max_length=200)
    alert: str | None = Field(default=None, max_length=5000)
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    displayed_at: datetime | None = None
    clicked_at: datetime | None = None
    failed_at: datetime | None = None
    error: str | None = Field(default=None, max_length=500)
    # Held by quiet hours, local_time or send_at: released (or to be released) at this time.
    held_until: datetime | None = None
    # Why it was skipped: stopped (clicked, failed), invalid_token, frequency_capped.
    skip_reason: str | None = Field(default=None, max_length=32)
    # The A/B variant this recipient was assigned at this stage (None: the stage has none).
    variant: str | None = Field(default=None, max_length=32)


class DeviceSend(SQLModel, table=True):
    """One send counted against an app's frequency caps: every push, every stage. Written in
    the same transaction that checks the caps and claims the delivery."""

    __table_args__ = (Index("ix_devicesend_window", "app_key", "registration_id", "at"),)

    delivery_id: int = Field(primary_key=True)  # one count per delivery, however many tries
    app_key: str = Field(max_length=64)
    registration_id: str = Field(max_length=2048)
    at: datetime


class ThrottleMinute(SQLModel, table=True):
    """Sends an app has taken in one minute, across its pushes and workers."""

    app_key: str = Field(primary_key=True, max_length=64)
    minute: datetime = Field(primary_key=True)
    used: int = 0


class StatusEvent(SQLModel, table=True):
    __table_args__ = (Index("ix_status_event_page", "msg_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    msg_id: str = Field(max_length=64)
    registration_id: str = Field(max_length=2048)
    stage: int
    status: str = Field(max_length=16)
    at: datetime
    error: str | None = Field(default=None, max_length=500)
    received_at: datetime = Field(default_factory=utcnow)


class CallbackRow(SQLModel, table=True):
    """The outbox: one status event for one callback URL, written with the event itself."""

    __table_args__ = (
        UniqueConstraint("url", "event_id"),
        Index("ix_callback_row_unbatched", "app_key", "batch_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    app_key: str = Field(max_length=64)
    url: str = Field(max_length=2048)
    event_id: str = Field(max_length=64)
    msg_id: str = Field(max_length=64)
    row: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    batch_id: int | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow)


class CallbackBatch(SQLModel, table=True):
    """Rows POSTed together to one URL; retried as a unit, dead-lettered after the last try."""

    __table_args__ = (Index("ix_callback_batch_due", "app_key", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    app_key: str = Field(max_length=64)
    url: str = Field(max_length=2048)
    state: str = Field(default="pending", max_length=16)  # pending|delivered|dead
    rows: int = 0
    attempts: int = 0
    next_attempt_at: datetime
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None


class Schedule(SQLModel, table=True):
    """An EngageLab scheduled push (`/v4/schedules`); its timing runs as the Temporal Schedule
    `schedule-<app_key>-<schedule_id>`, and each firing reads the push body from here."""

    schedule_id: str = Field(primary_key=True, max_length=64)
    app_key: str = Field(index=True, max_length=64)
    name: str = Field(max_length=255)
    enabled: bool = True
    trigger: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    push: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ScheduleFiring(SQLModel, table=True):
    """One firing of a schedule and the push it made (or why it made none); one row per
    firing, whatever the retries: `/v4/schedules/{id}/msg-ids` reads these."""

    __table_args__ = (UniqueConstraint("schedule_id", "firing_key"),)

    id: int | None = Field(default=None, primary_key=True)
    schedule_id: str = Field(max_length=64)
    # The firing's nominal time as Temporal names it: the same for every retry of a firing.
    firing_key: str = Field(max_length=64)
    msg_id: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=500)
    scheduled_at: datetime
    fired_at: datetime = Field(default_factory=utcnow)


# How long a writer waits for SQLite's write lock before the transaction fails, and the step
# of SQLite's own busy handler for the statements inside a transaction.
SQLITE_WRITE_WAIT_SECONDS = 60.0
SQLITE_BUSY_STEP_MS = 20


def make_engine(url: str) -> Engine:
    """The ledger engine; for SQLite: the folder made, WAL, and write transactions that queue."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let BEGIN below open transactions
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        # Short: SQLite's own busy handler sleeps in steps of up to 100 ms, so a writer that
        # lost the race idled long after the lock was free. Waiting for the write lock is done
        # by `_on_begin` instead, in steps of at most a few milliseconds.
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_STEP_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE: a writer takes the write lock up front, so concurrent writers wait instead
        # of failing; readers (see `reading`) begin plainly and run beside them under WAL.
        if conn.get_execution_options().get("relance_read_only", False):
            conn.exec_driver_sql("BEGIN")
            return
        deadline = time.monotonic() + SQLITE_WRITE_WAIT_SECONDS
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(random.uniform(0.0005, 0.002))  # jitter: writers do not move in step

    return engine


def reading(engine: Engine) -> Engine:
    """The same engine for transactions that only read: on SQLite they take no write lock."""
    return engine.execution_options(relance_read_only=True)


def create_tables(engine: Engine) -> None:
    """The tables straight from the models, with no schema version: only for throwaway test
    ledgers. A real ledger changes shape through `relance.migrate.upgrade` alone."""
    SQLModel.metadata.create_all(engine)
