"""EngageLab relay: sending through a local fake of `POST /v4/push`, and reading its callbacks."""

import asyncio
import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from activities.providers.base import OutboundMessage
from activities.providers.engagelab import EngageLabCredentials, EngageLabProvider, RetryBudget
from relance.engagelab_callbacks import (
    CallbackSignatureError,
    echostr_reply,
    parse_callback,
    verify_callback_signature,
)
from relance.models import EventStatus
from tests.providers.fakes.engagelab_fake import FakeEngageLab, Fault, rate_limited, unavailable

APP_KEY, SECRET = "7d431e42dfa6a6d693ac2d04", "5e987ac6d2e04d95a9d8f0d1"


class RecordedSleep:
    """Tiny real waits, with the delays the provider asked for written down."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(min(seconds, 0.01))


@pytest.fixture
async def fake() -> AsyncIterator[FakeEngageLab]:
    server = FakeEngageLab(APP_KEY, SECRET)
    await server.start()
    yield server
    await server.stop()


def provider_for(
    fake: FakeEngageLab, secret: str = SECRET, retry: RetryBudget | None = None
) -> tuple[EngageLabProvider, RecordedSleep]:
    sleep = RecordedSleep()
    credentials = EngageLabCredentials(app_key=APP_KEY, master_secret=SecretStr(secret))
    provider = EngageLabProvider(
        credentials,
        base_url=fake.base_url,
        retry=retry or RetryBudget(base_delay=0.01),
        sleep=sleep,
    )
    return provider, sleep


def message(n: int, platform: str = "android", **changes: object) -> OutboundMessage:
    fields: dict[str, object] = {
        "idempotency_key": f"key-{n}",
        "msg_id": "1732300000000123456",
        "stage": 1,
        "registration_id": f"reg-{n}",
        "platform": platform,
        "title": "Promotion 618",
        "alert": "Flash sale: best sellers almost gone",
        "extras": {"newsid": 321},
        "time_to_live": 60,
    }
    return OutboundMessage.model_validate(fields | changes)


async def test_one_push_per_message_in_engagelabs_wire_shape(fake: FakeEngageLab) -> None:
    provider, _ = provider_for(fake)
    outcomes = await provider.send([message(1), message(2, "ios")])
    await provider.aclose()

    assert [o.ok for o in outcomes] == [True, True]
    android, ios = (a.request for a in fake.accepted)
    assert android == {
        "from": "push",
        "to": {"registration_id": ["reg-1"]},
        "body": {
            "platform": "android",
            "notification": {
                "android": {
                    "title": "Promotion 618",
                    "alert": "Flash sale: best sellers almost gone",
                    "extras": {"newsid": 321},
                }
            },
            "options": {"time_to_live": 60},
        },
        "request_id": "key-1",
        "custom_args": {"relance_msg_id": "1732300000000123456", "relance_stage": 1},
    }
    assert ios["body"]["notification"]["ios"]["alert"] == {
        "title": "Promotion 618",
        "body": "Flash sale: best sellers almost gone",
    }
    assert ios["body"]["options"] == {"time_to_live": 60, "apns_production": True}
    basic = base64.b64encode(f"{APP_KEY}:{SECRET}".encode()).decode()
    assert fake.accepted[0].authorization == f"Basic {basic}"


async def test_wrong_master_secret_is_a_configuration_error(fake: FakeEngageLab) -> None:
    provider, _ = provider_for(fake, secret="not-the-secret")
    [outcome] = await provider.send([message(1)])
    await provider.aclose()

    assert (outcome.ok, outcome.config_error, outcome.token_invalid) == (False, True, False)
    assert "master_secret" in (outcome.error or "") and "21004" in (outcome.error or "")
    assert "not-the-secret" not in (outcome.error or "")
    assert fake.accepted == []


async def test_a_base_url_that_is_not_engagelab_is_a_configuration_error(
    fake: FakeEngageLab,
) -> None:
    provider = EngageLabProvider(
        EngageLabCredentials(app_key=APP_KEY, master_secret=SecretStr(SECRET)),
        base_url=f"{fake.base_url}/not-engagelab",
    )
    [outcome] = await provider.send([message(1)])
    await provider.aclose()
    assert (outcome.config_error, outcome.token_invalid) == (True, False)
    assert "base_url" in (outcome.error or "")


async def test_invalid_registration_id_is_a_dead_token(fake: FakeEngageLab) -> None:
    fake.dead_tokens.add("reg-2")
    provider, _ = provider_for(fake)
    ok, dead = await provider.send([message(1), message(2)])
    await provider.aclose()

    assert ok.ok and not ok.token_invalid
    assert (dead.ok, dead.token_invalid, dead.config_error) == (False, True, False)
    assert "20101" in (dead.error or "")


async def test_a_rejected_message_fails_alone_without_retry(fake: FakeEngageLab) -> None:
    provider, sleep = provider_for(fake)
    too_big = message(1, alert="x" * 5000)
    [outcome] = await provider.send([too_big])
    await provider.aclose()

    assert (outcome.ok, outcome.token_invalid, outcome.config_error) == (False, False, False)
    assert outcome.retry_after is None and "21005" in (outcome.error or "")
    assert fake.attempts == 1 and sleep.delays == []


async def test_platform_engagelab_cannot_reach_is_a_configuration_error(
    fake: FakeEngageLab,
) -> None:
    provider, _ = provider_for(fake)
    [outcome] = await provider.send([message(1, "blackberry")])
    await provider.aclose()
    assert outcome.config_error and not outcome.token_invalid and fake.attempts == 0


async def test_storm_of_429_and_503_sends_everyone_exactly_once(fake: FakeEngageLab) -> None:
    storm = [rate_limited(), rate_limited(http_status=400), unavailable(accept_first=True)]
    storm += [unavailable(), Fault(500, 27000, "Internal memory error")]
    fake.faults.extend(storm * 12)
    provider, sleep = provider_for(fake)
    messages = [message(n) for n in range(40)]
    outcomes = await provider.send(messages)
    await provider.aclose()

    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert sorted(o.registration_id for o in outcomes) == sorted(
        m.registration_id for m in messages
    )
    assert [fake.sends_to(m.registration_id) for m in messages] == [1] * 40
    assert fake.attempts == 40 + len(storm) * 12 and len(sleep.delays) == len(storm) * 12


async def test_rate_limit_past_the_budget_hands_back_retry_after(fake: FakeEngageLab) -> None:
    fake.always = rate_limited(reset=7)
    provider, sleep = provider_for(fake, retry=RetryBudget(attempts=3, total_wait=60))
    [outcome] = await provider.send([message(1)])
    await provider.aclose()

    assert (outcome.ok, outcome.retry_after, outcome.token_invalid) == (False, 7.0, False)
    assert "23008" in (outcome.error or "")
    assert sleep.delays == [7.0, 7.0] and fake.accepted == []


async def test_engagelab_unreachable_hands_back_retry_after() -> None:
    closed = FakeEngageLab(APP_KEY, SECRET)
    await closed.start()
    await closed.stop()  # nothing listens on that port any more
    provider, sleep = provider_for(closed, retry=RetryBudget(attempts=2, base_delay=0.01))
    [outcome] = await provider.send([message(1)])
    await provider.aclose()
    assert (outcome.ok, outcome.token_invalid, outcome.config_error) == (False, False, False)
    assert outcome.retry_after is not None and "unreachable" in (outcome.error or "")
    assert len(sleep.delays) == 1


async def test_a_resend_after_a_crash_is_dropped_by_request_id(fake: FakeEngageLab) -> None:
    provider, _ = provider_for(fake)
    first = await provider.send([message(1)])
    again = await provider.send([message(1)])  # the same idempotency key after a crash
    assert await provider.already_received(["key-1"]) is None
    await provider.aclose()

    assert first[0].ok and again[0].ok
    assert fake.sends_to("reg-1") == 1 and fake.attempts == 2


def test_credentials_never_print_the_master_secret() -> None:
    credentials = EngageLabCredentials(app_key=APP_KEY, master_secret=SecretStr(SECRET))
    assert SECRET not in repr(credentials) and SECRET not in str(credentials.model_dump())


# ---- callbacks ---------------------------------------------------------------------------


def row(status: dict[str, object], **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "message_id": "1666165485030094861",
        "from": "",
        "to": "120c83f760363f06840",
        "server": "AppPush",
        "channel": "FCM",
        "custom_args": {"relance_msg_id": "1732300000000123456", "relance_stage": 2},
        "itime": 1640707579,
        "status": status,
    }
    return base | changes


def test_callback_rows_become_relance_status_events() -> None:
    body = {
        "total": 6,
        "rows": [
            row({"message_status": "delivered", "status_data": {"channel_message_id": "x"}}),
            row({"message_status": "click", "status_data": {}, "error_code": 0}),
            row(
                {
                    "message_status": "target_invalid",
                    "error_code": 0,
                    "error_detail": {"message": "registration id invalid"},
                }
            ),
            row(
                {
                    "message_status": "sent_failed",
                    "error_code": 1003,
                    "error_detail": {"message": "quota exceeded"},
                }
            ),
            row({"message_status": "no_click"}),
            row({"message_status": "delivered"}, custom_args={}),
        ],
    }
    parsed = parse_callback(body)

    events = [(e.event.status, e.token_invalid) for e in parsed.events]
    assert events == [
        (EventStatus.delivered, False),
        (EventStatus.clicked, False),
        (EventStatus.failed, True),
        (EventStatus.failed, False),
    ]
    first = parsed.events[0].event
    assert (first.msg_id, first.registration_id, first.stage) == (
        "1732300000000123456",
        "120c83f760363f06840",
        2,
    )
    assert first.at == datetime.fromtimestamp(1640707579, UTC)
    assert parsed.events[0].engagelab_message_id == "1666165485030094861"
    assert parsed.events[3].event.error == "engagelab 1003: sent_failed: quota exceeded"
    assert [s.index for s in parsed.skipped] == [4, 5]


def test_custom_args_echoed_as_json_text_are_read_too() -> None:
    args = '{"relance_msg_id": "m-1", "relance_stage": 0}'
    [relay] = parse_callback(
        {"total": 1, "rows": [row({"message_status": "sent"}, custom_args=args)]}
    ).events
    assert (relay.event.msg_id, relay.event.stage, relay.event.status) == ("m-1", 0, "sent")


def test_echostr_handshake_answers_the_raw_value() -> None:
    assert echostr_reply({"echostr": "12345678"}) == "12345678"
    assert echostr_reply({"total": 1, "rows": []}) is None


def sign(timestamp: str, nonce: str, username: str, secret: str) -> str:
    signed = f"{timestamp}{nonce}{username}".encode()
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def header(timestamp: str = "1681991058", username: str = "test", secret: str = "s3cret") -> str:
    signature = sign(timestamp, "123123123123", username, secret)
    return f"timestamp={timestamp};nonce=123123123123;username={username};signature={signature}"


def test_a_good_signature_passes() -> None:
    verify_callback_signature(
        header(), username="test", secret=SecretStr("s3cret"), now=1681991058 + 30, window=300
    )


@pytest.mark.parametrize(
    ("value", "now", "reason"),
    [
        (header(secret="other"), 1681991058, "signature does not match"),
        (header(username="intruder"), 1681991058, "username"),
        (header(), 1681991058 + 301, "window"),
        (header(), 1681991058 - 301, "window"),
        ("timestamp=1681991058;nonce=1;username=test", 1681991058, "lacks signature"),
        (None, 1681991058, "missing"),
    ],
)
def test_bad_or_stale_signatures_are_refused(value: str | None, now: float, reason: str) -> None:
    with pytest.raises(CallbackSignatureError, match=reason) as caught:
        verify_callback_signature(value, username="test", secret="s3cret", now=now, window=300)
    assert "s3cret" not in str(caught.value)


async def test_a_message_only_push_is_relayed_as_engagelabs_custom_message(
    fake: FakeEngageLab,
) -> None:
    provider, _ = provider_for(fake)
    custom = {"msg_content": {"order": 42}, "content_type": "json", "extras": {"kind": "order"}}
    [outcome] = await provider.send([message(1, notify=False, message=custom)])
    await provider.aclose()

    assert outcome.ok, outcome
    [accepted] = fake.accepted
    assert "notification" not in accepted.request["body"]
    assert accepted.request["body"]["message"] == custom
    assert accepted.request["body"]["platform"] == "android"
