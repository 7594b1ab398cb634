"""Pydantic models of the EngageLab v4 push body, extended with relance's resend policy."""

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from relance.durations import format_duration, parse_duration
from relance.templates import check_template
from relance.timing import LocalTime, PolicyOverrides, QuietHours, TimeZoneName

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["90s", "2h", "1h30m", "PT2H"]}),
]

MAX_STAGES = 10
DEFAULT_ATTRIBUTION_WINDOW = timedelta(hours=24)
MAX_ATTRIBUTION_WINDOW = timedelta(days=30)


class TriggerCondition(StrEnum):
    """Who a resend stage goes to: the recipients who have not yet reached this status."""

    not_clicked = "not_clicked"
    not_displayed = "not_displayed"
    not_delivered = "not_delivered"


class EventStatus(StrEnum):
    sent = "sent"
    delivered = "delivered"
    displayed = "displayed"
    clicked = "clicked"
    failed = "failed"
    # The business outcome, attributed to the push and stage within the attribution window.
    converted = "converted"
    # Opts the device out of every later stage and push of its app until it registers again.
    unsubscribed = "unsubscribed"


class Trigger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    condition: TriggerCondition
    within: Duration = Field(description="The trigger window, counted from the send of stage 0.")

    @field_validator("within")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("expected a positive duration")
        return v


class StageNotification(BaseModel):
    """What a resend stage changes; stages apply in order on top of the original notification."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=200)
    alert: str | None = Field(None, max_length=4000)
    append: str | None = Field(None, max_length=1000, description="A line added to the alert.")
    extras: dict[str, Any] | None = Field(None, description="Merged into the extras.")
    template: str | None = Field(
        None,
        max_length=4000,
        description="Jinja alert rendered per recipient from its device attributes (sandboxed); "
        "a missing attribute falls back to the stage's plain text.",
    )

    @field_validator("template")
    @classmethod
    def _parses(cls, v: str | None) -> str | None:
        if v is not None:
            check_template(v)
        return v


MAX_VARIANTS = 8


class Variant(BaseModel):
    """One arm of an A/B test at a stage: its share of the stage's recipients (weight), what it
    changes on top of the stage's content, and how long after the stage it is sent."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=32)
    weight: float = Field(gt=0, le=1_000_000, description="Relative share (positive).")
    notification: StageNotification = Field(default_factory=StageNotification)
    delay: Duration = Field(
        timedelta(0), description="Sent this long after the stage's time (to test send times)."
    )

    @field_validator("delay")
    @classmethod
    def _not_negative(cls, v: timedelta) -> timedelta:
        if v < timedelta(0) or v > timedelta(days=7):
            raise ValueError("expected a duration from 0 to 7d")
        return v


Variants = Annotated[
    list[Variant] | None,
    Field(
        None,
        min_length=2,
        max_length=MAX_VARIANTS,
        description="2 to 8 A/B variants of the stage (deterministic, sticky per recipient).",
    ),
]


def check_variants(variants: list[Variant] | None) -> list[Variant] | None:
    if variants is not None:
        seen: set[str] = set()
        for i, v in enumerate(variants):
            if v.name in seen:
                raise ValueError(f"[{i}].name: duplicate variant name {v.name!r}")
            seen.add(v.name)
    return variants


class ResendStage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: Duration = Field(description="Counted from the close of the trigger window.")
    notification: StageNotification = Field(default_factory=StageNotification)
    variants: Variants

    @field_validator("variants")
    @classmethod
    def _unique(cls, v: list[Variant] | None) -> list[Variant] | None:
        return check_variants(v)

    @field_validator("after")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("expected a positive duration")
        return v


class ResendPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trigger: Trigger
    stages: list[ResendStage] = Field(min_length=1, max_length=MAX_STAGES)
    holdout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of each resend stage's eligible recipients held out (never sent, "
        "still observed): the control group of that stage's lift.",
    )
    observe: Duration | None = Field(
        None,
        description="How long the journey keeps observing after its last stage before it "
        "completes (default: the trigger window; 0: not at all).",
    )

    @field_validator("observe")
    @classmethod
    def _observe(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and (v < timedelta(0) or v > timedelta(days=30)):
            raise ValueError("expected a duration from 0 to 30d")
        return v

    @property
    def observe_window(self) -> timedelta:
        return self.trigger.within if self.observe is None else self.observe

    @model_validator(mode="after")
    def _increasing(self) -> "ResendPolicy":
        for i in range(1, len(self.stages)):
            if self.stages[i].after <= self.stages[i - 1].after:
                raise ValueError(
                    f"stages[{i}].after: expected a duration greater than stages[{i - 1}].after "
                    f"({format_duration(self.stages[i - 1].after)}); stages run in order"
                )
        return self


class PlatformNotification(BaseModel):
    model_config = ConfigDict(extra="allow")

    alert: str | None = Field(None, max_length=4000)
    title: str | None = Field(None, max_length=200)
    extras: dict[str, Any] | None = None


class Notification(BaseModel):
    # Published with the alert requirement of `_has_alert`.
    model_config = ConfigDict(extra="allow", json_schema_extra=lambda s: _notification_schema(s))

    alert: str | None = Field(
        None, max_length=4000, description="Default alert for every platform."
    )
    android: PlatformNotification | None = None
    ios: PlatformNotification | None = None
    web: PlatformNotification | None = None
    # EngageLab's HarmonyOS section: accepted, and used for no device (relance has no hmos
    # provider; a device registers as android, ios or web).
    hmos: PlatformNotification | None = None

    @model_validator(mode="after")
    def _has_alert(self) -> "Notification":
        sections = (self.android, self.ios, self.web)
        if not (self.alert or any(s is not None and s.alert for s in sections)):
            raise ValueError(
                "expected an alert: set notification.alert or notification.<platform>.alert"
            )
        return self


class Message(BaseModel):
    """EngageLab's custom message (`body.message`): data for the app, shown by no system UI.
    Sent alone, it goes out as a data-only message (FCM data, APNs background push, a Web Push
    payload without a notification, EngageLab's own `message`)."""

    model_config = ConfigDict(extra="allow")

    title: str | None = Field(None, max_length=200)
    msg_content: str | dict[str, Any] = Field(
        description="The message's content: text, or a JSON object (sent as JSON text).",
        json_schema_extra={
            "anyOf": [{"type": "string", "minLength": 1}, {"type": "object", "minProperties": 1}]
        },
    )
    content_type: str | None = Field(None, max_length=64)
    extras: dict[str, Any] | None = None

    @field_validator("msg_content")
    @classmethod
    def _not_empty(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        if v == "" or v == {}:
            raise ValueError("expected some content")
        return v


class PushOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    time_to_live: int | None = Field(None, ge=0, le=15 * 24 * 3600, description="Seconds.")
    # When and how often (relance.timing): overrides of the app's policy for this push.
    quiet_hours: QuietHours | Literal[False] | None = Field(
        None, description="This push's quiet hours, or false to ignore the app's (urgent)."
    )
    frequency_cap: Literal[False] | None = Field(
        None, description="false: transactional, neither capped nor counted."
    )
    throttle_per_minute: int | None = Field(None, ge=1, le=10_000_000)
    send_at: AwareDatetime | None = Field(
        None, description="An ISO instant with its offset; not in the past."
    )
    local_time: LocalTime | None = Field(
        None, description="Each recipient at the next HH:MM of their own time zone."
    )
    attribution_window: Duration | None = Field(
        None,
        description="How long after a stage a `converted` event is attributed to it (default "
        "24h, at most 30 days).",
    )

    @field_validator("attribution_window")
    @classmethod
    def _window(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and not timedelta(0) < v <= MAX_ATTRIBUTION_WINDOW:
            raise ValueError("expected a positive duration of at most 30d")
        return v

    def overrides(self) -> PolicyOverrides:
        return PolicyOverrides(
            quiet_hours=self.quiet_hours,
            frequency_cap=self.frequency_cap,
            throttle_per_minute=self.throttle_per_minute,
            send_at=self.send_at,
            local_time=self.local_time,
        )


Platform = Literal["android", "ios", "web"]
# What `body.platform` may name: relance's platforms and EngageLab's HarmonyOS, which reaches
# no device here (none registers as hmos).
BodyPlatform = Literal["android", "ios", "web", "hmos"]
NOT_SUPPORTED = "not supported by relance"


class PushBody(BaseModel):
    # Published with `_has_content`'s rule: a notification, a message, or both.
    model_config = ConfigDict(extra="allow", json_schema_extra=lambda s: _body_schema(s))

    platform: Literal["all"] | BodyPlatform | list[BodyPlatform] = "all"
    notification: Notification | None = None
    message: Message | None = None
    options: PushOptions = Field(default_factory=PushOptions)

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("live_activity", "voip"):
                if data.get(name) is not None:
                    raise ValueError(f"{name}: {NOT_SUPPORTED}")
        return data

    @model_validator(mode="after")
    def _has_content(self) -> "PushBody":
        if self.notification is None and self.message is None:
            raise ValueError("notification: expected notification or message (or both)")
        if isinstance(self.platform, list) and not self.platform:
            raise ValueError('platform: expected at least one platform, or "all"')
        return self


class Audience(BaseModel):
    """EngageLab's `to`: registration ids, aliases, or tags. `tag` (any of them), `tag_and`
    (all of them) and `tag_not` (none of them) combine as an intersection; `registration_id`
    and `alias` stand alone."""

    # The published schema says what `_kinds` accepts, so a client generated from it is right:
    # one standalone kind, or one or more tag kinds, each with at least one value.
    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda s: _audience_schema(s))

    registration_id: list[Annotated[str, Field(min_length=1, max_length=2048)]] | None = Field(
        None, max_length=1000
    )
    tag: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, max_length=20, description="Devices with any of these tags."
    )
    tag_and: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, max_length=20, description="Devices with every one of these tags."
    )
    tag_not: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, max_length=20, description="Devices with none of these tags."
    )
    alias: list[str] | None = Field(None, max_length=1000)

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("seg", "live_activity_id"):
                if data.get(name) is not None:
                    raise ValueError(f"{name}: {NOT_SUPPORTED}")
        return data

    @model_validator(mode="after")
    def _kinds(self) -> "Audience":
        kinds = [
            k
            for k in ("registration_id", "alias", "tag", "tag_and", "tag_not")
            if getattr(self, k) is not None
        ]
        if not kinds:
            raise ValueError(
                'expected one of registration_id, alias, tag, tag_and, tag_not (or "all")'
            )
        for kind in kinds:
            if not getattr(self, kind):
                raise ValueError(f"{kind}: expected at least one value")
        alone = [k for k in kinds if k in ("registration_id", "alias")]
        if alone and len(kinds) > 1:
            others = ", ".join(k for k in kinds if k != alone[0])
            raise ValueError(f"{alone[0]}: cannot be combined with {others}")
        return self


