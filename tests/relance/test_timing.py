"""The pure rules of when: quiet hours in a recipient's zone (windows across midnight, the DST
gap and the repeated hour), the next local time, and the release timeline of a push."""

from datetime import UTC, datetime, time, timedelta

import pytest
from pydantic import ValidationError

from relance.timing import (
    AppPolicy,
    PolicyOverrides,
    QuietHours,
    Timing,
    next_allowed,
    next_local,
    timeline,
    timing_for,
    zone,
)

NIGHT = QuietHours.model_validate({"start": "22:00", "end": "08:00"})
PARIS, NY, SG = zone("Europe/Paris"), zone("America/New_York"), zone("Asia/Singapore")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_outside_the_window_goes_at_once() -> None:
    assert next_allowed(utc(2026, 11, 23, 12), PARIS, NIGHT) == utc(2026, 11, 23, 12)
    assert next_allowed(utc(2026, 11, 23, 12), PARIS, None) == utc(2026, 11, 23, 12)


def test_a_window_across_midnight_holds_to_its_end_in_local_time() -> None:
    # 22:30 in Paris (UTC+1): held to 08:00 Paris tomorrow, 07:00 UTC.
    assert next_allowed(utc(2026, 11, 23, 21, 30), PARIS, NIGHT) == utc(2026, 11, 24, 7)
    # 05:30 in Singapore (UTC+8), after midnight: held to 08:00 the same local day.
    assert next_allowed(utc(2026, 11, 23, 21, 30), SG, NIGHT) == utc(2026, 11, 24, 0)
    # 16:30 in New York: not quiet.
    assert next_allowed(utc(2026, 11, 23, 21, 30), NY, NIGHT) == utc(2026, 11, 23, 21, 30)
    # The edges: start is quiet, end is not.
    assert next_allowed(utc(2026, 11, 23, 21), PARIS, NIGHT) == utc(2026, 11, 24, 7)
    assert next_allowed(utc(2026, 11, 24, 7), PARIS, NIGHT) == utc(2026, 11, 24, 7)


def test_a_daytime_window() -> None:
    lunch = QuietHours.model_validate({"start": "12:00", "end": "14:00"})
    assert next_allowed(utc(2026, 11, 23, 12), PARIS, lunch) == utc(2026, 11, 23, 13)
    assert next_allowed(utc(2026, 11, 23, 10), PARIS, lunch) == utc(2026, 11, 23, 10)


def test_paris_across_the_march_change() -> None:
    # 29 March 2026: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    night = NIGHT
    assert next_allowed(utc(2026, 3, 28, 23), PARIS, night) == utc(2026, 3, 29, 6)  # 08:00 CEST
    # A window that ends inside the gap releases when the gap ends.
    ends_in_gap = QuietHours.model_validate({"start": "23:00", "end": "02:30"})
    assert next_allowed(utc(2026, 3, 28, 23, 30), PARIS, ends_in_gap) == utc(2026, 3, 29, 1)
    assert next_allowed(utc(2026, 3, 29, 1), PARIS, ends_in_gap) == utc(2026, 3, 29, 1)


def test_paris_across_the_october_change() -> None:
    # 25 October 2026: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:xx happens twice.
    assert next_allowed(utc(2026, 10, 24, 21), PARIS, NIGHT) == utc(2026, 10, 25, 7)  # 08:00 CET
    ends_in_repeat = QuietHours.model_validate({"start": "23:00", "end": "02:30"})
    # Released at the first 02:30 (CEST, 00:30 UTC); never at a quiet wall time.
    release = next_allowed(utc(2026, 10, 24, 22), PARIS, ends_in_repeat)
    assert release == utc(2026, 10, 25, 0, 30)
    assert not ends_in_repeat.contains(release.astimezone(PARIS).time())


def test_never_released_inside_the_window_over_a_year_of_paris() -> None:
    start = utc(2026, 1, 1)
    for hours in range(0, 365 * 24, 7):
        instant = start + timedelta(hours=hours, minutes=13)
        release = next_allowed(instant, PARIS, NIGHT)
        assert release >= instant
        assert not NIGHT.contains(release.astimezone(PARIS).time())
        assert release - instant < timedelta(hours=11)


