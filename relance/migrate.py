"""The ledger's schema version: bring a ledger to the newest revision (`upgrade`), tell whether
it is there (`status`, `is_current`, `ensure_current`), and write a new revision (`revision`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from relance.db import make_engine

MIGRATIONS = Path(__file__).parent / "migrations"
# The schema of the last release without Alembic (what its `create_all` made): a ledger that has
# these tables and no version table is stamped as this revision, then upgraded.
BASELINE = "9d5c6f1e2a4b"
# Any number, the same in every process: the key of the PostgreSQL lock that lets one upgrade
# run at a time when several `relance db upgrade` start together (a restarted compose job).
_PG_LOCK_KEY = 0x72656C616E6365
UPGRADE_COMMAND = "relance db upgrade"


class LedgerNotCurrent(Exception):
    """The ledger's schema is not the one this build of relance expects."""


@dataclass(frozen=True)
class Status:
    """Where a ledger stands: its revision, the newest one, and what `upgrade` would apply."""

    current: str | None
    head: str
    pending: list[str] = field(default_factory=list)
    # Tables of the baseline but no version table: made by a release before Alembic.
    pre_alembic: bool = False
    # A revision this build does not know: the ledger was upgraded by a newer relance.
    unknown: bool = False

    @property
    def is_current(self) -> bool:
        return self.current == self.head

    def problem(self) -> str | None:
        """Why a process must not start on this ledger, in words that say what to run."""
        if self.unknown:
            return (
                f"the ledger is at schema revision {self.current}, which this build of relance "
                f"does not know (its newest is {self.head}): it was upgraded by a newer relance; "
                "run that version, or restore a backup taken before the upgrade"
            )
        if self.pre_alembic:
            return (
                "the ledger was made by a release before schema migrations; run "
                f"`{UPGRADE_COMMAND}` first (once; it keeps every row)"
            )
        if not self.is_current:
            what = "has no tables yet" if self.current is None else f"is at {self.current}"
            return (
                f"the ledger {what}, {len(self.pending)} schema revision(s) behind {self.head}; "
                f"run `{UPGRADE_COMMAND}` first"
            )
        return None


@dataclass(frozen=True)
class Upgraded:
    """What `upgrade` did: the revision before, the ones applied, and the one now."""

    before: str | None
    after: str
    applied: list[str]
    stamped_baseline: bool

    def describe(self) -> str:
        if self.stamped_baseline:
            lead = f"made before schema migrations: stamped as the baseline {BASELINE}, rows kept; "
        elif self.before is None:
            lead = "empty: "
        else:
            lead = ""
        if not self.applied:
            return f"{lead}already at the newest revision {self.after}, nothing to do"
        done = f"applied {len(self.applied)} revision(s) ({', '.join(self.applied)})"
        return f"{lead}{done}; now at {self.after}"


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built here rather than read from an alembic.ini, so an
    installed relance finds its revisions inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    # The slug first: a revision id may start with a digit, which no module name may.
    cfg.set_main_option("file_template", "%%(slug)s_%%(rev)s")
    cfg.set_main_option("truncate_slug_length", "40")
    cfg.attributes["connection"] = connection
    return cfg


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    """The newest revision this build knows."""
    heads = _scripts().get_heads()
    if len(heads) != 1:  # two revisions written in parallel: they need a merge revision
        raise RuntimeError(f"the ledger's revisions have {len(heads)} heads: {heads}")
    return heads[0]


def _status(connection: Connection) -> Status:
    current = MigrationContext.configure(connection).get_current_revision()
    newest = head()
    if current is not None and current not in {s.revision for s in _scripts().walk_revisions()}:
        return Status(current, newest, unknown=True)
    pre_alembic = current is None and bool(
        set(inspect(connection).get_table_names()) & set(BASELINE_COLUMNS)
    )
    # Newest first, the lower end excluded; a pre-Alembic ledger already has the baseline.
    lower = BASELINE if pre_alembic else (current or "base")
    between = [s.revision for s in _scripts().iterate_revisions(newest, lower)]
    return Status(current, newest, list(reversed(between)), pre_alembic)


def status(engine: Engine) -> Status:
    """Where the ledger stands against this build's revisions; changes nothing."""
    with engine.connect() as connection:
        return _status(connection)


def is_current(engine: Engine) -> bool:
    return status(engine).is_current


def pending(engine: Engine) -> list[str]:
    """The revisions `upgrade` would apply, oldest first."""
    return status(engine).pending


