"""ApnsProvider against a local APNs speaking HTTP/2 over TLS: headers, provider JWT, Apple's
error reasons, retries, and a 429/503 storm where every device is accepted exactly once."""

import asyncio
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
import trustme
from pydantic import ValidationError

from activities.providers.apns import APNS_ID_NAMESPACE, ApnsCredentials, ApnsProvider
from activities.providers.base import OutboundMessage
from tests.providers.fakes.apns_fake import Answer, FakeApns, new_p8_key, serving

TEAM, KEY_ID, TOPIC = "TEAM123456", "KEY1234567", "com.example.shop"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Apns:
    fake: FakeApns
    url: str
    ca: trustme.CA
    private_key: str
    clock: Clock
    sleeps: list[float] = field(default_factory=list)
    providers: list[ApnsProvider] = field(default_factory=list)

    def provider(self, **overrides: Any) -> ApnsProvider:
        trust = ssl.create_default_context()
        self.ca.configure_trust(trust)
        credentials = overrides.pop("credentials", None) or self.credentials()
        options: dict[str, Any] = {"verify": trust, "sleep": self.sleep, "clock": self.clock}
        provider = ApnsProvider(credentials, self.url, **{**options, **overrides})
        self.providers.append(provider)
        return provider

    def credentials(self, **overrides: Any) -> ApnsCredentials:
        fields = {"team_id": TEAM, "key_id": KEY_ID, "private_key": self.private_key}
        return ApnsCredentials(**{**fields, "topic": TOPIC, **overrides})

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def apns() -> AsyncIterator[Apns]:
    private_key, public_key = new_p8_key()
    clock = Clock()
    fake = FakeApns(TEAM, KEY_ID, public_key, TOPIC, clock=clock)
    async with serving(fake) as (url, ca):
        setup = Apns(fake, url, ca, private_key, clock)
        yield setup
        for provider in setup.providers:
            await provider.aclose()


def token(i: int) -> str:
    return f"{i:064x}"


def message(i: int = 1, stage: int = 0, **overrides: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "idempotency_key": f"m1:{token(i)}:{stage}:send",
        "msg_id": "m1",
        "stage": stage,
        "registration_id": token(i),
        "platform": "ios",
        "title": "Promotion 618",
        "alert": "Flash sale: best sellers almost gone",
        "extras": {"newsid": 321},
        "time_to_live": 3600,
    }
    return OutboundMessage(**{**fields, **overrides})


async def test_an_alert_reaches_apns_with_apples_headers(apns: Apns) -> None:
    [outcome] = await apns.provider().send([message()])

    assert outcome.ok and outcome.error is None
    [accepted] = apns.fake.accepted
    assert accepted.payload == {
        "aps": {
            "alert": {"title": "Promotion 618", "body": "Flash sale: best sellers almost gone"}
        },
        "newsid": 321,
    }
    assert accepted.headers["apns-topic"] == TOPIC
    assert accepted.headers["apns-push-type"] == "alert"
    assert accepted.headers["apns-priority"] == "10"
    assert accepted.headers["apns-expiration"] == str(int(apns.clock()) + 3600)
    assert accepted.headers["apns-collapse-id"] == "m1"
    assert accepted.apns_id == str(uuid.uuid5(APNS_ID_NAMESPACE, message().idempotency_key))


async def test_ttl_zero_asks_for_one_delivery_attempt_and_no_ttl_sends_no_expiration(
    apns: Apns,
) -> None:
    outcomes = await apns.provider().send(
        [message(1, time_to_live=0), message(2, time_to_live=None)]
    )

    assert all(o.ok for o in outcomes)
    headers = {a.token: a.headers for a in apns.fake.accepted}
    assert headers[token(1)]["apns-expiration"] == "0"
    assert "apns-expiration" not in headers[token(2)]