def test_next_local_time() -> None:
    nine = time(9)
    assert next_local(utc(2026, 11, 23, 21, 30), PARIS, nine) == utc(2026, 11, 24, 8)
    assert next_local(utc(2026, 11, 23, 21, 30), SG, nine) == utc(2026, 11, 24, 1)
    assert next_local(utc(2026, 11, 23, 21, 30), NY, nine) == utc(2026, 11, 24, 14)
    assert next_local(utc(2026, 11, 24, 8), PARIS, nine) == utc(2026, 11, 24, 8)
    # In the March gap, 02:30 Paris does not exist: the end of the gap.
    assert next_local(utc(2026, 3, 29, 0), PARIS, time(2, 30)) == utc(2026, 3, 29, 1)


def test_timeline_groups_zones_by_release_and_keeps_stage_order() -> None:
    timing = Timing(quiet_hours=NIGHT)
    zones = ["Asia/Singapore", "Europe/Paris", "America/New_York", "Europe/Berlin"]
    start = utc(2026, 11, 23, 21, 30)
    slots = timeline(timing, zones, start, [timedelta(hours=2), timedelta(hours=6)])
    by = {(s.stage, tuple(s.zones or [])): (s.at, s.held) for s in slots}
    assert by[(0, ("America/New_York",))] == (start, False)
    assert by[(0, ("Asia/Singapore",))] == (utc(2026, 11, 24, 0), True)
    assert by[(0, ("Europe/Berlin", "Europe/Paris"))] == (utc(2026, 11, 24, 7), True)
    # Resends count from the recipient's own stage 0; New York's 22:30 is held to 08:00, the
    # same instant as Paris's and Berlin's 14:00: one slot.
    assert by[(1, ("America/New_York",))] == (utc(2026, 11, 23, 23, 30), False)
    ny_paris = ("America/New_York", "Europe/Berlin", "Europe/Paris")
    assert by[(2, ny_paris)] == (utc(2026, 11, 24, 13), True)
    assert by[(1, ("Asia/Singapore",))] == (utc(2026, 11, 24, 2), False)
    assert [(s.at, s.stage) for s in slots] == sorted((s.at, s.stage) for s in slots)
    for name in zones:
        mine = [s for s in slots if name in (s.zones or [])]
        assert [s.stage for s in mine] == [0, 1, 2]
        for s in mine:
            assert not NIGHT.contains(s.at.astimezone(zone(name)).time())


def test_no_policy_is_the_fast_path() -> None:
    assert timing_for(None, PolicyOverrides()) is None
    assert timing_for(AppPolicy(timezone="Europe/Paris"), PolicyOverrides()) is None
    capped = AppPolicy.model_validate({"frequency_caps": [{"max": 2, "per": "1d"}]})
    assert timing_for(capped, PolicyOverrides(frequency_cap=False)) is None
    timing = timing_for(capped, PolicyOverrides())
    assert timing is not None and timing.counted and timing.caps[0].max == 2
    quiet = AppPolicy.model_validate({"quiet_hours": {"start": "22:00", "end": "08:00"}})
    assert timing_for(quiet, PolicyOverrides(quiet_hours=False)) is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../etc/passwd"}, "timezone"),
        ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours"),
        ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "start"),
        ({"frequency_caps": [{"max": 0, "per": "1d"}]}, "max"),
        ({"frequency_caps": [{"max": 1, "per": "soon"}]}, "per"),
        ({"throttle_per_minute": 0}, "throttle_per_minute"),
    ],
)
def test_bad_policies_are_refused_naming_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        AppPolicy.model_validate(body)
    assert field in str(err.value)


def test_a_skipped_recipient_is_a_callback_row_with_its_reason() -> None:
    from relance.callbacks import callback_row

    event = {
        "msg_id": "1",
        "registration_id": "d1",
        "stage": 1,
        "status": "skipped",
        "error": "frequency_capped",
        "at": utc(2026, 11, 23),
        "event_id": "e",
    }
    status = callback_row({"custom_args": "x"}, event)["status"]
    assert status["message_status"] == "skipped"
    assert status["status_data"] == {"stage": 1, "status": "skipped", "reason": "frequency_capped"}
    assert status["error_code"] == 0
