"""Web Push provider against a local push service that checks VAPID and decrypts every message."""

import base64
import random
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pydantic import ValidationError

from activities.providers.base import OutboundMessage
from activities.providers.webpush import (
    FOUR_WEEKS,
    RetryBudget,
    VapidCredentials,
    WebPushProvider,
)
from tests.providers.fakes.webpush_fake import BrowserSubscription, Scripted, WebPushFake

SUBJECT = "mailto:ops@shop.example"


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def raw(key: ec.EllipticCurvePrivateKey) -> str:
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(scalar).rstrip(b"=").decode()


def new_credentials(form: str = "pem") -> VapidCredentials:
    key = ec.generate_private_key(ec.SECP256R1())
    return VapidCredentials(private_key=pem(key) if form == "pem" else raw(key), subject=SUBJECT)


def message(sub: BrowserSubscription, n: int = 0, **fields: object) -> OutboundMessage:
    base = {
        "idempotency_key": f"key-{sub.id}-{n}",
        "msg_id": "m-1",
        "stage": 0,
        "registration_id": sub.to_json(),
        "platform": "web",
        "title": "Promotion 618",
        "alert": f"Flash sale #{n}: best sellers almost gone",
        "extras": {"newsid": 321, "n": n},
    }
    return OutboundMessage.model_validate(base | fields)


