"""What a recipient sees at each stage: cumulative stage changes, platforms, sandboxed templates."""

from typing import Any

import pytest

from relance.content import message_payload, render_stage
from relance.models import Message, Notification, StageNotification


def note(data: dict[str, Any]) -> Notification:
    return Notification.model_validate(data)


def stage(**fields: Any) -> StageNotification:
    return StageNotification.model_validate(fields)


ORIGINAL = note(
    {"android": {"title": "Morning", "alert": "Flash sale", "extras": {"newsid": 321, "k": "a"}}}
)


def test_stage_zero_is_the_original() -> None:
    content = render_stage(ORIGINAL, [], "android", {})
    assert (content.title, content.alert, content.extras) == (
        "Morning",
        "Flash sale",
        {"newsid": 321, "k": "a"},
    )


def test_stages_apply_cumulatively() -> None:
    changes = [stage(title="Still on"), stage(append="3 more stories")]
    first = render_stage(ORIGINAL, changes[:1], "android", {})
    second = render_stage(ORIGINAL, changes, "android", {})
    assert (first.title, first.alert) == ("Still on", "Flash sale")
    assert (second.title, second.alert) == ("Still on", "Flash sale\n3 more stories")


def test_a_later_alert_replaces_and_append_builds_on_it() -> None:
    changes = [stage(alert="Limited offer"), stage(append="Ends tonight")]
    assert render_stage(ORIGINAL, changes, "android", {}).alert == "Limited offer\nEnds tonight"


def test_extras_merge_over_the_original() -> None:
    changes = [stage(extras={"k": "b", "coupon": 5}), stage(extras={"stage": 2})]
    assert render_stage(ORIGINAL, changes, "android", {}).extras == {
        "newsid": 321,
        "k": "b",
        "coupon": 5,
        "stage": 2,
    }


def test_each_platform_gets_its_own_notification() -> None:
    both = note(
        {
            "alert": "Default",
            "android": {"alert": "Droid", "title": "A"},
            "ios": {"alert": "Apple", "title": "I"},
        }
    )
    android = render_stage(both, [], "android", {})
    ios = render_stage(both, [], "ios", {})
    assert (android.title, android.alert) == ("A", "Droid")
    assert (ios.title, ios.alert) == ("I", "Apple")


def test_top_level_alert_when_no_platform_alert() -> None:
    content = render_stage(note({"alert": "Default", "ios": {"title": "I"}}), [], "ios", {})
    assert (content.title, content.alert) == ("I", "Default")


@pytest.mark.parametrize("platform", ["ios", "web"])
def test_top_level_alert_beats_another_platforms_alert(platform: str) -> None:
    n = note({"alert": "Default", "android": {"alert": "Droid", "title": "A"}})
    assert render_stage(n, [], platform, {}).alert == "Default"


def test_only_a_platform_alert_serves_every_platform() -> None:
    assert render_stage(ORIGINAL, [], "ios", {}).alert == "Flash sale"


COUPON = stage(alert="Exclusive coupon", template="{{ interests[0] }} are on sale now")


def test_template_renders_from_attributes() -> None:
    content = render_stage(ORIGINAL, [COUPON], "android", {"interests": ["Sneakers", "Hats"]})
    assert content.alert == "Sneakers are on sale now"


def test_template_with_nested_attribute() -> None:
    change = stage(alert="Hello", template="Hi {{ user.name }}!")
    assert render_stage(ORIGINAL, [change], "android", {"user": {"name": "Ann"}}).alert == "Hi Ann!"


@pytest.mark.parametrize("attributes", [{}, {"interests": []}, {"interests": None}, {"other": 1}])
def test_missing_attribute_falls_back_to_the_stage_alert(attributes: dict[str, Any]) -> None:
    assert render_stage(ORIGINAL, [COUPON], "android", attributes).alert == "Exclusive coupon"


@pytest.mark.parametrize(
    "template",
    [
        "{{ name }} hi",
        "hi {{ name }}",
        "{{ name | upper }} hi",
        "{{ name ~ '' }} hi",
        "{{ user.name }} hi",
        "{% for i in items %}{{ i }}{% endfor %} hi",
    ],
)
def test_never_half_rendered(template: str) -> None:
    change = stage(alert="Hello there", template=template)
    assert render_stage(ORIGINAL, [change], "android", {}).alert == "Hello there"


def test_missing_attribute_without_a_stage_alert_keeps_the_previous_text() -> None:
    changes = [stage(alert="Limited offer"), stage(template="{{ name }}, your cart is waiting")]
    assert render_stage(ORIGINAL, changes, "android", {}).alert == "Limited offer"


def test_default_filter_covers_a_missing_nested_attribute() -> None:
    change = stage(
        alert="Coupon", template="{{ interests[0] | default('Your picks') }} are on sale"
    )
    assert render_stage(ORIGINAL, [change], "android", {}).alert == "Your picks are on sale"
    assert (
        render_stage(ORIGINAL, [change], "android", {"interests": ["Shoes"]}).alert
        == "Shoes are on sale"
    )


def test_append_applies_after_the_template() -> None:
    change = stage(alert="Coupon", template="Hi {{ name }}", append="Use code SAVE5")
    assert (
        render_stage(ORIGINAL, [change], "android", {"name": "Bo"}).alert == "Hi Bo\nUse code SAVE5"
    )
    assert render_stage(ORIGINAL, [change], "android", {}).alert == "Coupon\nUse code SAVE5"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ name.__class__ }}",
    ],
)
def test_sandbox_refuses_unsafe_access(template: str) -> None:
    change = stage(alert="Safe text", template=template)
    assert render_stage(ORIGINAL, [change], "android", {"name": "Ann"}).alert == "Safe text"


def test_a_template_error_from_attribute_values_falls_back() -> None:
    change = stage(alert="Come back", template="{{ 100 // visits }}% off for you")
    assert render_stage(ORIGINAL, [change], "android", {"visits": 0}).alert == "Come back"


def test_missing_attribute_never_prints_as_undefined() -> None:
    change = stage(alert="Hello there", template="{{ name | pprint }} hi")
    assert render_stage(ORIGINAL, [change], "android", {}).alert == "Hello there"


def test_the_stages_of_a_message_only_push_change_the_message() -> None:
    message = Message.model_validate(
        {"title": "sync", "msg_content": {"order": 42}, "content_type": "json", "extras": {"a": 1}}
    )
    original = render_stage(message, [], "android", {})
    assert message_payload(message, original) == {
        "msg_content": {"order": 42},  # an object stays an object while no stage rewrites it
        "title": "sync",
        "content_type": "json",
        "extras": {"a": 1},
    }
    changed = render_stage(
        message,
        [stage(title="sync again", extras={"b": 2}), stage(template="{{ name }}, come back")],
        "ios",
        {"name": "Ada"},
    )
    assert message_payload(message, changed) == {
        "msg_content": "Ada, come back",
        "title": "sync again",
        "content_type": "json",
        "extras": {"a": 1, "b": 2},
    }
