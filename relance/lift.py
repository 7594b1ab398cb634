"""Did it work? Two proportions compared: the difference with a Newcombe–Wilson interval, the
relative lift with a log interval, a two-sided p-value, and when there is too little data to
say anything. Pure functions on counts; no dependency (the tests check every formula against
statsmodels to 1e-6).

- Difference p1 - p2: Newcombe's hybrid score interval (method 10 of Newcombe 1998), built
  from each group's Wilson score interval. Its coverage stays close to the nominal 95% for
  small samples and for rates near 0 or 1, where the Wald interval is too narrow, and it is
  what statsmodels' `confint_proportions_2indep(method="newcomb")` computes.
- Relative lift p1 / p2 - 1: the log (Katz) interval of the risk ratio with 0.5 added to each
  count and each size (statsmodels' `method="log-adjusted"`, its default): defined with zero
  successes, and close to nominal coverage once each group has a handful of successes, which
  the "enough data" rule below requires before a number is shown.
- p-value: the pooled two-proportion z-test (the score test of p1 = p2, statsmodels'
  `test_proportions_2indep(method="score", correction=False)`).
- Enough data: each group has at least MIN_N recipients and at least MIN_EXPECTED expected
  successes and failures under the pooled rate (Cochran's rule of 5 expected per cell, which
  the normal approximation behind the p-value and the log interval needs). Pooled, not
  observed: a group with 0 observed clicks where 10 were expected is strong evidence, and
  is shown.
"""

import math
from dataclasses import dataclass

CONFIDENCE = 0.95
Z = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval
MIN_N = 30
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """Group 1 (treatment: the resend, or a variant) against group 2 (its holdout, or the
    first variant). The numbers are None when there is not enough data (`reason` says why)."""

    n1: int
    x1: int
    n2: int
    x2: int
    enough_data: bool
    reason: str | None
    difference: Interval | None
    relative_lift: Interval | None
    p_value: float | None

    @property
    def significant(self) -> bool:
        """The 95% interval of the difference excludes zero and p < 0.05 (the two agree but
        for rare borderline cases, where neither is called significant)."""
        d = self.difference
        return (
            d is not None
            and self.p_value is not None
            and self.p_value < 1 - CONFIDENCE
            and (d.low > 0 or d.high < 0)
        )


def wilson(x: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson's score interval for a proportion x/n (n > 0)."""
    p = x / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return centre - half, centre + half


def newcombe_difference(x1: int, n1: int, x2: int, n2: int, z: float = Z) -> Interval:
    """p1 - p2 with Newcombe's hybrid score interval (method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return Interval(
        d,
        d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def relative_lift(x1: int, n1: int, x2: int, n2: int, z: float = Z) -> Interval | None:
    """p1 / p2 - 1 with the log interval of the ratio, 0.5 added to counts and sizes; None
    when p2 is 0 (no relative lift over nothing)."""
    if x2 == 0:
        return None
    a1, m1, a2, m2 = x1 + 0.5, n1 + 0.5, x2 + 0.5, n2 + 0.5
    log_ratio = math.log((a1 / m1) / (a2 / m2))
    half = z * math.sqrt(1 / a1 - 1 / m1 + 1 / a2 - 1 / m2)
    return Interval(
        (x1 / n1) / (x2 / n2) - 1,
        math.exp(log_ratio - half) - 1,
        math.exp(log_ratio + half) - 1,
    )


def p_value(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the pooled z-test of p1 = p2 (1.0 when every outcome is alike:
    nothing tells the groups apart)."""
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return math.erfc(abs(z) / math.sqrt(2))


def too_little(x1: int, n1: int, x2: int, n2: int) -> str | None:
    """Why these samples are too small to compare, or None."""
    if min(n1, n2) < MIN_N:
        return f"not enough data: each group needs at least {MIN_N} recipients"
    pooled = (x1 + x2) / (n1 + n2)
    expected = min(min(n1, n2) * pooled, min(n1, n2) * (1 - pooled))
    if expected < MIN_EXPECTED:
        return (
            f"not enough data: each group needs at least {MIN_EXPECTED:g} expected successes "
            "and failures"
        )
    return None


def compare(x1: int, n1: int, x2: int, n2: int) -> Comparison:
    """x1 successes of n1 (treatment) against x2 of n2 (control)."""
    if not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError(f"expected 0 <= successes <= size, got {x1}/{n1} and {x2}/{n2}")
    reason = too_little(x1, n1, x2, n2)
    if reason is not None:
        return Comparison(n1, x1, n2, x2, False, reason, None, None, None)
    return Comparison(
        n1,
        x1,
        n2,
        x2,
        True,
        None,
        newcombe_difference(x1, n1, x2, n2),
        relative_lift(x1, n1, x2, n2),
        p_value(x1, n1, x2, n2),
    )
