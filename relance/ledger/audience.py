"""The audience of a push, as SQL over the device registry: whether there is one and how large
it is (cheap at any size), and its materialisation as Recipient and stage-0 Delivery rows, a
page at a time, so that the journey, not the HTTP request, pays for a large audience.

Pages follow device ids and every insert is ON CONFLICT DO NOTHING: a retry from any older
cursor, after a crash, inserts nothing twice."""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, false, func, literal, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from relance.db import Delivery, Device, DeviceTag, Push, Recipient, reading
from relance.ledger._base import LedgerError, NotFound, insert_for
from relance.models import Audience, PushRequest
from relance.states import DeliveryStatus

EMPTY = "expected at least one valid device; the audience is empty"
# A SELECT of device rows: `audience_query` and what narrows it.
Rows = Select[*tuple[Any, ...]]


def platforms_of(request: PushRequest) -> list[str] | None:
    """The platforms `body.platform` allows; None for all of them."""
    platform = request.body.platform
    if platform == "all":
        return None
    return [platform] if isinstance(platform, str) else list(dict.fromkeys(platform))


def _ids(column: Any, after: int | None, upto: int | None) -> list[ColumnElement[bool]]:
    return [
        *([column > after] if after is not None else []),
        *([column <= upto] if upto is not None else []),
    ]


def _named(request: PushRequest) -> list[ColumnElement[bool]]:
    """Which devices `to` names (registration ids or aliases), before any other condition."""
    to = request.to
    if to != "all" and to.registration_id is not None:
        return [col(Device.registration_id).in_(list(dict.fromkeys(to.registration_id)))]
    if to != "all" and to.alias is not None:
        return [col(Device.alias).in_(list(dict.fromkeys(to.alias)))]
    return []


def _tag_filters(
    app_key: str, to: Audience, after: int | None, upto: int | None
) -> list[ColumnElement[bool]]:
    """`tag` (any of them), each of `tag_and`, and none of `tag_not`, each an EXISTS on
    DeviceTag's primary key (app_key, tag, device_id). The id range is repeated inside each
    EXISTS: PostgreSQL does not carry a range across the join by itself, and would otherwise
    hash every tagged device for each page."""

    def tagged(tags: list[str]) -> ColumnElement[bool]:
        t = aliased(DeviceTag)  # its own name: the query may already read DeviceTag outside
        return exists().where(
            col(t.app_key) == app_key,
            col(t.tag).in_(tags),
            col(t.device_id) == col(Device.id),
            *_ids(col(t.device_id), after, upto),
        )

    where: list[ColumnElement[bool]] = []
    if to.tag is not None:
        where.append(tagged(list(dict.fromkeys(to.tag))))
    for tag in dict.fromkeys(to.tag_and or []):
        where.append(tagged([tag]))
    if to.tag_not is not None:
        where.append(~tagged(list(dict.fromkeys(to.tag_not))))
    return where


def _conditions(
    app_key: str,
    request: PushRequest,
    after: int | None = None,
    upto: int | None = None,
    tags: bool = True,
) -> list[ColumnElement[bool]]:
    """The WHERE of an audience: valid devices of the app, matching `to` and the platforms,
    with device ids in (after, upto]. Each kind reads an index: (app_key, registration_id),
    (app_key, alias), DeviceTag's (app_key, tag, device_id), or the app's devices for "all"
    (and for `tag_not` alone: everyone but those tags)."""
    where: list[ColumnElement[bool]] = [
        col(Device.app_key) == app_key,
        col(Device.valid).is_(True),
        col(Device.unsubscribed_at).is_(None),  # opted out until it registers again
        *_ids(col(Device.id), after, upto),
        *_named(request),
    ]
    to = request.to
    if tags and to != "all":
        where.extend(_tag_filters(app_key, to, after, upto))
    platforms = platforms_of(request)
    if platforms is not None:
        where.append(col(Device.platform).in_(platforms))
    return where


def _driving_tags(to: Audience) -> list[str] | None:
    """The tags whose index range drives a tag audience: `tag` (any of them), else the first of
    `tag_and` (every device has it); None for `tag_not` alone, which reads the app's devices."""
    if to.tag is not None:
        return list(dict.fromkeys(to.tag))
    if to.tag_and is not None:
        return [to.tag_and[0]]
    return None


