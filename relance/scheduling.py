"""Scheduled and recurring pushes, EngageLab's way (`/v4/schedules`): the request models and
their checks, and the pure rules that turn a trigger into a Temporal Schedule spec.

Each EngageLab schedule is one Temporal Schedule. A `single` trigger is a calendar pinned to one
instant (and one action); a `periodical` trigger is a calendar of its `time` on its `point`s
(every day, the given weekdays or the given days of the month) in the app's time zone, bounded
by `start` and `end`. A `frequency` above 1 (every 2nd day, week or month) fires the calendar
every unit and lets only the firings on the cadence make a push (`on_cadence`): a calendar spec
cannot count units from a start date, and an interval spec would ignore the time zone's DST.
"""

import re
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from temporalio.client import ScheduleCalendarSpec, ScheduleRange, ScheduleSpec

from relance.journey import JourneyPlan
from relance.models import PushRequest

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}$")
# EngageLab: a schedule's name has at most 255 bytes of letters, digits, underscores (and CJK).
_NAME = re.compile(r"^\w+$")
WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")  # Temporal's day_of_week: 0 = Sun
# EngageLab: no single time and no periodical span beyond a year.
MAX_AHEAD = timedelta(days=366)
PAGE_SIZE = 50
# zone_type 2: the earliest time zone on Earth (UTC+14, Line Islands). The push fires when the
# wall time comes there, a minute early, and carries `options.local_time` for every other zone.
EARLIEST_ZONE = "Etc/GMT-14"
LOCAL_LEAD = timedelta(minutes=1)


def parse_datetime(value: str) -> datetime:
    """ "yyyy-MM-dd HH:mm:ss" (naive wall time), strictly: EngageLab refuses "2014-2-15 13:16"."""
    if not _DATETIME.match(value):
        raise ValueError('expected "yyyy-MM-dd HH:mm:ss", e.g. "2026-12-01 09:00:00"')
    try:
        return datetime.strptime(value, DATETIME_FORMAT)
    except ValueError as exc:
        raise ValueError(f'expected "yyyy-MM-dd HH:mm:ss" ({exc})') from None


def parse_time(value: str) -> tuple[int, int, int]:
    if not _TIME.match(value):
        raise ValueError('expected "HH:mm:ss" (24-hour clock), e.g. "09:00:00"')
    h, m, s = (int(p) for p in value.split(":"))
    if h > 23 or m > 59 or s > 59:
        raise ValueError('expected "HH:mm:ss" (24-hour clock), e.g. "09:00:00"')
    return h, m, s


class SingleTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time: str = Field(description='"yyyy-MM-dd HH:mm:ss", not in the past, within a year.')
    zone_type: Literal[1, 2] = Field(
        1,
        description="1: the app's time zone. 2: each device's own time zone (one push whose "
        "stage 0 reaches each recipient at that wall time, via `options.local_time`).",
    )

    @field_validator("time")
    @classmethod
    def _format(cls, v: str) -> str:
        parse_datetime(v)
        return v


class PeriodicalTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(description='"yyyy-MM-dd HH:mm:ss": no firing before.')
    end: str = Field(description='"yyyy-MM-dd HH:mm:ss": no firing after; within a year.')
    time: str = Field(description='"HH:mm:ss": the wall time of each firing.')
    time_unit: Literal["day", "week", "month"] = Field(description="day, week or month.")
    frequency: int = Field(1, ge=1, le=100, description="Every `frequency` time units.")
    point: list[str] | None = Field(
        None,
        max_length=31,
        description='week: weekdays ("MON".."SUN"); month: days of the month ("01".."31").',
    )
    zone_type: Literal[1] = Field(1, description="1: the app's time zone (the only one).")

    @field_validator("time_unit", mode="before")
    @classmethod
    def _unit(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v  # EngageLab writes "day", "WEEK", "MONTH"

    @field_validator("start", "end")
    @classmethod
    def _datetime(cls, v: str) -> str:
        parse_datetime(v)
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        parse_time(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "PeriodicalTrigger":
        start, end = parse_datetime(self.start), parse_datetime(self.end)
        if end <= start:
            raise ValueError(f"end: expected a time after start ({self.start})")
        if end - start > MAX_AHEAD:
            raise ValueError("end: expected at most a year after start")
        if self.time_unit == "day":
            return self
        if not self.point:
            raise ValueError(f"point: expected at least one value for time_unit {self.time_unit}")
        for i, p in enumerate(self.point):
            if self.time_unit == "week" and p.upper() not in WEEKDAYS:
                raise ValueError(f'point[{i}]: expected a weekday "MON".."SUN", got {p!r}')
            if self.time_unit == "month" and not (p.isdigit() and 1 <= int(p) <= 31):
                raise ValueError(f'point[{i}]: expected a day of the month "01".."31", got {p!r}')
        return self


class ScheduleTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    single: SingleTrigger | None = None
    periodical: PeriodicalTrigger | None = None
    intelligent: dict[str, Any] | None = Field(None, description="Not supported: refused.")

    @model_validator(mode="after")
    def _one(self) -> "ScheduleTrigger":
        if self.intelligent is not None:
            raise ValueError(
                "intelligent: intelligent delivery is not supported by relance; "
                "use single or periodical"
            )
        if (self.single is None) == (self.periodical is None):
            raise ValueError("expected exactly one of single, periodical")
        return self


_PUSH_EXAMPLE: dict[str, Any] = {
    "from": "push",
    "to": {"tag": ["news"]},
    "body": {"platform": "android", "notification": {"alert": "Your morning briefing"}},
}


class ScheduleIn(BaseModel):
    """POST /v4/schedules; PUT takes the same fields, each optional."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "morning_briefing",
                    "enabled": True,
                    "trigger": {
                        "periodical": {
                            "start": "2026-12-01 00:00:00",
                            "end": "2027-06-01 00:00:00",
                            "time": "08:30:00",
                            "time_unit": "day",
                            "frequency": 1,
                        }
                    },
                    "push": _PUSH_EXAMPLE,
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=255)
    enabled: bool = True
    trigger: ScheduleTrigger
    push: PushRequest

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v) or len(v.encode()) > 255:
            raise ValueError("expected at most 255 bytes of letters, digits and underscores")
        return v


class ScheduleUpdate(BaseModel):
    """PUT /v4/schedules/{id}: what is given replaces what was stored."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    enabled: bool | None = None
    trigger: dict[str, Any] | None = None
    push: dict[str, Any] | None = None


def zone(trigger: ScheduleTrigger, app_zone: str) -> str:
    """The time zone the trigger's wall times are read in."""
    if trigger.single is not None and trigger.single.zone_type == 2:
        return "UTC"  # the calendar holds the UTC instant computed by `single_instant`
    return app_zone


def single_instant(single: SingleTrigger, app_zone: str) -> datetime:
    """When a single trigger fires (aware). zone_type 2: when its wall time comes in the earliest
    zone, a minute early, so every zone from UTC+14 to UTC-9 gets its next such wall time on
    the given date (zones further west get theirs a day earlier: no 24-hour window holds 26)."""
    wall = parse_datetime(single.time)
    if single.zone_type == 2:
        return wall.replace(tzinfo=ZoneInfo(EARLIEST_ZONE)) - LOCAL_LEAD
    return wall.replace(tzinfo=ZoneInfo(app_zone))


def check_future(trigger: ScheduleTrigger, app_zone: str, now: datetime) -> tuple[str, str] | None:
    """(field, message) when the trigger can never fire, or fires beyond EngageLab's year."""
    if trigger.single is not None:
        at = single_instant(trigger.single, app_zone)
        if at <= now:
            return (
                "trigger.single.time",
                f"expected a time in the future ({at.isoformat()} is past)",
            )
        if at - now > MAX_AHEAD:
            return "trigger.single.time", "expected a time within a year"
    if trigger.periodical is not None:
        end = parse_datetime(trigger.periodical.end).replace(tzinfo=ZoneInfo(app_zone))
        if end <= now:
            return "trigger.periodical.end", "expected a time in the future"
    return None


def temporal_spec(trigger: ScheduleTrigger, app_zone: str) -> ScheduleSpec:
    """The Temporal Schedule spec of a trigger, its time zone included."""
    if trigger.single is not None:
        at = single_instant(trigger.single, app_zone)
        tz = zone(trigger, app_zone)
        local = at.astimezone(ZoneInfo(tz))
        calendar = ScheduleCalendarSpec(
            year=[ScheduleRange(local.year)],
            month=[ScheduleRange(local.month)],
            day_of_month=[ScheduleRange(local.day)],
            hour=[ScheduleRange(local.hour)],
            minute=[ScheduleRange(local.minute)],
            second=[ScheduleRange(local.second)],
            comment=f"single {trigger.single.time} zone_type {trigger.single.zone_type}",
        )
        return ScheduleSpec(calendars=[calendar], time_zone_name=tz)
    p = trigger.periodical
    assert p is not None
    h, m, s = parse_time(p.time)
    days: dict[str, Any] = {}
    if p.time_unit == "week":
        days["day_of_week"] = [ScheduleRange(WEEKDAYS.index(x.upper())) for x in p.point or []]
    elif p.time_unit == "month":
        days["day_of_month"] = [ScheduleRange(int(x)) for x in p.point or []]
    calendar = ScheduleCalendarSpec(
        hour=[ScheduleRange(h)],
        minute=[ScheduleRange(m)],
        second=[ScheduleRange(s)],
        comment=f"every {p.frequency} {p.time_unit} at {p.time}",
        **days,
    )
    app_tz = ZoneInfo(app_zone)
    return ScheduleSpec(
        calendars=[calendar],
        start_at=parse_datetime(p.start).replace(tzinfo=app_tz),
        end_at=parse_datetime(p.end).replace(tzinfo=app_tz),
        time_zone_name=app_zone,
    )


def on_cadence(periodical: PeriodicalTrigger, app_zone: str, at: datetime) -> bool:
    """Whether a firing at `at` is on the trigger's `frequency` (every Nth unit from `start`)."""
    n = periodical.frequency
    if n == 1:
        return True
    day = at.astimezone(ZoneInfo(app_zone)).date()
    first = parse_datetime(periodical.start).date()
    if periodical.time_unit == "day":
        return (day - first).days % n == 0
    if periodical.time_unit == "week":
        monday = first - timedelta(days=first.weekday())
        return ((day - monday).days // 7) % n == 0
    return ((day.year - first.year) * 12 + day.month - first.month) % n == 0


def push_for_firing(push: dict[str, Any], trigger: ScheduleTrigger, request_id: str) -> PushRequest:
    """The push one firing makes: the stored body, its own request_id (so a retried firing
    makes no second push), and for zone_type 2 the wall time as `options.local_time`."""
    body = {**push, "request_id": request_id}
    if trigger.single is not None and trigger.single.zone_type == 2:
        inner = dict(body.get("body") or {})
        options = dict(inner.get("options") or {})
        options["local_time"] = parse_datetime(trigger.single.time).strftime("%H:%M")
        inner["options"] = options
        body["body"] = inner
    return PushRequest.model_validate(body)


def firing_request_id(schedule_id: str, firing_key: str) -> str:
    return f"schedule:{schedule_id}:{firing_key}"[:128]


class FiringInput(BaseModel):
    """What a Temporal Schedule's action starts `ScheduledPush` with: names, never secrets or
    the push body (read from the ledger at each firing, so a PUT applies to the next one)."""

    app_key: str
    schedule_id: str


class FireInput(BaseModel):
    app_key: str
    schedule_id: str
    # The firing's nominal time as Temporal names it: stable across retries of the firing.
    firing_key: str
    scheduled_at: datetime


class FireResult(BaseModel):
    msg_id: str | None = None
    # The journey to start (None when the firing made no push).
    plan: JourneyPlan | None = None
    # Why the firing made no push: off the trigger's cadence, schedule deleted, no audience...
    skipped: str | None = None
    # What the Temporal UI shows of the journey (relance.describe.journey_labels).
    summary: str | None = None
    details: str | None = None
