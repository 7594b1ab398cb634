"""When and how often: time zones, quiet hours, local-time delivery, frequency caps and
throttles, as pydantic models and pure rules (no I/O, no clock: the workflow calls them).

An instant is quiet for a recipient when its wall-clock time in the recipient's zone lies in
the window [start, end), a window that may cross midnight (22:00-08:00). A quiet instant is
released at the window's end, the first instant whose local wall time is `end`. Across DST:
an `end` that falls in the spring gap (02:30 on the night clocks jump 02:00 -> 03:00) releases
at the end of the gap (03:00, the first instant that is not quiet); an `end` in the repeated
autumn hour releases at its first occurrence."""

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from relance.durations import format_duration, parse_duration


@cache
def zone(name: str) -> ZoneInfo:
    """The IANA zone named `name`; ValueError when there is none."""
    if not name or name != name.strip() or name.startswith("/") or ".." in name:
        raise ValueError(f"unknown time zone {name!r}; expected an IANA name like Europe/Paris")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r}; expected an IANA name like Europe/Paris"
        ) from None


def _check_zone(name: str) -> str:
    zone(name)
    return name


def _parse_local_time(v: object) -> object:
    if isinstance(v, str):
        parts = v.split(":")
        if len(parts) != 2 or not all(p.isdigit() and len(p) == 2 for p in parts):
            raise ValueError(f"expected a local time as HH:MM, like 09:00; got {v!r}")
        hour, minute = int(parts[0]), int(parts[1])
        if hour > 23 or minute > 59:
            raise ValueError(f"expected a local time as HH:MM between 00:00 and 23:59; got {v!r}")
        return time(hour, minute)
    return v


TimeZoneName = Annotated[
    str,
    Field(max_length=64, examples=["Europe/Paris"]),
    AfterValidator(_check_zone),
]
LocalTime = Annotated[
    time,
    BeforeValidator(_parse_local_time),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$", "examples": ["09:00"]}),
]


def _format_window(v: timedelta) -> str:
    seconds = int(v.total_seconds())
    return f"{seconds // 86400}d" if seconds and seconds % 86400 == 0 else format_duration(v)


CapWindow = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(_format_window, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["1d", "7d", "12h"]}),
]


class QuietHours(BaseModel):
    """Local wall-clock hours in which nobody is sent anything; sends are held to `end`."""

    model_config = ConfigDict(extra="forbid")

    start: LocalTime
    end: LocalTime

    @model_validator(mode="after")
    def _not_empty(self) -> "QuietHours":
        if self.start == self.end:
            raise ValueError("end: expected a time different from start (the window is empty)")
        return self

    def contains(self, wall: time) -> bool:
        """Whether a local wall time is quiet: in [start, end), across midnight if need be."""
        if self.start < self.end:
            return self.start <= wall < self.end
        return wall >= self.start or wall < self.end


MAX_CAP_WINDOW = timedelta(days=90)


class FrequencyCap(BaseModel):
    """At most `max` sends to a device in any rolling window of `per`, across the app's pushes."""

    model_config = ConfigDict(extra="forbid")

    max: int = Field(ge=1, le=1000)
    per: CapWindow

    @field_validator("per")
    @classmethod
    def _window(cls, v: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= v <= MAX_CAP_WINDOW:
            raise ValueError("expected a window between 1m and 90d")
        return v


class AppPolicy(BaseModel):
    """GET/PUT /v4/app/policy: the app's defaults for every push."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "timezone": "Asia/Singapore",
                    "quiet_hours": {"start": "22:00", "end": "08:00"},
                    "frequency_caps": [{"max": 3, "per": "1d"}, {"max": 10, "per": "7d"}],
                    "throttle_per_minute": 60000,
                }
            ]
        },
    )

    timezone: TimeZoneName = Field(
        "UTC", description="Where a device without its own time zone is."
    )
    quiet_hours: QuietHours | None = None
    frequency_caps: list[FrequencyCap] = Field(default_factory=list, max_length=5)
    throttle_per_minute: int | None = Field(
        None, ge=1, le=10_000_000, description="All the app's pushes together, across workers."
    )


class Timing(BaseModel):
    """A push's effective rules (app policy with the push's overrides), carried by its plan."""

    zone: str = "UTC"  # the app's default zone, for devices without one
    quiet_hours: QuietHours | None = None
    caps: list[FrequencyCap] = Field(default_factory=list)
    counted: bool = True  # False: transactional, neither capped nor counted
    throttle_per_minute: int | None = None
    app_throttle_per_minute: int | None = None
    send_at: datetime | None = None
    local_time: LocalTime | None = None

    @property
    def by_zone(self) -> bool:
        """Whether recipients' zones matter (otherwise one timeline serves everyone)."""
        return self.quiet_hours is not None or self.local_time is not None


class PolicyOverrides(BaseModel):
    """What `body.options` may say about when and how often (see PushOptions)."""

    quiet_hours: QuietHours | Literal[False] | None = None
    frequency_cap: Literal[False] | None = None
    throttle_per_minute: int | None = None
    send_at: datetime | None = None
    local_time: time | None = None


