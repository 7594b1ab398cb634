"""Durations as users write them in resend policies: "90s", "2h", "1h30m", "2d", ISO "PT2H"."""

import re
from datetime import timedelta

_SHORT = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")
_ISO = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)

EXPECTED = 'a duration such as "90s", "2h", "1h30m", "2d" or ISO-8601 "PT2H"'


def parse_duration(value: object) -> timedelta:
    """Parse a duration; raise ValueError naming the expected forms."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected {EXPECTED}")
    try:
        return _parse(value)
    except OverflowError:  # "99999999999d": past timedelta's range, and any journey's
        raise ValueError(f"expected {EXPECTED}, at most {timedelta.max.days} days") from None


def _parse(value: str | int | float) -> timedelta:
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    text = value.strip()
    match = (_ISO if text[:1].upper() == "P" else _SHORT).match(
        text.upper() if text[:1].upper() == "P" else text.lower()
    )
    if not text or match is None or not any(match.groupdict().values()):
        raise ValueError(f"expected {EXPECTED}, got {value!r}")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return timedelta(days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"])


def format_duration(value: timedelta) -> str:
    """The short form of a duration: 5400 s -> "1h30m"."""
    total = value.total_seconds()
    if total == 0:
        return "0s"
    sign, total = ("-", -total) if total < 0 else ("", total)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    out = sign
    if hours:
        out += f"{int(hours)}h"
    if minutes:
        out += f"{int(minutes)}m"
    if seconds:
        out += f"{seconds:g}s"
    return out