def audience_query(
    app_key: str, request: PushRequest, after: int | None = None, upto: int | None = None
) -> Rows:
    """SELECT id, registration_id, platform of every valid device of the app that the push's
    `to` and `body.platform` match, once each (a device with two of the tags is one row);
    optionally only device ids in (after, upto]."""
    return sa_select(col(Device.id), col(Device.registration_id), col(Device.platform)).where(
        *_conditions(app_key, request, after, upto)
    )


def _page_end(
    session: Session, app_key: str, request: PushRequest, after: int, limit: int
) -> tuple[int | None, int]:
    """The device id that ends the next page: the `limit`-th device after `after` that `to`
    names, read from the index `to` uses alone (validity and platform are left to the insert,
    so a page costs `limit` index entries however sparse the audience is). None: none left.
    And how many index entries the page has: fewer than `limit` tells the last page without
    reading the next one."""
    page = _named_after(app_key, request, after).order_by("id").limit(limit).subquery()
    last, n = session.execute(sa_select(func.max(page.c.id), func.count())).one()
    return last, int(n or 0)


def _named_after(app_key: str, request: PushRequest, after: int) -> Any:
    """The ids of the devices after `after` that `to` names, from the index it uses alone: a
    device with two of the tags comes twice, and one no longer valid still comes."""
    to = request.to
    driving = _driving_tags(to) if to != "all" else None
    if driving is not None:
        return sa_select(col(DeviceTag.device_id).label("id")).where(
            col(DeviceTag.app_key) == app_key,
            col(DeviceTag.tag).in_(driving),
            col(DeviceTag.device_id) > after,
        )
    return sa_select(col(Device.id).label("id")).where(
        col(Device.app_key) == app_key, col(Device.id) > after, *_named(request)
    )


def _left_after(session: Session, app_key: str, request: PushRequest, after: int) -> int:
    """About how many devices of the audience come after `after`: an upper bound, counted on
    the same index as a page (at a million devices, one index-only scan)."""
    ids = _named_after(app_key, request, after).subquery()
    return int(session.execute(sa_select(func.count()).select_from(ids)).scalar_one())


def default_platform(request: PushRequest) -> str:
    """The platform an unknown registration id is registered on: the push's, when it names
    exactly one."""
    platform = request.body.platform
    return platform if isinstance(platform, str) and platform != "all" else "android"


def _unknown_ids(session: Session, app_key: str, request: PushRequest) -> int:
    """Registration ids of a `to.registration_id` list that accepting the push would register
    on the spot, and that its platform filter would then keep."""
    to = request.to
    if to == "all" or to.registration_id is None:
        return 0
    platforms = platforms_of(request)
    if platforms is not None and default_platform(request) not in platforms:
        return 0
    ids = list(dict.fromkeys(to.registration_id))
    known = session.execute(
        sa_select(func.count())
        .select_from(Device)
        .where(col(Device.app_key) == app_key, col(Device.registration_id).in_(ids))
    ).scalar_one()
    return len(ids) - int(known)


def valid_registration_ids(engine: Engine, app_key: str, ids: list[str]) -> set[str]:
    """Which of these registration ids are registered devices of the app with a valid token
    (one indexed read): a batch push by registration id reaches only those."""
    if not ids:
        return set()
    with Session(reading(engine)) as session:
        rows = session.execute(
            sa_select(col(Device.registration_id)).where(
                col(Device.app_key) == app_key,
                col(Device.registration_id).in_(list(dict.fromkeys(ids))),
                col(Device.valid).is_(True),
                col(Device.unsubscribed_at).is_(None),
            )
        )
        return {rid for (rid,) in rows}


def has_audience(engine: Engine, app_key: str, request: PushRequest) -> bool:
    """Whether the push reaches at least one device: one row read (LIMIT 1), whatever the size
    of the audience. Unknown registration ids count, as accepting registers them."""
    to = request.to
    probe = sa_select(literal(1))
    driving = _driving_tags(to) if to != "all" else None
    if driving is not None:
        # From the tag's index to the device: a tag nobody has reads nothing, where EXISTS per
        # device (SQLite's plan) would read every device of the app first.
        probe = (
            probe.select_from(DeviceTag)
            .join(Device, col(Device.id) == col(DeviceTag.device_id))
            .where(col(DeviceTag.app_key) == app_key, col(DeviceTag.tag).in_(driving))
        )
    # The driving range only finds candidates: every tag condition still applies.
    probe = probe.where(*_conditions(app_key, request)).limit(1)
    with Session(reading(engine)) as session:
        found = session.execute(probe).first()
        return found is not None or _unknown_ids(session, app_key, request) > 0