async def test_a_resend_carries_the_same_apns_id_and_a_new_stage_replaces_the_old(
    apns: Apns,
) -> None:
    provider = apns.provider()
    await provider.send([message(stage=0)])
    await provider.send([message(stage=0)])  # the same send again, e.g. after a crash
    await provider.send([message(stage=1, alert="Exclusive coupon: save $5 more")])

    first, again, stage1 = apns.fake.accepted
    assert first.apns_id == again.apns_id != stage1.apns_id
    assert first.headers["apns-collapse-id"] == stage1.headers["apns-collapse-id"]


async def test_many_sends_share_one_http2_connection_and_one_provider_jwt(apns: Apns) -> None:
    provider = apns.provider()
    for start in (0, 150):
        outcomes = await provider.send([message(i) for i in range(start, start + 150)])
        assert all(o.ok for o in outcomes)

    assert len(apns.fake.accepted) == 300
    assert len(apns.fake.connections) == 1
    assert len(apns.fake.provider_tokens) == 1
    claims = jwt.decode(apns.fake.provider_tokens[0], options={"verify_signature": False})
    assert claims["iss"] == TEAM and jwt.get_unverified_header(apns.fake.provider_tokens[0]) == {
        "alg": "ES256",
        "kid": KEY_ID,
        "typ": "JWT",
    }


async def test_the_jwt_is_reused_for_50_minutes_then_renewed(apns: Apns) -> None:
    provider = apns.provider()
    await provider.send([message(1)])
    apns.clock.advance(49 * 60)
    await provider.send([message(2)])
    assert len(apns.fake.provider_tokens) == 1

    apns.clock.advance(2 * 60)
    outcomes = await provider.send([message(3)])

    # The fake answers TooManyProviderTokenUpdates to a renewal within 20 minutes.
    assert outcomes[0].ok
    assert len(apns.fake.provider_tokens) == 2
    claims = jwt.decode(apns.fake.provider_tokens[1], options={"verify_signature": False})
    assert claims["iat"] == int(apns.clock())


def test_a_jwt_lifetime_outside_20_to_60_minutes_is_refused(apns: Apns) -> None:
    for minutes in (10, 60):
        with pytest.raises(ValueError, match="20"):
            ApnsProvider(apns.credentials(), apns.url, token_lifetime=minutes * 60)


async def test_expired_provider_token_signs_one_new_jwt_and_retries_once(apns: Apns) -> None:
    provider = apns.provider()
    await provider.send([message(i) for i in range(20)])
    apns.fake.expire_provider_tokens()

    outcomes = await provider.send([message(i) for i in range(20, 40)])

    assert all(o.ok for o in outcomes)
    # Twenty requests were told "expired" at once; one new JWT served them all.
    assert len(apns.fake.provider_tokens) == 2
    assert all(apns.fake.accepted_count(token(i)) == 1 for i in range(40))
    assert [r.reason for _, r in apns.fake.rejected] == ["ExpiredProviderToken"] * 20


async def test_a_fresh_jwt_called_expired_again_is_a_clock_problem(apns: Apns) -> None:
    provider = apns.provider(clock=lambda: apns.clock() - 2 * 3600)  # two hours slow

    outcomes = await provider.send([message(1), message(2)])

    assert all(o.config_error and not o.token_invalid for o in outcomes)
    assert "clock" in outcomes[0].error
    assert apns.fake.accepted == []


async def test_dead_tokens_are_invalid_with_apples_reason(apns: Apns) -> None:
    apns.fake.unregistered[token(2)] = 1_700_000_000_000
    apns.fake.other_topic_tokens.add(token(3))
    apns.fake.sandbox_tokens.add(token(4))
    batch = [message(1), message(2), message(3), message(4), message(5, registration_id="oops")]

    outcomes = {o.registration_id: o for o in await apns.provider().send(batch)}

    assert outcomes[token(1)].ok
    assert outcomes[token(2)].error == "Unregistered"
    assert outcomes[token(3)].error == "DeviceTokenNotForTopic"
    sandbox_hint = (
        "BadDeviceToken (production): a sandbox token sent to production also answers this"
    )
    assert outcomes[token(4)].error == sandbox_hint
    assert outcomes["oops"].error.startswith("BadDeviceToken (production)")
    for rid in (token(2), token(3), token(4), "oops"):
        assert outcomes[rid].token_invalid and not outcomes[rid].config_error
    assert [a.token for a in apns.fake.accepted] == [token(1)]


