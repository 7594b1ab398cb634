"""The Retry-After parser every provider shares."""

import time
from email.utils import formatdate

import pytest

from activities.providers.retry import MAX_RETRY_AFTER, parse_retry_after

NOW = 1_750_000_000.0


def http_date(unix_time: float) -> str:
    return formatdate(unix_time, usegmt=True)


@pytest.mark.parametrize(("value", "seconds"), [("120", 120.0), ("0", 0.0), ("1.5", 1.5)])
def test_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_an_http_date_in_the_future_is_the_time_until_then() -> None:
    assert parse_retry_after(http_date(NOW + 90), now=NOW) == 90.0


def test_an_http_date_in_the_past_means_now() -> None:
    assert parse_retry_after(http_date(NOW - 90), now=NOW) == 0.0


def test_an_http_date_counts_from_the_current_time_by_default() -> None:
    wait = parse_retry_after(http_date(time.time() + 60))
    assert wait is not None and 55 <= wait <= 60


def test_an_http_date_without_a_zone_is_utc() -> None:
    unzoned = formatdate(NOW + 30)  # "... -0000": UTC, its sender's own zone unknown
    assert unzoned.endswith("-0000")
    assert parse_retry_after(unzoned, now=NOW) == 30.0


@pytest.mark.parametrize("value", [None, "", "soon", "Thu, 32 Foo 2025", "nan", "5, 5"])
def test_absent_or_unreadable_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("value", ["-5", "-0.1", "-inf"])
def test_a_negative_delay_means_now(value: str) -> None:
    assert parse_retry_after(value) == 0.0


@pytest.mark.parametrize("value", ["inf", "1e12", http_date(NOW + 10 * 86400)])
def test_an_absurd_delay_is_capped_at_a_day(value: str) -> None:
    assert parse_retry_after(value, now=NOW) == MAX_RETRY_AFTER
