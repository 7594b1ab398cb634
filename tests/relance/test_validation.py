"""PushRequest validation (field-by-field errors) and the stage schedule it implies."""

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from relance.models import Audience, PushRequest
from relance.schedule import stage_offsets, stage_times

# The example body of DESIGN.md, verbatim.
EXAMPLE: dict[str, Any] = {
    "from": "push",
    "to": {"registration_id": ["120c83f760363f06840"]},
    "body": {
        "platform": "android",
        "notification": {
            "android": {
                "alert": "Flash sale: best sellers almost gone",
                "title": "Promotion 618",
                "extras": {"newsid": 321},
            }
        },
        "options": {"time_to_live": 60},
    },
    "request_id": "12345678",
    "custom_args": "business info",
    "callback_url": ["https://shop.example/appCallback/notify"],
    "resend": {
        "trigger": {"condition": "not_clicked", "within": "6h"},
        "stages": [
            {
                "after": "2h",
                "notification": {"alert": "Limited offer: best sellers almost out of stock"},
            },
            {
                "after": "5h",
                "notification": {
                    "alert": "Exclusive coupon: save $5 more",
                    "template": "{{ interests[0] | default('Your picks') }} are on sale now",
                },
            },
        ],
    },
}


def body(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(EXAMPLE)
    out.update(changes)
    return out


def resend(within: Any = "6h", *afters: Any, condition: str = "not_clicked") -> dict[str, Any]:
    return {
        "trigger": {"condition": condition, "within": within},
        "stages": [{"after": a} for a in afters],
    }


def errors(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        PushRequest.model_validate(data)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


def test_the_design_example_validates() -> None:
    request = PushRequest.model_validate(EXAMPLE)
    assert request.from_ == "push"
    assert request.to != "all" and request.to.registration_id == ["120c83f760363f06840"]
    assert request.request_id == "12345678"
    assert request.resend is not None
    assert request.resend.trigger.within == timedelta(hours=6)
    assert [s.after for s in request.resend.stages] == [timedelta(hours=2), timedelta(hours=5)]
    dumped = request.model_dump(mode="json", by_alias=True)
    assert dumped["from"] == "push"
    assert dumped["resend"]["trigger"]["within"] == "6h"


def test_to_all_is_accepted() -> None:
    assert PushRequest.model_validate(body(to="all")).to == "all"


def test_unknown_trigger_condition() -> None:
    errs = errors(body(resend=resend("6h", "2h", condition="not_opened")))
    assert len(errs) == 1
    loc, msg = errs[0]
    assert loc == ("resend", "trigger", "condition")
    assert "not_clicked" in msg and "not_displayed" in msg and "not_delivered" in msg


@pytest.mark.parametrize("after", ["0s", 0, -60, "PT0S"])
def test_after_must_be_positive(after: Any) -> None:
    [(loc, msg)] = errors(body(resend=resend("6h", after)))
    assert loc == ("resend", "stages", 0, "after")
    assert "positive" in msg


def test_after_must_be_strictly_increasing() -> None:
    [(loc, msg)] = errors(body(resend=resend("6h", "2h", "2h")))
    assert loc[0] == "resend"
    assert "stages[1].after" in msg
    assert "stages[0].after" in msg


def test_after_may_not_go_backwards() -> None:
    [(_, msg)] = errors(body(resend=resend("6h", "1h", "3h", "2h")))
    assert "stages[2].after" in msg


@pytest.mark.parametrize("within", ["0s", 0, "PT0H"])
def test_within_must_be_positive(within: Any) -> None:
    [(loc, msg)] = errors(body(resend=resend(within, "2h")))
    assert loc == ("resend", "trigger", "within")
    assert "positive" in msg


def test_within_must_be_a_duration() -> None:
    [(loc, msg)] = errors(body(resend=resend("6x", "2h")))
    assert loc == ("resend", "trigger", "within")
    assert '"1h30m"' in msg


def test_at_most_ten_stages() -> None:
    PushRequest.model_validate(body(resend=resend("1h", *[f"{i}h" for i in range(1, 11)])))
    [(loc, msg)] = errors(body(resend=resend("1h", *[f"{i}h" for i in range(1, 12)])))
    assert loc == ("resend", "stages")
    assert "10" in msg


def test_a_template_that_does_not_parse() -> None:
    data = body()
    data["resend"]["stages"][1]["notification"]["template"] = "{{ interests[0] "
    [(loc, msg)] = errors(data)
    assert loc == ("resend", "stages", 1, "notification", "template")
    assert "template" in msg


def test_empty_registration_id_list() -> None:
    errs = errors(body(to={"registration_id": []}))
    audience = [(loc, msg) for loc, msg in errs if "Audience" in str(loc)]
    assert audience, errs
    assert all(loc[0] == "to" for loc, _ in errs)
    assert "registration_id" in audience[0][1]


def test_empty_registration_id_string() -> None:
    errs = errors(body(to={"registration_id": ["ok", ""]}))
    assert any(loc[0] == "to" and loc[-2:] == ("registration_id", 1) for loc, _ in errs), errs


def test_registration_ids_or_aliases_stand_alone() -> None:
    for to in (
        {"registration_id": ["a"], "tag": ["news"]},
        {"alias": ["alice"], "tag_not": ["news"]},
        {"registration_id": ["a"], "alias": ["alice"]},
    ):
        errs = errors(body(to=to))
        assert all(loc[0] == "to" for loc, _ in errs)
        assert any("cannot be combined with" in msg for _, msg in errs), errs


@pytest.mark.parametrize(
    "to",
    [
        {"tag": ["a"], "tag_not": ["b"]},
        {"tag_and": ["a", "b"], "tag_not": ["c"]},
        {"tag": ["a"], "tag_and": ["b"]},
        {"tag_not": ["a"]},
    ],
)
def test_engagelabs_tag_forms_combine(to: dict[str, list[str]]) -> None:
    assert PushRequest.model_validate(body(to=to)).to == Audience.model_validate(to)


@pytest.mark.parametrize(
    ("to", "field"),
    [({"seg": {"id": "s1"}}, "seg"), ({"live_activity_id": "la1"}, "live_activity_id")],
)
def test_segments_and_live_activities_are_not_supported(to: dict[str, object], field: str) -> None:
    errs = errors(body(to=to))
    assert any(msg.endswith(f"{field}: not supported by relance") for _, msg in errs), errs


def test_a_body_needs_a_notification_or_a_message() -> None:
    data = body()
    del data["body"]["notification"]
    [(loc, msg)] = errors(data)
    assert loc == ("body",) and "expected notification or message" in msg
    data["body"]["message"] = {"msg_content": {"order": 42}, "content_type": "json"}
    assert PushRequest.model_validate(data).body.message is not None


def test_a_notification_without_any_alert() -> None:
    data = body()
    data["body"]["notification"] = {"android": {"title": "Promotion 618"}}
    [(loc, msg)] = errors(data)
    assert loc == ("body", "notification")
    assert "alert" in msg


def test_a_top_level_alert_is_enough() -> None:
    data = body()
    data["body"]["notification"] = {"alert": "Hello"}
    assert PushRequest.model_validate(data).body.notification.alert == "Hello"


# ---- schedule ---------------------------------------------------------------------------


def offsets(within: str, *afters: str) -> list[timedelta]:
    policy = PushRequest.model_validate(body(resend=resend(within, *afters))).resend
    return stage_offsets(policy)


def test_news_case_fires_after_the_window_closes() -> None:
    assert offsets("2h", "1h", "3h") == [timedelta(hours=3), timedelta(hours=5)]


def test_ecommerce_case() -> None:
    assert offsets("6h", "2h", "5h") == [timedelta(hours=8), timedelta(hours=11)]


def test_no_resend_means_no_resend_stages() -> None:
    assert stage_offsets(None) == []


def test_stage_times_start_with_the_send() -> None:
    sent = datetime(2026, 6, 18, 9, 0, tzinfo=UTC)
    assert stage_times(sent, offsets("6h", "2h", "5h")) == [
        sent,
        datetime(2026, 6, 18, 17, 0, tzinfo=UTC),
        datetime(2026, 6, 18, 20, 0, tzinfo=UTC),
    ]
    assert stage_times(sent, []) == [sent]
