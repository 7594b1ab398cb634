"""What every ledger module shares: the errors the ledger raises and its SQL helpers."""

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, any_, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

T = TypeVar("T")


class LedgerError(Exception):
    """A request the ledger refuses; `field` names what was wrong. The API decides the status."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(LedgerError):
    """What was asked for does not exist (or belongs to another app)."""


class LimitExceeded(LedgerError):
    """The write would take the app past one of its limits; `code` is the error code the API
    answers (HTTP 400), one per limit (see `relance.ledger.tags`)."""

    def __init__(self, field: str, message: str, code: int) -> None:
        super().__init__(field, message)
        self.code = code


def insert_for(session: Session) -> Any:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING on both SQLite and PostgreSQL."""
    bind = session.get_bind()
    return (postgresql if bind.dialect.name == "postgresql" else sqlite).insert


def chunks(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def on_postgresql(session: Session) -> bool:
    return bool(session.get_bind().dialect.name == "postgresql")


def placeholder(session: Session) -> str:
    """A positional parameter's mark in a plain statement: psycopg's or sqlite3's."""
    return "%s" if on_postgresql(session) else "?"


def unnest(columns: dict[str, str]) -> str:
    """`unnest(%(a)b::text[], ...) WITH ORDINALITY AS v(a, ..., ord)` for PostgreSQL: one
    array parameter per column (name: SQL type), whatever the number of rows; psycopg sends
    each list as one array, with no per-value bind processing."""
    arrays = ", ".join(f"%({c})b::{t}[]" for c, t in columns.items())
    return f"unnest({arrays}) WITH ORDINALITY AS v({', '.join(columns)}, ord)"


def arrays(rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> dict[str, list[Any]]:
    """Rows as one list per column: the parameters of `unnest`."""
    rows = list(rows)
    return {c: [row[c] for row in rows] for c in columns}


def among(session: Session, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL `column = ANY(array)`: one parameter whatever the
    number of values, so the statement's text (and the server's parse) is the same for every
    batch, where an IN list of n bound values is a new statement for each n."""
    values = list(values)
    if on_postgresql(session):
        return column == any_(bindparam(None, values, type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


# SQLite: the hot paths of a send (claim, outcomes, events) as plain statements handed to the
# driver, as PostgreSQL's go through `unnest`. SQLAlchemy's executemany processed every value
# of every row in Python (bind processors, parameter dicts, the ORM's bulk bookkeeping): most
# of the ledger's CPU per send (bench/bench_ledger_send.py).
SQLITE_MAX_ROWS = 500  # rows per multi-row statement, well under SQLite's 32,766 variables
_sqlite_datetime = sqlite.DATETIME().bind_processor(sqlite.dialect())
assert _sqlite_datetime is not None


@lru_cache(maxsize=1024)  # a page's rows mostly share one moment
def sqlite_time(moment: datetime | None) -> str | None:
    """A time as SQLAlchemy stores it in SQLite (the same processor), for plain statements."""
    return None if moment is None else _sqlite_datetime(moment)  # type: ignore[misc]


@lru_cache(maxsize=256)
def sqlite_insert(table: str, columns: tuple[str, ...], rows: int, tail: str = "") -> str:
    """`INSERT INTO table (columns) VALUES (?, ...), ... tail`: one text per row count, so the
    driver's statement cache keeps it."""
    one = "(" + ", ".join("?" * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * rows)} {tail}"


@lru_cache(maxsize=256)
def sqlite_in(n: int) -> str:
    """`(?, ?, ...)`: n placeholders for an IN list."""
    return "(" + ", ".join("?" * n) + ")"


def flat(rows: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    return tuple(v for row in rows for v in row)


def sqlite_update_ids(session: Session, update: str, values: Sequence[Any], ids: list[int]) -> None:
    """`update` (ending in `WHERE id IN `) with `values`, for `ids`, in statements of at most
    SQLITE_MAX_ROWS ids."""
    conn = session.connection()
    for part in chunks(ids, SQLITE_MAX_ROWS):
        conn.exec_driver_sql(update + sqlite_in(len(part)), (*values, *part))
