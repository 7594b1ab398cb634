"""What each recipient sees at each stage: the original notification with the stages' changes.

Stages apply in order (stage 2 builds on stage 1). A template renders per recipient in a jinja2
sandbox; a missing attribute with no `default` falls back to the stage's plain text.
"""

import json
from typing import Any

from pydantic import BaseModel

from relance.models import Message, Notification, StageNotification
from relance.templates import render_template


class RenderedContent(BaseModel):
    title: str | None = None
    alert: str
    extras: dict[str, Any] = {}


def message_text(message: Message) -> str:
    """A custom message's content as text: a JSON object travels as JSON."""
    content = message.msg_content
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def message_content(message: Message) -> RenderedContent:
    """A custom message as content a stage can change: its title, its text as the alert."""
    return RenderedContent(
        title=message.title, alert=message_text(message), extras=dict(message.extras or {})
    )


def message_payload(message: Message, content: RenderedContent | None = None) -> dict[str, Any]:
    """EngageLab's `message` object as it goes out: the original, or a stage's rendering of it.
    A JSON-object content stays an object unless a stage rewrote it."""
    rendered = content or message_content(message)
    msg_content: str | dict[str, Any] = rendered.alert
    if not isinstance(message.msg_content, str) and rendered.alert == message_text(message):
        msg_content = message.msg_content
    payload: dict[str, Any] = {"msg_content": msg_content}
    if rendered.title is not None:
        payload["title"] = rendered.title
    if message.content_type is not None:
        payload["content_type"] = message.content_type
    if rendered.extras:
        payload["extras"] = rendered.extras
    return payload


def base_content(notification: Notification, platform: str) -> RenderedContent:
    """The device's platform section, else the top-level alert, else another platform's."""
    sections = ("android", "ios", "web")
    specific = getattr(notification, platform, None) if platform in sections else None
    if specific is not None and specific.alert:
        chosen = specific
    elif notification.alert:
        chosen = specific  # its title and extras, with the default alert
    else:
        chosen = notification.android or notification.ios or notification.web
    alert = (chosen.alert if chosen is not None and chosen.alert else None) or notification.alert
    return RenderedContent(
        title=chosen.title if chosen is not None else None,
        alert=alert or "",
        extras=dict(chosen.extras or {}) if chosen is not None else {},
    )


def render_stage(
    notification: Notification | Message,
    changes: list[StageNotification],
    platform: str,
    attributes: dict[str, Any],
) -> RenderedContent:
    """Content of the stage whose changes (stages 1..k, in order) are given. Of a message-only
    push, the stages change the message: `title` its title, `alert`, `append` and `template`
    its text, `extras` its extras."""
    if isinstance(notification, Message):
        content = message_content(notification)
    else:
        content = base_content(notification, platform)
    for change in changes:
        if change.title is not None:
            content.title = change.title
        if change.alert is not None:
            content.alert = change.alert
        if change.template is not None:
            rendered = render_template(change.template, attributes)
            if rendered is not None and rendered.strip():
                content.alert = rendered
        if change.append:
            content.alert = f"{content.alert}\n{change.append}" if content.alert else change.append
        if change.extras:
            content.extras = {**content.extras, **change.extras}
    return content