async def test_bad_device_token_names_the_sandbox_environment(apns: Apns) -> None:
    apns.fake.environment = "sandbox"
    provider = apns.provider(credentials=apns.credentials(environment="sandbox"))

    [outcome] = await provider.send([message(registration_id="not-a-token")])

    assert outcome.token_invalid
    assert outcome.error == (
        "BadDeviceToken (sandbox): a production token sent to sandbox also answers this"
    )


async def test_a_whole_batch_not_for_the_topic_is_a_topic_problem(apns: Apns) -> None:
    provider = apns.provider(credentials=apns.credentials(topic="com.example.other"))

    outcomes = await provider.send([message(i) for i in range(5)])

    assert all(o.config_error and not o.token_invalid for o in outcomes)
    assert "com.example.other" in outcomes[0].error


async def test_a_key_apns_does_not_know_is_a_config_error_and_keeps_tokens(apns: Apns) -> None:
    other_key, _ = new_p8_key()
    provider = apns.provider(credentials=apns.credentials(private_key=other_key))

    outcomes = await provider.send([message(i) for i in range(5)])

    assert all(o.config_error and not o.token_invalid and not o.ok for o in outcomes)
    assert "InvalidProviderToken" in outcomes[0].error and "key_id" in outcomes[0].error
    assert all("PRIVATE KEY" not in o.error for o in outcomes)


async def test_an_untrusted_certificate_is_a_config_error(apns: Apns) -> None:
    provider = apns.provider(verify=True)  # the system CAs do not know the fake's CA

    [outcome] = await provider.send([message()])

    assert outcome.config_error and not outcome.token_invalid
    assert "TLS certificate" in outcome.error


def test_credentials_never_show_the_key_and_reject_a_non_es256_key(apns: Apns) -> None:
    credentials = apns.credentials()
    assert "PRIVATE KEY" not in repr(credentials) + str(credentials)

    with pytest.raises(ValidationError) as error:
        apns.credentials(private_key="-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE")
    assert "private_key" in str(error.value) and "c2VjcmV0" not in str(error.value)


async def test_429_and_503_are_retried_honouring_retry_after(apns: Apns) -> None:
    apns.fake.scripted[token(1)] = [
        Answer(429, "TooManyRequests", retry_after="1"),
        Answer(503, "ServiceUnavailable", retry_after="0"),
    ]

    [outcome] = await apns.provider().send([message(1)])

    assert outcome.ok
    assert apns.sleeps == [1.0, 0.0]
    assert apns.fake.accepted_count(token(1)) == 1


async def test_without_retry_after_the_backoff_is_jittered_and_exponential(apns: Apns) -> None:
    apns.fake.scripted[token(1)] = [Answer(500, "InternalServerError")] + [
        Answer(503, "ServiceUnavailable")
    ] * 2

    [outcome] = await apns.provider(backoff_base=1.0).send([message(1)])

    assert outcome.ok
    assert len(apns.sleeps) == 3
    for tries, delay in enumerate(apns.sleeps):
        assert 0.5 * 2**tries <= delay <= 2**tries


async def test_when_the_retry_budget_runs_out_the_outcome_says_when_to_retry(apns: Apns) -> None:
    apns.fake.scripted[token(1)] = [Answer(503, "ServiceUnavailable", retry_after="2")] * 5
    apns.fake.scripted[token(2)] = [Answer(429, "TooManyRequests", retry_after="120")]

    outcomes = await apns.provider(max_attempts=3, max_retry_wait=60).send([message(1), message(2)])

    assert [(o.ok, o.retry_after, o.token_invalid) for o in outcomes] == [
        (False, 2.0, False),
        (False, 120.0, False),
    ]
    assert apns.sleeps == [2.0, 2.0]  # token 2's 120 s wait is over budget: handed back at once
    assert apns.fake.accepted == []


