"""Durations as users write them in resend policies, and their short form in responses."""

from datetime import timedelta

import pytest

from relance.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("PT2H", timedelta(hours=2)),
        ("PT1H30M", timedelta(hours=1, minutes=30)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        (" 2h ", timedelta(hours=2)),
        (90, timedelta(seconds=90)),
        (7200, timedelta(hours=2)),
    ],
)
def test_parses_the_documented_forms(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "2x", "h", "-1h", "PT", "1h 30m", None, True, [2]])
def test_rejects_anything_else_naming_the_expected_forms(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration") as info:
        parse_duration(bad)
    message = str(info.value)
    for form in ('"90s"', '"2h"', '"1h30m"', '"PT2H"'):
        assert form in message


def test_rejection_quotes_what_was_given() -> None:
    with pytest.raises(ValueError, match="'2x'"):
        parse_duration("2x")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=2), "2h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=2), "48h"),
        (timedelta(0), "0s"),
    ],
)
def test_format_gives_the_short_form(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@pytest.mark.parametrize(
    "value",
    [
        timedelta(seconds=1),
        timedelta(seconds=90),
        timedelta(hours=1, minutes=30),
        timedelta(days=2, hours=3, minutes=4, seconds=5),
        timedelta(seconds=2.5),
    ],
)
def test_format_round_trips_through_parse(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value
