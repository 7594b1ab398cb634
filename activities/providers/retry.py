"""What every provider does with a failed try: read the server's Retry-After, else back off, and
hand the message back to the sender once its budget for one send is spent."""

import math
import random
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

# A longer Retry-After is a server's mistake, not a plan: the message is tried again a day on.
MAX_RETRY_AFTER = 86400.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds, from delta-seconds or an HTTP date (counted from `now`, a Unix
    time, by default the current one); None when absent or unreadable, never negative."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000" is still UTC (RFC 5322), not this machine's zone
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class RetryBudget:
    """How long one message keeps trying inside one `send` before it comes back with
    `retry_after` for the sender to try later. Each provider names its own (FCM_RETRY, ...)."""

    attempts: int = 6  # tries in one send, the first one included
    total_wait: float = 30.0  # seconds slept between them, at most
    base_delay: float = 0.5  # the backoff after the first failure, before jitter
    max_delay: float = 30.0  # the backoff doubles per failure up to this, before jitter

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after the attempt-th failure (1-based) when the server named none: half of
        it fixed, half random, so messages that failed together do not come back together."""
        # Past 2**60 the cap has long applied; the bound keeps the power from overflowing.
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 60))
        uniform = rng.uniform if rng is not None else random.uniform
        return ceiling / 2 + uniform(0, ceiling / 2)

    def wait(
        self, attempt: int, retry_after: float | None, rng: random.Random | None = None
    ) -> float:
        """The server's Retry-After when it named one, else the backoff."""
        return retry_after if retry_after is not None else self.backoff(attempt, rng)

    def exhausted(self, attempt: int, waited: float, delay: float) -> bool:
        """After the attempt-th failure, having slept `waited`: is this send done with the
        message (no tries left, or `delay` more would overrun total_wait)?"""
        return attempt >= self.attempts or waited + delay > self.total_wait
