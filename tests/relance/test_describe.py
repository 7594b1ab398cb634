"""The Temporal UI's words for a journey (relance.describe): short, exact, and free of devices."""

from datetime import UTC, datetime

from relance.describe import (
    FunnelRow,
    Totals,
    funnel_details,
    journey_details,
    journey_summary,
    wait_summary,
)
from relance.models import PushRequest
from relance.timing import AppPolicy, PolicyOverrides, timing_for


def request(to: object, resend: object = None) -> PushRequest:
    return PushRequest.model_validate(
        {
            "to": to,
            "body": {"platform": "android", "notification": {"alert": "Flash | sale"}},
            "resend": resend,
        }
    )


NEWS = {
    "trigger": {"condition": "not_clicked", "within": "2h"},
    "stages": [{"after": "1h"}, {"after": "3h", "notification": {"extras": {"coupon": 5}}}],
}


def test_the_summary_counts_devices_names_tags_and_the_policy() -> None:
    ids = [f"secret-token-{i}" for i in range(200)]
    text = journey_summary("1795429543454486250", request({"registration_id": ids}, NEWS), "news")
    assert text == "Push 1795… · 200 devices · not clicked within 2h · 2 resends · news"
    tagged = journey_summary("42", request({"tag": ["news", "sport"]}), None)
    assert tagged == "Push 42 · tags news or sport · no resend"
    assert journey_summary("7", request("all")) == "Push 7 · all devices · no resend"


def test_the_details_give_each_stage_its_time_and_content_and_the_policies() -> None:
    timing = timing_for(
        AppPolicy(), PolicyOverrides(quiet_hours={"start": "22:00", "end": "08:00"})
    )
    text = journey_details("9", request({"registration_id": ["tok-a"]}, NEWS), timing)
    assert "| 0 | at once | Flash \\| sale |" in text  # a pipe stays inside its cell
    assert "| 1 (resend) | send + 3h | same content |" in text
    assert "| 2 (resend) | send + 5h | extras `coupon` |" in text
    assert "quiet hours 22:00–08:00 local time" in text
    assert "tok-a" not in text


def test_the_funnel_shows_only_the_columns_the_journey_knows() -> None:
    at = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
    live = funnel_details("waiting", [FunnelRow(0, 200, 196, 4)], Totals(200, 190), 1, at)
    assert live.splitlines()[0] == "**waiting** · next: stage 1 at 18:00Z"
    assert "| stage | targeted | sent | failed | skipped |" in live
    assert "| 0 | 200 | 196 | 4 | 0 |" in live
    final = funnel_details("completed", [FunnelRow(0, 200, 196, 4, 0, 190, 35, 12, 0)], Totals())
    assert "| 0 | 200 | 196 | 4 | 0 | 190 | 35 | 12 | 0 |" in final
    assert "held out" in final


def test_the_first_wait_names_the_trigger_window() -> None:
    at = datetime(2026, 11, 23, 12, 0, 30, tzinfo=UTC)
    assert wait_summary(1, at, "not_clicked", 7200, True) == (
        "trigger window: not clicked within 2h, then until stage 1 (resend) at 12:00:30Z"
    )
    assert wait_summary(2, at, "not_clicked", 7200, False) == "until stage 2 (resend) at 12:00:30Z"
