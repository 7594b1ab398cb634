"""When each stage of a journey fires: one rule for the API's returned schedule and the workflow.

The trigger window closes `within` after stage 0 was sent; each resend stage's `after` counts
from that moment. News case: within 2h, stages after 1h and 3h -> send+3h and send+5h.
"""

from datetime import datetime, timedelta

from relance.models import ResendPolicy


def stage_offsets(policy: ResendPolicy | None) -> list[timedelta]:
    """Offsets of resend stages 1..N from the send of stage 0."""
    if policy is None:
        return []
    return [policy.trigger.within + stage.after for stage in policy.stages]


def stage_times(sent_at: datetime, offsets: list[timedelta]) -> list[datetime]:
    """Stage 0 at `sent_at`, then each resend stage at its offset from it."""
    return [sent_at] + [sent_at + offset for offset in offsets]