def count_audience(engine: Engine, app_key: str, request: PushRequest) -> int:
    """How many devices the push would reach (SQL COUNT); stores nothing. An empty audience is
    refused as accepting refuses it, naming `to`."""
    with Session(reading(engine)) as session:
        counted = session.execute(
            sa_select(func.count()).select_from(audience_query(app_key, request).subquery())
        ).scalar_one()
        count = int(counted) + _unknown_ids(session, app_key, request)
    if not count:
        raise LedgerError("to", EMPTY)
    return count


def insert_audience(
    session: Session, msg_id: str, page: Rows, devices: list[ColumnElement[bool]]
) -> int:
    """Recipient rows for the devices of `page` (`audience_query`, narrowed), then stage-0
    deliveries for the push's recipients among `devices` (a plain range of the registry, no
    audience condition: a device re-tagged or invalidated between the two statements can leave
    neither a recipient without its delivery nor a delivery without its recipient). Set-based;
    rows already there are left alone. Returns how many recipients were new."""
    rows = page.with_only_columns(
        literal(msg_id), col(Device.registration_id), col(Device.platform), false()
    )
    # SQLite reads `ON CONFLICT` after a bare FROM as a join constraint: both SELECTs end in
    # a WHERE.
    # preserve_rowcount: SQLAlchemy keeps an INSERT's rowcount only when asked (psycopg's
    # cursor has forgotten it by the time the result is read).
    inserted = (
        session.connection()
        .execute(
            insert_for(session)(Recipient)
            .from_select(["msg_id", "registration_id", "platform", "stopped"], rows)
            .on_conflict_do_nothing(index_elements=["msg_id", "registration_id"])
            .execution_options(preserve_rowcount=True)
        )
        .rowcount
    )
    deliveries = (
        sa_select(
            literal(msg_id),
            literal(0),
            col(Recipient.registration_id),
            literal(DeliveryStatus.pending.value),
        )
        .select_from(Device)
        .join(
            Recipient,
            and_(
                col(Recipient.msg_id) == msg_id,
                col(Recipient.registration_id) == col(Device.registration_id),
            ),
        )
        .where(*devices)
    )
    session.execute(
        insert_for(session)(Delivery)
        .from_select(["msg_id", "stage", "registration_id", "status"], deliveries)
        .on_conflict_do_nothing(index_elements=["msg_id", "stage", "registration_id"])
    )
    return int(inserted or 0)


# Tables whose statistics the materialising plan depends on, and how stale they may be.
_PLANNED = ("device", "devicetag")
# Tables a push's own audience grows, which the next page's and the sends' plans join: with
# statistics from before the push, PostgreSQL planned each page's stage-0 deliveries against
# every recipient written so far (page times growing 0.19 -> 0.50 s until autovacuum came by).
GROWN_BY_AUDIENCE = ("recipient", "delivery")
_STALE = (
    "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY(%(tables)s) AND "
    "(coalesce(last_analyze, last_autoanalyze) IS NULL "
    "OR n_mod_since_analyze > 0.2 * greatest(n_live_tup, 1000))"
)


