"""The ledger's side of a push's report: its deliveries counted per (stage, variant, status),
with each recipient's conversion and unsubscribe counted at the stage they are attributed to.
One grouped read over the push's deliveries joined to its recipients."""

from sqlalchemy import and_, case, func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from relance.db import Delivery, Push, Recipient, reading
from relance.durations import format_duration
from relance.ledger._base import NotFound
from relance.ledger.events import attribution_window
from relance.report import GroupRow, Report, build_report


def report_rows(session: Session, msg_id: str) -> list[GroupRow]:
    d, r = Delivery, Recipient
    converted = col(r.converted_stage) == col(d.stage)
    rows = session.execute(
        sa_select(
            col(d.stage),
            col(d.variant),
            col(d.status),
            func.count(),
            func.count(col(d.failed_at)),
            func.count(col(d.delivered_at)),
            func.count(col(d.displayed_at)),
            func.count(col(d.clicked_at)),
            func.sum(case((converted, 1), else_=0)),
            func.sum(case((converted, func.coalesce(col(r.conversion_value), 0.0)), else_=0.0)),
            func.sum(case((col(r.unsubscribed_stage) == col(d.stage), 1), else_=0)),
        )
        .join(
            r,
            and_(
                col(r.msg_id) == col(d.msg_id),
                col(r.registration_id) == col(d.registration_id),
            ),
        )
        .where(col(d.msg_id) == msg_id)
        .group_by(col(d.stage), col(d.variant), col(d.status))
    ).all()
    return [
        GroupRow(
            stage=int(row[0]),
            variant=row[1],
            status=row[2],
            targeted=int(row[3]),
            failed=int(row[4]),
            delivered=int(row[5]),
            displayed=int(row[6]),
            clicked=int(row[7]),
            converted=int(row[8] or 0),
            conversion_value=float(row[9] or 0.0),
            unsubscribed=int(row[10] or 0),
        )
        for row in rows
    ]


def report(engine: Engine, msg_id: str) -> Report:
    with Session(reading(engine)) as session:
        push = session.get(Push, msg_id)
        if push is None:
            raise NotFound("msg_id", f"no push {msg_id!r}")
        rows = report_rows(session, msg_id)
        currencies = sorted(
            c
            for (c,) in session.execute(
                sa_select(col(Recipient.conversion_currency))
                .where(
                    col(Recipient.msg_id) == msg_id,
                    col(Recipient.conversion_currency).is_not(None),
                )
                .distinct()
            )
        )
        return build_report(
            msg_id,
            push.state,
            push.request,
            rows,
            format_duration(attribution_window(push.request)),
            currencies,
        )
