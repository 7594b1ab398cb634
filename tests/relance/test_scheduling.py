"""Scheduled pushes below the API: the cadence of `frequency` above 1, the month calendar, and
a firing's accept on SQLite and PostgreSQL (a retried firing makes no second push); the ledger
of the release before schedules upgrades keeping its rows."""

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select
from temporalio.client import ScheduleRange
from temporalio.testing import ActivityEnvironment

from activities.schedules import ScheduleActivities
from relance import ledger, migrate
from relance.db import Push, ScheduleFiring
from relance.scheduling import (
    FireInput,
    PeriodicalTrigger,
    ScheduleTrigger,
    on_cadence,
    temporal_spec,
)
from tests.relance.test_migrations import blank  # noqa: F401 — the fixture

PUSH = {
    "from": "push",
    "to": {"registration_id": ["r-1", "r-2"]},
    "body": {"platform": "android", "notification": {"alert": "Weekly digest"}},
}


def periodical(**over: Any) -> PeriodicalTrigger:
    fields: dict[str, Any] = {
        "start": "2026-12-01 00:00:00",
        "end": "2027-06-01 00:00:00",
        "time": "09:00:00",
        "time_unit": "day",
        "frequency": 1,
    }
    return PeriodicalTrigger.model_validate({**fields, **over})


def at(day: str) -> datetime:
    return datetime.fromisoformat(f"{day}T09:00:00+00:00")


def test_every_second_day_week_and_month_count_from_start() -> None:
    days = periodical(frequency=2)
    assert [on_cadence(days, "UTC", at(d)) for d in ("2026-12-01", "2026-12-02", "2026-12-03")] == [
        True,
        False,
        True,
    ]
    # Counted across months (a day-of-month step would restart on the 1st): 32 days on, 31 off.
    assert on_cadence(days, "UTC", at("2027-01-02"))
    assert not on_cadence(days, "UTC", at("2027-01-01"))
    weeks = periodical(time_unit="week", frequency=2, point=["TUE", "SUN"])
    # 2026-12-01 is a Tuesday; its week runs Mon 11-30 to Sun 12-06.
    assert on_cadence(weeks, "UTC", at("2026-12-06"))
    assert not on_cadence(weeks, "UTC", at("2026-12-08"))
    assert on_cadence(weeks, "UTC", at("2026-12-15"))
    months = periodical(time_unit="month", frequency=3, point=["15"])
    assert on_cadence(months, "UTC", at("2027-03-15"))
    assert not on_cadence(months, "UTC", at("2027-02-15"))
    # The date is the app zone's: 23:30 UTC is already the next day in Singapore.
    late = datetime(2026, 12, 1, 23, 30, tzinfo=UTC)
    assert on_cadence(days, "UTC", late) and not on_cadence(days, "Asia/Singapore", late)


def test_a_monthly_trigger_is_a_calendar_of_its_days_in_the_app_zone() -> None:
    trigger = ScheduleTrigger(periodical=periodical(time_unit="MONTH", point=["01", "15"]))
    spec = temporal_spec(trigger, "Europe/Paris")
    assert spec.time_zone_name == "Europe/Paris"
    assert list(spec.calendars[0].day_of_month) == [ScheduleRange(1), ScheduleRange(15)]
    assert spec.start_at is not None and spec.start_at.utcoffset() is not None
    assert spec.start_at.astimezone(UTC) == datetime(2026, 11, 30, 23, 0, tzinfo=UTC)


async def test_a_retried_firing_makes_one_push(engine: Engine) -> None:
    key, _ = ledger.create_app(engine, "shop")
    ledger.create_schedule(
        engine,
        key,
        "s-1",
        "digest",
        True,
        {"periodical": periodical().model_dump(mode="json")},
        PUSH,
    )
    activities = ScheduleActivities(engine)
    fire = FireInput(
        app_key=key,
        schedule_id="s-1",
        firing_key="2026-12-01T09:00:00Z",
        scheduled_at=at("2026-12-01"),
    )
    env = ActivityEnvironment()
    first = await _run(env, activities, fire)
    again = await _run(env, activities, fire)
    assert first.msg_id is not None and again.msg_id == first.msg_id
    assert first.plan is not None and first.plan.msg_id == first.msg_id
    nextday = await _run(
        env,
        activities,
        fire.model_copy(
            update={"firing_key": "2026-12-02T09:00:00Z", "scheduled_at": at("2026-12-02")}
        ),
    )
    assert nextday.msg_id not in (None, first.msg_id)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Push)).one() == 2
        assert session.exec(select(func.count()).select_from(ScheduleFiring)).one() == 2
    assert [f.msg_id for f in ledger.list_firings(engine, key, "s-1")] == [
        first.msg_id,
        nextday.msg_id,
    ]
    # A schedule deleted before its firing ran: no push.
    assert ledger.delete_schedule(engine, key, "s-1")
    gone = await _run(
        env,
        activities,
        fire.model_copy(update={"firing_key": "2026-12-03T09:00:00Z"}),
    )
    assert gone.msg_id is None and gone.skipped


async def _run(env: ActivityEnvironment, activities: ScheduleActivities, fire: FireInput) -> Any:
    return await env.run(activities.fire_schedule, fire)


def test_the_ledger_before_schedules_upgrades_keeping_its_rows(blank: Engine) -> None:  # noqa: F811
    migrate.upgrade(blank, "f363bfdd3682")  # the revision before schedules
    key = "shop"
    with blank.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO app (app_key, secret_hash, name, provider, created_at, "
                "callback_urls) VALUES ('shop', 'x', 'Shop', 'simulator', :now, '[]')"
            ),
            {"now": datetime.now(UTC)},
        )
    migrate.upgrade(blank)
    assert migrate.is_current(blank)
    with blank.connect() as conn:
        assert list(conn.exec_driver_sql("SELECT app_key, name FROM app")) == [("shop", "Shop")]
    ledger.create_schedule(blank, key, "s-1", "digest", True, {"single": {}}, PUSH)
    ledger.record_firing(blank, "s-1", "k", datetime.now(UTC), "m-1")
    ledger.record_firing(blank, "s-1", "k", datetime.now(UTC), "m-2")  # a retry: no change
    assert [f.msg_id for f in ledger.list_firings(blank, key, "s-1")] == ["m-1"]
    with pytest.raises(ledger.NotFound):
        ledger.get_schedule(blank, "other-app", "s-1")
