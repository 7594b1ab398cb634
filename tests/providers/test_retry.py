"""The Retry-After parser and the retry budget every provider shares."""

import random
import time
from email.utils import formatdate

import pytest

from activities.providers.retry import MAX_RETRY_AFTER, RetryBudget, parse_retry_after

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


def test_the_backoff_jitters_within_the_upper_half_of_its_step() -> None:
    budget, rng = RetryBudget(base_delay=0.5, max_delay=1000), random.Random(1)
    for attempt in range(1, 9):
        step = 0.5 * 2 ** (attempt - 1)
        delays = [budget.backoff(attempt, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step / 4  # spread out, not one fixed value


def test_the_backoff_grows_with_each_failure() -> None:
    budget, rng = RetryBudget(base_delay=0.5, max_delay=1000), random.Random(2)
    means = [sum(budget.backoff(n, rng) for _ in range(100)) / 100 for n in range(1, 9)]
    assert means == sorted(means) and means[-1] > 50 * means[0]


def test_the_backoff_never_exceeds_max_delay() -> None:
    budget = RetryBudget(base_delay=0.5, max_delay=16.0)
    delays = [budget.backoff(attempt) for attempt in (6, 7, 10, 100, 10_000)]
    assert all(8.0 <= d <= 16.0 for d in delays)


def test_the_same_rng_seed_gives_the_same_backoff() -> None:
    budget = RetryBudget()
    assert budget.backoff(3, random.Random(7)) == budget.backoff(3, random.Random(7))


def test_the_servers_retry_after_wins_over_the_backoff() -> None:
    budget = RetryBudget(base_delay=100.0, max_delay=100.0)
    assert budget.wait(1, 2.5) == 2.5
    assert budget.wait(1, 0.0) == 0.0
    assert 50.0 <= budget.wait(1, None) <= 100.0


def test_the_budget_is_spent_by_tries_or_by_waiting() -> None:
    budget = RetryBudget(attempts=3, total_wait=10.0)
    assert not budget.exhausted(1, waited=0.0, delay=10.0)
    assert budget.exhausted(1, waited=0.0, delay=10.1)
    assert budget.exhausted(2, waited=8.0, delay=3.0)
    assert budget.exhausted(3, waited=0.0, delay=0.0)