def non_null_schema(schema: dict[str, Any]) -> None:
    """Publish a field's non-null form only: null is accepted (as absent), never needed."""
    for name, prop in schema.get("properties", {}).items():
        branches = prop.get("anyOf")
        if branches and {"type": "null"} in branches:
            rest = [b for b in branches if b != {"type": "null"}]
            extra = {k: v for k, v in prop.items() if k != "anyOf"}
            schema["properties"][name] = {
                **(rest[0] if len(rest) == 1 else {"anyOf": rest}),
                **extra,
            }


def _audience_schema(schema: dict[str, Any]) -> None:
    non_null_schema(schema)
    for prop in schema["properties"].values():
        prop["minItems"] = 1
    alone = [{"required": [k], "maxProperties": 1} for k in ("registration_id", "alias")]
    tags = {"not": {"anyOf": [{"required": ["registration_id"]}, {"required": ["alias"]}]}}
    schema["minProperties"] = 1
    schema["oneOf"] = [*alone, tags]


def _alert(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"required": ["alert"], "properties": {"alert": {"type": "string", "minLength": 1}}}


def _notification_schema(schema: dict[str, Any]) -> None:
    schema["anyOf"] = [
        _alert(),
        *({"required": [p], "properties": {p: _alert()}} for p in ("android", "ios", "web")),
    ]