async def test_a_429_503_storm_ends_with_every_device_accepted_exactly_once(apns: Apns) -> None:
    chance = random.Random(7)
    storm = [
        Answer(429, "TooManyRequests", retry_after="0"),
        Answer(503, "ServiceUnavailable"),
        Answer(503, "ServiceUnavailable", retry_after="0"),
        Answer(500, "InternalServerError"),
    ]
    for i in range(300):
        apns.fake.scripted[token(i)] = [chance.choice(storm) for _ in range(chance.randint(0, 5))]
    provider = apns.provider(max_attempts=3, backoff_base=0.001, sleep=asyncio.sleep)

    pending, rounds = [message(i) for i in range(300)], 0
    while pending:  # as the sender does with outcomes that carry retry_after
        outcomes = await provider.send(pending)
        assert all(o.ok or o.retry_after is not None for o in outcomes)
        retry = {o.registration_id for o in outcomes if not o.ok}
        pending, rounds = [m for m in pending if m.registration_id in retry], rounds + 1

    assert rounds > 1  # some devices outlasted one send's budget
    assert all(apns.fake.accepted_count(token(i)) == 1 for i in range(300))
    assert len(apns.fake.accepted) == 300
    assert len(apns.fake.rejected) > 300


async def test_after_apns_closes_the_connection_the_provider_reconnects(apns: Apns) -> None:
    provider = apns.provider()
    await provider.send([message(1)])
    apns.fake.close_connections()
    await asyncio.sleep(0.05)

    outcomes = await provider.send([message(2), message(3)])

    assert all(o.ok for o in outcomes)
    assert len(apns.fake.connections) == 2
    assert len(apns.fake.provider_tokens) == 1


async def test_no_answer_in_time_fails_without_a_resend_that_could_duplicate(apns: Apns) -> None:
    apns.fake.silent_tokens.add(token(1))

    outcomes = await apns.provider(timeout=0.3).send([message(1), message(2)])

    stalled, fine = outcomes
    assert not stalled.ok and stalled.retry_after is None and not stalled.token_invalid
    assert "may" in stalled.error
    assert fine.ok
    assert apns.fake.unanswered == [token(1)]


async def test_the_servers_concurrent_stream_limit_is_respected(apns: Apns) -> None:
    apns.fake.max_concurrent_streams = 3  # more open streams would make the fake drop us

    outcomes = await apns.provider(max_in_flight=50).send([message(i) for i in range(60)])

    assert all(o.ok for o in outcomes)
    assert len(apns.fake.connections) == 1


async def test_a_payload_over_4kb_is_refused_without_sending(apns: Apns) -> None:
    [outcome] = await apns.provider().send([message(alert="x" * 5000)])

    assert not outcome.ok and not outcome.token_invalid and not outcome.config_error
    assert "4096" in outcome.error
    assert apns.fake.accepted == [] and apns.fake.rejected == []


async def test_apns_cannot_tell_what_it_already_received(apns: Apns) -> None:
    assert await apns.provider().already_received(["m1:x:0:send"]) is None


async def test_a_message_only_push_is_a_background_notification(apns: Apns) -> None:
    custom = {"msg_content": "sync now", "title": "sync", "extras": {"kind": "order"}}
    [outcome] = await apns.provider().send([message(notify=False, message=custom)])

    assert outcome.ok, outcome
    [accepted] = apns.fake.accepted
    # Apple's background push: content-available, no alert, priority 5.
    assert accepted.payload == {
        "aps": {"content-available": 1},
        "kind": "order",
        "msg_content": "sync now",
        "title": "sync",
    }
    assert accepted.headers["apns-push-type"] == "background"
    assert accepted.headers["apns-priority"] == "5"