def timing_for(policy: AppPolicy | None, push: PolicyOverrides) -> Timing | None:
    """The push's effective timing; None when nothing applies (the journey's fast path)."""
    policy = policy or AppPolicy()
    quiet = (
        None
        if push.quiet_hours is False
        else push.quiet_hours
        if push.quiet_hours is not None
        else policy.quiet_hours
    )
    counted = push.frequency_cap is not False
    caps = list(policy.frequency_caps) if counted else []
    timing = Timing(
        zone=policy.timezone,
        quiet_hours=quiet,
        caps=caps,
        counted=counted and bool(caps),
        throttle_per_minute=push.throttle_per_minute,
        app_throttle_per_minute=policy.throttle_per_minute,
        send_at=push.send_at,
        local_time=push.local_time,
    )
    if (
        quiet is None
        and not caps
        and timing.throttle_per_minute is None
        and timing.app_throttle_per_minute is None
        and push.send_at is None
        and push.local_time is None
    ):
        return None
    return timing


# -- the pure rules ----------------------------------------------------------------------------


def _first_after_gap(d: date, wall: time, tz: ZoneInfo) -> datetime:
    """The UTC instant at which local wall time `wall` of day `d` begins, or, when the wall time
    does not exist (DST gap), the instant at which the gap ends."""
    naive = datetime.combine(d, wall)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first  # exists (in a repeated hour: its first occurrence)
    # In a gap: fold=1 reads it with the offset after the change (the earlier instant), fold=0
    # with the offset before (the later): the change lies between them. Find it to the second.
    lo = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    hi = first
    if lo > hi:
        lo, hi = hi, lo
    after = hi.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0) if hi.microsecond else hi


def is_quiet(instant: datetime, tz: ZoneInfo, quiet: QuietHours | None) -> bool:
    return quiet is not None and quiet.contains(instant.astimezone(tz).time())


def next_allowed(instant: datetime, tz: ZoneInfo, quiet: QuietHours | None) -> datetime:
    """`instant` if it is outside quiet hours in `tz`, else the end of the window (UTC)."""
    if quiet is None:
        return instant
    local = instant.astimezone(tz)
    if not quiet.contains(local.time()):
        return instant
    d = local.date()
    if quiet.start > quiet.end and local.time() >= quiet.start:
        d += timedelta(days=1)  # the window crossed midnight: it ends tomorrow
    release = _first_after_gap(d, quiet.end, tz)
    return release if release > instant else instant


def next_local(instant: datetime, tz: ZoneInfo, wall: time) -> datetime:
    """The first instant at or after `instant` whose local wall time in `tz` is `wall`."""
    local = instant.astimezone(tz)
    for days in range(0, 3):
        candidate = _first_after_gap(local.date() + timedelta(days=days), wall, tz)
        if candidate >= instant:
            return candidate
    raise AssertionError("unreachable: a wall time recurs every day")


class Slot(BaseModel):
    """One release of one stage: the recipients in `zones` (None: everyone) at `at`."""

    at: datetime
    stage: int
    zones: list[str] | None = None
    held: bool = False  # later than the stage would have gone without quiet hours/local time


def releases(
    timing: Timing, tz: ZoneInfo, start: datetime, offsets: list[timedelta]
) -> list[tuple[datetime, bool]]:
    """When each stage reaches a recipient in `tz`, and whether it was held. Stage 0 goes at
    `start` (or `send_at`, or the next `local_time`), moved out of quiet hours; resend stage i
    `offsets[i-1]` after the recipient's own stage 0, moved out of quiet hours, and never
    before the stage ahead of it."""
    base = max(start, timing.send_at) if timing.send_at else start
    nominal = next_local(base, tz, timing.local_time) if timing.local_time else base
    first = next_allowed(nominal, tz, timing.quiet_hours)
    out = [(first, first > start)]
    previous = first
    for offset in offsets:
        due = first + offset
        at = max(next_allowed(due, tz, timing.quiet_hours), previous)
        out.append((at, at > due))
        previous = at
    return out


def timeline(
    timing: Timing, zones: list[str] | None, start: datetime, offsets: list[timedelta]
) -> list[Slot]:
    """Every stage's release slots, in the order the journey sends them: by time, then stage
    (so a stage never overtakes the one before it). Zones released at the same instant for a
    stage share a slot."""
    if zones is None or not timing.by_zone:
        tz = zone_or_utc(timing.zone)
        return [
            Slot(at=at, stage=stage, zones=None, held=held)
            for stage, (at, held) in enumerate(releases(timing, tz, start, offsets))
        ]
    grouped: dict[tuple[datetime, int], tuple[list[str], bool]] = {}
    for name in sorted(set(zones)):
        for stage, (at, held) in enumerate(releases(timing, zone_or_utc(name), start, offsets)):
            names, was_held = grouped.setdefault((at, stage), ([], False))
            names.append(name)
            grouped[(at, stage)] = (names, was_held or held)
    return [
        Slot(at=at, stage=stage, zones=names, held=held)
        for (at, stage), (names, held) in sorted(grouped.items())
    ]


def zone_or_utc(name: str) -> ZoneInfo:
    """A stored zone name (checked when stored); UTC should a later tzdata drop it."""
    try:
        return zone(name)
    except ValueError:
        return ZoneInfo("UTC")


def minute_of(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)