def refresh_statistics(engine: Engine, tables: tuple[str, ...] = _PLANNED) -> list[str]:
    """On PostgreSQL, ANALYZE the device registry's tables when the planner has no current
    statistics for them (devices registered in bulk moments before a push, before autovacuum
    came by): without them it plans each page of an audience as a nested loop over the whole
    page (measured: 36 s instead of 1 s to materialise 20,000 devices). Returns the tables
    analysed; a sampled ANALYZE takes well under a second at a million devices."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.begin() as conn:
        stale = list(conn.exec_driver_sql(_STALE, {"tables": list(tables)}).scalars())
        for table in stale:
            conn.exec_driver_sql(f"ANALYZE {table}")  # a name from this module, not input
    return stale


def materialise_page(
    engine: Engine, msg_id: str, after_device_id: int, limit: int
) -> tuple[int | None, int]:
    """Insert the Recipient and stage-0 Delivery rows of the next `limit` devices of the push's
    audience after device id `after_device_id`, in one transaction.

    Returns the last device id of the page (the next cursor; None when no device is left) and
    how many recipients were new: 0 for a page a crashed attempt had already written."""
    page = _write_page(engine, msg_id, after_device_id, limit)
    return page.cursor, page.inserted


@dataclass(frozen=True)
class WrittenPage:
    cursor: int | None  # the page's last device id; None: no device was left
    inserted: int  # recipients new in this page (0: a crashed attempt had written it)
    last: bool  # no device is left after this page
    rest: int | None = None  # when counted: about how many devices are left (an upper bound)


def _write_page(
    engine: Engine, msg_id: str, after_device_id: int, limit: int, count_rest: bool = False
) -> WrittenPage:
    with Session(engine) as session:
        push = session.get(Push, msg_id)
        if push is None:
            raise NotFound("msg_id", f"no push {msg_id!r}")
        request = PushRequest.model_validate(push.request)
        last, n = _page_end(session, push.app_key, request, after_device_id, limit)
        if last is None:
            return WrittenPage(None, 0, True)
        page = audience_query(push.app_key, request, after_device_id, last)
        devices = [
            col(Device.app_key) == push.app_key,
            col(Device.id) > after_device_id,
            col(Device.id) <= last,
        ]
        inserted = insert_audience(session, msg_id, page, devices)
        counted = count_rest and n == limit
        rest = _left_after(session, push.app_key, request, last) if counted else None
        session.commit()
        return WrittenPage(int(last), inserted, n < limit, rest)


@dataclass(frozen=True)
class AudienceChunk:
    cursor: int | None  # the next chunk's first device is after this id; None: all written
    upto_id: int  # the push's highest stage-0 delivery id once this chunk is written
    recipients: int | None  # the push's recipient count, once all are written
    rest: int | None = None  # when counted: about how many devices are left after the chunk


def materialise_chunk(
    engine: Engine, msg_id: str, after_device_id: int, limit: int, count_rest: bool = False
) -> AudienceChunk:
    """One chunk of a streamed audience: the next `limit` devices after `after_device_id`
    written as `materialise_page` writes them, then the highest stage-0 delivery id of the
    push. Chunks are written one after the other, so a chunk's deliveries are the push's
    stage-0 deliveries with ids in (the previous chunk's upto_id, this one's]: a range a
    send can start on while the next chunk is written. The last chunk marks the audience
    ready (`finish_materialise`). A chunk written again (a retried activity) adds nothing, and
    a push whose audience is ready returns at once. With `count_rest`, a chunk that is not the
    last also says about how many devices are left after it (`AudienceChunk.rest`)."""
    with Session(engine) as session:
        push = session.get(Push, msg_id)
        if push is None:
            raise NotFound("msg_id", f"no push {msg_id!r}")
        ready, recipients = push.audience_ready, push.recipients
    if ready:
        return AudienceChunk(None, _last_delivery(engine, msg_id), recipients)
    page = _write_page(engine, msg_id, after_device_id, limit, count_rest)
    upto = _last_delivery(engine, msg_id)
    if not page.last:
        return AudienceChunk(page.cursor, upto, None, page.rest)
    return AudienceChunk(None, upto, finish_materialise(engine, msg_id))


def _last_delivery(engine: Engine, msg_id: str) -> int:
    d = Delivery
    with Session(engine) as session:
        last = session.execute(
            sa_select(func.max(col(d.id))).where(col(d.msg_id) == msg_id, col(d.stage) == 0)
        ).scalar_one_or_none()
    return int(last or 0)


def finish_materialise(engine: Engine, msg_id: str) -> int:
    """Record the push's real recipient count and mark its audience ready; returns the count.
    `seq` moves, so a journey tells this progress from what it held before."""
    with Session(engine) as session:
        recipients = session.execute(
            sa_select(func.count()).select_from(Recipient).where(col(Recipient.msg_id) == msg_id)
        ).scalar_one()
        done = session.connection().execute(
            update(Push)
            .where(col(Push.msg_id) == msg_id)
            .values(recipients=recipients, audience_ready=True, seq=Push.seq + 1)
        )
        if not done.rowcount:
            raise NotFound("msg_id", f"no push {msg_id!r}")
        session.commit()
        return int(recipients)