def _body_schema(schema: dict[str, Any]) -> None:
    non_null_schema(schema)
    schema["anyOf"] = [{"required": ["notification"]}, {"required": ["message"]}]
    for branch in schema["properties"]["platform"].get("anyOf", []):
        if branch.get("type") == "array":
            branch["minItems"] = 1


class PushRequest(BaseModel):
    """POST /v4/push."""

    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
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
                    "resend": {
                        "trigger": {"condition": "not_clicked", "within": "6h"},
                        "stages": [
                            {"after": "2h", "notification": {"alert": "Limited offer: almost out"}},
                            {
                                "after": "5h",
                                "notification": {
                                    "alert": "Exclusive coupon: save $5 more",
                                    "template": "{{ interests[0] | default('Your picks') }}"
                                    " are on sale now",
                                },
                            },
                        ],
                    },
                }
            ]
        },
    )

    from_: str = Field("push", alias="from", max_length=64)
    to: Literal["all"] | Audience
    body: PushBody
    request_id: str | None = Field(None, min_length=1, max_length=128)
    custom_args: Any = None
    callback_url: list[Annotated[str, Field(max_length=2048)]] | None = Field(
        None, max_length=5, description="Up to 5 URLs that receive this push's status events."
    )
    resend: ResendPolicy | None = None
    # Stage 0's A/B variants (a resend stage's are inside that stage).
    variants: Variants

    @field_validator("variants")
    @classmethod
    def _unique(cls, v: list[Variant] | None) -> list[Variant] | None:
        return check_variants(v)

    def stage_variants(self) -> list[list[Variant] | None]:
        """Each stage's variants, stage 0 first (None: the stage has none)."""
        stages = self.resend.stages if self.resend else []
        return [self.variants, *(s.variants for s in stages)]

    @field_validator("callback_url", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class PushAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "msg_id": "1795429543454486250",
                    "request_id": "12345678",
                    "schedule": [
                        "2026-11-23T10:00:00Z",
                        "2026-11-23T18:00:00Z",
                        "2026-11-23T21:00:00Z",
                    ],
                }
            ]
        }
    )

    msg_id: str
    request_id: str | None = None
    schedule: list[datetime] = Field(
        description="When each stage is planned: stage 0 now, then the close of the trigger "
        "window plus each stage's `after`."
    )


class StatusEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    msg_id: str = Field(min_length=1, max_length=64)
    registration_id: str = Field(min_length=1, max_length=2048)
    status: EventStatus
    stage: int | None = Field(None, ge=0, le=MAX_STAGES)
    at: datetime | None = None
    error: str | None = Field(None, max_length=500)
    # A conversion's worth, e.g. an order's amount, and its ISO 4217 currency.
    value: float | None = Field(None, ge=0, le=1e12, allow_inf_nan=False)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")

    @model_validator(mode="after")
    def _value_with_conversion(self) -> "StatusEventIn":
        if self.status is not EventStatus.converted:
            for name in ("value", "currency"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: only a converted event carries one")
        return self


class EventBatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "msg_id": "1732300000000123456",
                            "registration_id": "120c83f760363f06840",
                            "status": "clicked",
                            "stage": 0,
                            "at": "2026-11-23T10:00:00Z",
                        }
                    ]
                }
            ]
        },
    )

    events: list[StatusEventIn] = Field(min_length=1, max_length=5000)


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    registration_id: str = Field(min_length=1, max_length=2048)
    platform: Platform = "android"
    # Each tag is a key of an index (DeviceTag): bounded like an alias.
    tags: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list, max_length=100)
    alias: str | None = Field(None, max_length=128)
    attributes: dict[str, Any] = Field(default_factory=dict)
    timezone: TimeZoneName | None = Field(
        None, description="IANA name; without one, the app's default time zone applies."
    )


class DeviceBatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "devices": [
                        {
                            "registration_id": "120c83f760363f06840",
                            "platform": "android",
                            "tags": ["news"],
                            "attributes": {"interests": ["Sneakers"]},
                        }
                    ]
                }
            ]
        },
    )

    devices: list[DeviceIn] = Field(min_length=1, max_length=5000)