def ensure_current(target: Engine | str) -> None:
    """Raise `LedgerNotCurrent` unless the ledger is at this build's newest revision: the API
    and the worker never run on a schema they were not written for."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        problem = status(engine).problem()
    finally:
        if isinstance(target, str):
            engine.dispose()
    if problem is not None:
        raise LedgerNotCurrent(problem)


def _check_pre_alembic(connection: Connection) -> None:
    """A ledger without a version table must hold the baseline's tables and columns, or
    stamping it would claim a schema it does not have."""
    found = inspect(connection)
    tables = set(found.get_table_names())
    missing = []
    for table, columns in BASELINE_COLUMNS.items():
        if table not in tables:
            missing.append(f"table {table}")
            continue
        have = {c["name"] for c in found.get_columns(table)}
        missing += [f"{table}.{c}" for c in columns if c not in have]
    if missing:
        raise LedgerNotCurrent(
            "the ledger has relance tables but no schema version, and lacks "
            f"{', '.join(missing)}: it is older than the first release with migrations and "
            "cannot be upgraded in place; export what you need and start a new ledger"
        )


def upgrade(target: Engine | str, revision: str = "heads") -> Upgraded:
    """Bring the ledger to `revision` (the newest by default), in one transaction. An empty
    database gets every revision; a ledger made before Alembic is stamped as the baseline
    first, so none of its rows is touched; a current one is left alone."""
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Held until commit. On SQLite the writer's BEGIN IMMEDIATE already serialises.
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            before = _status(connection)
            if before.unknown:
                raise LedgerNotCurrent(before.problem())
            cfg = config(connection)
            if before.pre_alembic:
                _check_pre_alembic(connection)
                command.stamp(cfg, BASELINE)
            command.upgrade(cfg, revision)
            after = _status(connection)
    finally:
        if isinstance(target, str):
            engine.dispose()
    assert after.current is not None
    applied = [r for r in before.pending if r not in after.pending]
    return Upgraded(before.current, after.current, applied, before.pre_alembic)


@contextmanager
def _scratch_ledger() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="relance-revision-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        try:
            yield engine
        finally:
            engine.dispose()


def revision(message: str, empty: bool = False) -> list[Path]:
    """Write a new revision into the package's versions/ (meant for a source checkout): the
    difference between the SQLModel tables and the newest revision, found on a scratch SQLite
    ledger brought to head so the developer's own ledger plays no part. Nothing is written when
    they agree, unless `empty` asks for a blank revision (a data migration). Returns the files."""
    with _scratch_ledger() as engine:
        upgrade(engine)
        with engine.begin() as connection:
            cfg = config(connection)
            cfg.attributes["skip_empty"] = not empty
            written = command.revision(cfg, message, autogenerate=not empty)
    _scripts.cache_clear()
    scripts = written if isinstance(written, list) else [written]
    return [Path(s.path) for s in scripts if s is not None]


# The baseline's tables and columns, frozen: `_check_pre_alembic` compares an unversioned ledger
# with them. tests/relance/test_migrations.py checks them against the baseline revision.
BASELINE_COLUMNS: dict[str, tuple[str, ...]] = {
    "app": (
        "app_key",
        "secret_hash",
        "name",
        "provider",
        "created_at",
        "callback_urls",
        "callback_username",
        "callback_secret",
    ),
    "callbackbatch": (
        "id",
        "app_key",
        "url",
        "state",
        "rows",
        "attempts",
        "next_attempt_at",
        "last_error",
        "created_at",
        "delivered_at",
    ),
    "callbackrow": ("id", "app_key", "url", "event_id", "msg_id", "row", "batch_id", "created_at"),
    "delivery": (
        "id",
        "msg_id",
        "stage",
        "registration_id",
        "status",
        "title",
        "alert",
        "sent_at",
        "delivered_at",
        "displayed_at",
        "clicked_at",
        "failed_at",
        "error",
    ),
    "device": (
        "id",
        "app_key",
        "registration_id",
        "platform",
        "tags",
        "alias",
        "attributes",
        "valid",
        "invalid_reason",
        "updated_at",
    ),
    "providerconfig": ("id", "app_key", "provider", "platforms", "credentials", "updated_at"),
    "push": (
        "msg_id",
        "app_key",
        "request_id",
        "request",
        "condition",
        "stage_count",
        "state",
        "error",
        "recipients",
        "created_at",
        "seq",
        "n_delivered",
        "n_displayed",
        "n_clicked",
        "n_failed",
        "n_stopped",
    ),
    "recipient": (
        "id",
        "msg_id",
        "registration_id",
        "platform",
        "delivered_at",
        "displayed_at",
        "clicked_at",
        "failed_at",
        "error",
        "stopped",
    ),
    "statusevent": (
        "id",
        "event_id",
        "msg_id",
        "registration_id",
        "stage",
        "status",
        "at",
        "error",
        "received_at",
    ),
}
