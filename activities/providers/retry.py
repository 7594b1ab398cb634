"""What every provider does with a failed try: read the server's Retry-After, the same way for
all of them."""

import math
import time
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