class Sleeps:
    """An injected sleep that records what the provider asked for and does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def credentials() -> VapidCredentials:
    return new_credentials()


@pytest.fixture
async def fake(credentials: VapidCredentials) -> AsyncIterator[WebPushFake]:
    service = WebPushFake(application_server_key=credentials.application_server_key())
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def provider(credentials: VapidCredentials, sleeps: Sleeps) -> AsyncIterator[WebPushProvider]:
    client = WebPushProvider(credentials, sleep=sleeps, require_https=False)
    yield client
    await client.aclose()


@pytest.mark.parametrize("key_form", ["pem", "raw"])
async def test_the_browser_decrypts_exactly_what_was_sent_under_a_valid_vapid_token(
    key_form: str,
) -> None:
    credentials = new_credentials(key_form)
    fake = WebPushFake(application_server_key=credentials.application_server_key())
    await fake.start()
    provider = WebPushProvider(credentials, require_https=False, urgency="high")
    try:
        subs = [fake.subscribe() for _ in range(3)]
        sent = [message(s, i, time_to_live=600) for i, s in enumerate(subs)]
        # The same subscription also works base64url-encoded.
        b64 = base64.urlsafe_b64encode(subs[2].to_json().encode()).decode().rstrip("=")
        sent[2] = sent[2].model_copy(update={"registration_id": b64})
        outcomes = await provider.send(sent)
    finally:
        await provider.aclose()
        await fake.stop()

    assert [o.ok for o in outcomes] == [True] * 3, outcomes
    assert {o.registration_id for o in outcomes} == {m.registration_id for m in sent}
    for sub, m in zip(subs, sent, strict=True):
        [arrival] = fake.received[sub.id]
        assert arrival.payload == {
            "title": "Promotion 618",
            "body": m.alert,
            "data": m.extras,
            "msg_id": "m-1",
            "stage": 0,
            "idempotency_key": m.idempotency_key,
        }
        assert arrival.claims["aud"] == fake.base_url
        assert arrival.claims["sub"] == SUBJECT
        assert time.time() < arrival.claims["exp"] <= time.time() + 24 * 3600
        assert arrival.headers["TTL"] == "600"
        assert arrival.headers["Urgency"] == "high"
        assert len(arrival.headers["Topic"]) <= 32
    assert len({a.headers["Topic"] for arr in fake.received.values() for a in arr}) == 1
    assert fake.rejections == []


async def test_ttl_is_always_sent_four_weeks_by_default_and_zero_kept(
    fake: WebPushFake, provider: WebPushProvider
) -> None:
    default, now = fake.subscribe(), fake.subscribe()
    outcomes = await provider.send([message(default), message(now, time_to_live=0)])
    assert all(o.ok for o in outcomes), outcomes
    assert fake.received[default.id][0].headers["TTL"] == str(FOUR_WEEKS)
    assert fake.received[now.id][0].headers["TTL"] == "0"

    # The push service refuses a message without TTL, so leaving it out would fail for real.
    async with aiohttp.ClientSession() as session:
        async with session.post(fake.subscribe().endpoint, data=b"x") as resp:
            assert resp.status == 400


@pytest.mark.parametrize("status", [404, 410])
async def test_a_dead_subscription_is_token_invalid_and_not_retried(
    fake: WebPushFake, provider: WebPushProvider, status: int
) -> None:
    dead, alive = fake.subscribe(), fake.subscribe()
    fake.unsubscribe(dead, status)
    by_sub = {o.registration_id: o for o in await provider.send([message(dead), message(alive)])}
    gone = by_sub[dead.to_json()]
    assert (gone.ok, gone.token_invalid, gone.config_error) == (False, True, False)
    assert str(status) in (gone.error or "")
    assert len(fake.attempts[dead.id]) == 1
    assert by_sub[alive.to_json()].ok


async def test_a_malformed_or_plain_http_subscription_is_invalid_without_a_request(
    fake: WebPushFake, credentials: VapidCredentials
) -> None:
    sub = fake.subscribe()
    strict = WebPushProvider(credentials)  # production default: https endpoints only
    try:
        outcomes = await strict.send(
            [message(sub), message(sub).model_copy(update={"registration_id": "not-a-sub"})]
        )
    finally:
        await strict.aclose()
    assert [(o.ok, o.token_invalid) for o in outcomes] == [(False, True), (False, True)]
    assert "https" in (outcomes[0].error or "")
    assert fake.attempts == {}


async def test_retry_after_is_honoured_for_the_whole_push_service(
    fake: WebPushFake, credentials: VapidCredentials
) -> None:
    limited, other = fake.subscribe(), fake.subscribe()
    fake.script(limited, Scripted(429, retry_after="1"))
    provider = WebPushProvider(credentials, require_https=False, max_in_flight=1)  # real sleep
    try:
        outcomes = await provider.send([message(limited), message(other)])
    finally:
        await provider.aclose()
    assert all(o.ok for o in outcomes), outcomes
    first_429, retried = fake.attempts[limited.id]
    assert retried - first_429 >= 0.95
    # Nothing else went to that push service while it asked to wait.
    assert fake.attempts[other.id][0] - first_429 >= 0.95
    assert len(fake.received[limited.id]) == 1


async def test_a_retry_after_beyond_the_budget_is_handed_back_not_slept(
    fake: WebPushFake, credentials: VapidCredentials, sleeps: Sleeps
) -> None:
    sub = fake.subscribe()
    fake.script(sub, Scripted(429, retry_after="120"))
    provider = WebPushProvider(
        credentials, require_https=False, sleep=sleeps, retry=RetryBudget(total_wait=30)
    )
    try:
        [outcome] = await provider.send([message(sub)])
    finally:
        await provider.aclose()
    assert (outcome.ok, outcome.token_invalid, outcome.retry_after) == (False, False, 120)
    assert sleeps.delays == [] and len(fake.attempts[sub.id]) == 1


async def test_an_unreachable_push_service_is_retried_then_handed_back_with_the_token_kept(
    fake: WebPushFake, credentials: VapidCredentials, sleeps: Sleeps
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    sub = fake.subscribe()
    sub.endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}/push/{sub.id}"
    provider = WebPushProvider(
        credentials, require_https=False, sleep=sleeps, retry=RetryBudget(attempts=3)
    )
    try:
        [outcome] = await provider.send([message(sub)])
    finally:
        await provider.aclose()
        closed.close()
    assert (outcome.ok, outcome.token_invalid, outcome.config_error) == (False, False, False)
    assert outcome.retry_after is not None and "unreachable" in (outcome.error or "")
    assert len(sleeps.delays) == 2  # three tries, with a backoff between each


async def test_a_vapid_key_the_browser_did_not_subscribe_with_is_a_config_error(
    fake: WebPushFake,
) -> None:
    sub = fake.subscribe()
    stranger = WebPushProvider(new_credentials(), require_https=False)
    try:
        [outcome] = await stranger.send([message(sub)])
    finally:
        await stranger.aclose()
    assert (outcome.ok, outcome.config_error, outcome.token_invalid) == (False, True, False)
    assert "applicationServerKey" in (outcome.error or "")


async def test_a_payload_over_the_web_push_limit_is_refused_before_sending(
    fake: WebPushFake, provider: WebPushProvider
) -> None:
    sub = fake.subscribe()
    [outcome] = await provider.send([message(sub, extras={"blob": "x" * 4000})])
    assert (outcome.ok, outcome.token_invalid) == (False, False)
    assert "bytes" in (outcome.error or "")
    assert fake.attempts == {}


async def test_concurrency_is_capped_over_a_few_kept_connections(
    fake: WebPushFake, credentials: VapidCredentials
) -> None:
    fake.delay = 0.02
    subs = [fake.subscribe() for _ in range(30)]
    provider = WebPushProvider(credentials, require_https=False, max_in_flight=4)
    try:
        outcomes = await provider.send([message(s) for s in subs])
        outcomes += await provider.send([message(s, 1) for s in subs])
    finally:
        await provider.aclose()
    assert all(o.ok for o in outcomes)
    assert fake.max_in_flight == 4
    assert len(fake.peers) <= 4


async def test_a_429_and_503_storm_delivers_every_message_exactly_once(
    fake: WebPushFake, provider: WebPushProvider
) -> None:
    rng = random.Random(8030)
    storm = [Scripted(429, "0"), Scripted(503), Scripted(500), Scripted(503, "0"), Scripted(502)]
    subs = [fake.subscribe() for _ in range(200)]
    for sub in subs:
        fake.script(sub, *rng.choices(storm, k=rng.randint(0, 3)))
    sent = [message(s, i) for i, s in enumerate(subs)]
    outcomes = await provider.send(sent)
    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]
    for sub, m in zip(subs, sent, strict=True):
        assert [a.payload["idempotency_key"] for a in fake.received[sub.id]] == [m.idempotency_key]


async def test_a_storm_longer_than_the_budget_is_finished_by_the_senders_retries(
    fake: WebPushFake, credentials: VapidCredentials, sleeps: Sleeps
) -> None:
    provider = WebPushProvider(
        credentials, require_https=False, sleep=sleeps, retry=RetryBudget(attempts=2)
    )
    subs = [fake.subscribe() for _ in range(50)]
    for i, sub in enumerate(subs):
        fake.script(sub, *[Scripted(503 if i % 2 else 429, "0")] * (i % 6))
    pending = {m.registration_id: m for m in (message(s, i) for i, s in enumerate(subs))}
    rounds = 0
    try:
        while pending and rounds < 10:  # what send_stage's caller does with retry_after
            rounds += 1
            for outcome in await provider.send(list(pending.values())):
                assert outcome.ok or outcome.retry_after is not None, outcome
                if outcome.ok:
                    del pending[outcome.registration_id]
    finally:
        await provider.aclose()
    assert not pending and rounds > 1
    assert all(len(fake.received[s.id]) == 1 for s in subs)


def test_credentials_never_show_the_key_and_say_what_is_wrong() -> None:
    good = new_credentials()
    secret = good.private_key.get_secret_value()
    assert secret not in repr(good) and secret not in good.model_dump_json()
    with pytest.raises(ValidationError) as bad_key:
        VapidCredentials(private_key="c2VjcmV0LWJ1dC13cm9uZw", subject=SUBJECT)
    assert "private_key" in str(bad_key.value)
    assert "c2VjcmV0" not in str(bad_key.value)  # what a log line would show
    with pytest.raises(ValidationError, match="subject"):
        VapidCredentials(private_key=secret, subject="ops@shop.example")


async def test_a_message_only_push_carries_no_title_or_body(
    fake: WebPushFake, provider: WebPushProvider
) -> None:
    sub = fake.subscribe()
    custom = {"msg_content": "sync now", "title": "sync"}
    [outcome] = await provider.send([message(sub, notify=False, message=custom)])

    assert outcome.ok, outcome
    [arrival] = fake.received[sub.id]
    assert arrival.payload == {
        "message": custom,
        "msg_id": "m-1",
        "stage": 0,
        "idempotency_key": f"key-{sub.id}-0",
    }
