"""The FCM HTTP v1 provider against a local FCM: wire format, access tokens, every error class,
and a 429/503 storm in which every recipient is still accepted exactly once."""

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from activities.providers.base import OutboundMessage
from activities.providers.fcm import FcmCredentials, FcmProvider, RetryBudget, classify
from tests.providers.fakes.fcm_fake import Answer, FakeFcm, new_service_account, running_fcm

PROJECT = "relance-test"
Make = Callable[..., FcmProvider]


@pytest.fixture(scope="module")
def service_account() -> tuple[dict[str, str], str]:
    return new_service_account(PROJECT)


@pytest.fixture
async def fcm(service_account: tuple[dict[str, str], str]) -> AsyncIterator[FakeFcm]:
    info, public_key = service_account
    async with running_fcm(FakeFcm(PROJECT, info["client_email"], public_key)) as fake:
        yield fake


@pytest.fixture
async def make(fcm: FakeFcm, service_account: tuple[dict[str, str], str]) -> AsyncIterator[Make]:
    made: list[FcmProvider] = []

    def build(key: dict[str, Any] | None = None, **options: Any) -> FcmProvider:
        info = {**service_account[0], **(key or {}), "token_uri": fcm.token_uri}
        provider = FcmProvider(FcmCredentials.model_validate(info), fcm.url, **options)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()


class Sleeps:
    """Records the waits the provider asks for instead of waiting them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def message(token: str, **fields: Any) -> OutboundMessage:
    return OutboundMessage(
        **{
            "idempotency_key": f"key-{token}",
            "msg_id": "m-1",
            "stage": 0,
            "registration_id": token,
            "platform": "android",
            "alert": "Flash sale: best sellers almost gone",
            **fields,
        }
    )


async def test_a_send_puts_the_v1_message_on_the_wire(fcm: FakeFcm, make: Make) -> None:
    provider = make(collapse_resends=True)
    sent = message(
        "tok-1",
        stage=1,
        title="Promotion 618",
        extras={"newsid": 321, "deeplink": "shop://sale", "tags": ["a"]},
        time_to_live=60,
    )
    [outcome] = await provider.send([sent])
    assert outcome.model_dump(exclude_none=True) == {
        "registration_id": "tok-1",
        "ok": True,
        "token_invalid": False,
        "config_error": False,
    }
    [accepted] = fcm.accepted
    assert accepted.name.startswith(f"projects/{PROJECT}/messages/")
    assert accepted.message == {
        "token": "tok-1",
        "notification": {"title": "Promotion 618", "body": "Flash sale: best sellers almost gone"},
        "data": {
            "newsid": "321",
            "deeplink": "shop://sale",
            "tags": '["a"]',
            "relance_msg_id": "m-1",
            "relance_stage": "1",
        },
        "android": {"ttl": "60s", "collapse_key": "m-1", "notification": {"tag": "key-tok-1"}},
    }
    assert await provider.already_received(["key-tok-1"]) is None


async def test_web_tokens_get_a_webpush_ttl_and_no_title_is_left_out(
    fcm: FakeFcm, make: Make
) -> None:
    [outcome] = await make().send([message("web-1", platform="web", time_to_live=90)])
    assert outcome.ok
    sent = fcm.accepted[0].message
    assert sent["notification"] == {"body": "Flash sale: best sellers almost gone"}
    assert sent["webpush"] == {"headers": {"TTL": "90"}}
    assert "collapse_key" not in sent["android"]


async def test_one_access_token_serves_many_sends(fcm: FakeFcm, make: Make) -> None:
    provider = make()
    for round_ in range(3):
        outcomes = await provider.send([message(f"t{round_}-{i}") for i in range(20)])
        assert all(o.ok for o in outcomes)
    assert fcm.token_requests == 1
    assert len(fcm.accepted) == 60


async def test_the_token_is_renewed_shortly_before_it_expires(fcm: FakeFcm, make: Make) -> None:
    clock = Clock()
    fcm.clock = clock
    provider = make(clock=clock)
    await provider.send([message("a")])
    clock.now += 3000  # the token (3599 s) still has ten minutes
    await provider.send([message("b")])
    assert fcm.token_requests == 1
    clock.now += 400  # under five minutes left: renewed before FCM could refuse it
    [outcome] = await provider.send([message("c")])
    assert outcome.ok
    assert fcm.token_requests == 2
    assert [status for _, status in fcm.answers] == [200, 200, 200]


async def test_a_refused_token_is_renewed_once_for_all_senders(fcm: FakeFcm, make: Make) -> None:
    provider = make()
    await provider.send([message("first")])
    fcm.revoke_access_tokens()
    outcomes = await provider.send([message(f"t{i}") for i in range(10)])
    assert all(o.ok for o in outcomes)
    assert fcm.token_requests == 2
    assert sorted(fcm.accepted_tokens()) == sorted(["first", *(f"t{i}" for i in range(10))])


async def test_a_token_refused_even_when_fresh_is_a_config_error(fcm: FakeFcm, make: Make) -> None:
    fcm.honour_access_tokens = False
    [outcome] = await make().send([message("t")])
    assert (outcome.ok, outcome.config_error, outcome.token_invalid) == (False, True, False)
    assert "UNAUTHENTICATED" in outcome.error and "roles" in outcome.error
    assert fcm.token_requests == 2
    assert "ya29." not in outcome.error


async def test_a_wrong_key_is_a_config_error_that_never_leaks_it(fcm: FakeFcm, make: Make) -> None:
    other_key = new_service_account(PROJECT)[0]["private_key"]
    provider = make({"private_key": other_key})
    outcomes = await provider.send([message(f"t{i}") for i in range(5)])
    for outcome in outcomes:
        assert (outcome.ok, outcome.config_error, outcome.token_invalid) == (False, True, False)
        assert "invalid_grant" in outcome.error and "Invalid JWT Signature" in outcome.error
        assert "firebase-adminsdk-x1@" in outcome.error
        assert "PRIVATE KEY" not in outcome.error
    assert fcm.token_requests == 1  # one verdict for the batch, not one per device
    assert fcm.accepted == []
    creds = FcmCredentials.model_validate({**new_service_account(PROJECT)[0]})
    assert "PRIVATE KEY" not in repr(creds) and "PRIVATE KEY" not in str(creds.model_dump())


async def test_a_project_id_that_would_break_the_request_line_is_a_config_error(
    fcm: FakeFcm, make: Make
) -> None:
    provider = make({"project_id": f"{PROJECT}/x HTTP/1.1\r\nX-Injected: 1"})
    outcomes = await provider.send([message(f"p{i}") for i in range(3)])
    for outcome in outcomes:
        assert (outcome.ok, outcome.config_error) == (False, True)
        assert "not a request path" in outcome.error
    assert fcm.accepted == []


def _unregistered(fake: FakeFcm) -> None:
    fake.unregistered.add("t")


def _other_sender(fake: FakeFcm) -> None:
    fake.other_sender.add("t")


def _malformed(fake: FakeFcm) -> None:
    fake.malformed.add("t")


def _apns_key_missing(fake: FakeFcm) -> None:
    fake.apns_auth_broken.add("t")


def _other_project(fake: FakeFcm) -> None:
    fake.project_id = "someone-else"


@pytest.mark.parametrize(
    ("arrange", "extras", "token_invalid", "config_error", "says"),
    [
        (_unregistered, {}, True, False, "UNREGISTERED"),
        (_other_sender, {}, True, False, "SENDER_ID_MISMATCH"),
        (_malformed, {}, True, False, "INVALID_ARGUMENT"),
        (None, {"from": "x"}, False, False, "INVALID_ARGUMENT"),
        (_apns_key_missing, {}, False, True, "THIRD_PARTY_AUTH_ERROR"),
        (_other_project, {}, False, True, "PERMISSION_DENIED"),
    ],
)
async def test_each_error_class_has_its_outcome(
    fcm: FakeFcm,
    make: Make,
    arrange: Callable[[FakeFcm], None] | None,
    extras: dict[str, Any],
    token_invalid: bool,
    config_error: bool,
    says: str,
) -> None:
    if arrange:
        arrange(fcm)
    sleeps = Sleeps()
    [outcome] = await make(sleep=sleeps).send([message("t", extras=extras)])
    assert outcome.ok is False
    assert (outcome.token_invalid, outcome.config_error) == (token_invalid, config_error)
    assert outcome.retry_after is None and sleeps.delays == []
    assert says in outcome.error
    assert fcm.accepted == []


async def test_quota_exceeded_hands_the_message_back_for_a_minute_or_more(
    fcm: FakeFcm, make: Make
) -> None:
    fcm.scripted = {"q1": [Answer("QUOTA_EXCEEDED")], "q2": [Answer("QUOTA_EXCEEDED", "120")]}
    sleeps = Sleeps()
    first, second = await make(sleep=sleeps).send([message("q1"), message("q2")])
    assert not first.ok and not first.token_invalid and first.retry_after >= 60
    assert not second.ok and second.retry_after >= 120
    assert "QUOTA_EXCEEDED" in first.error
    assert sleeps.delays == []  # a minute is beyond the default budget: no waiting inside send
    assert fcm.accepted == []


async def test_quota_exceeded_within_a_long_budget_waits_then_sends(
    fcm: FakeFcm, make: Make
) -> None:
    fcm.scripted = {"q": [Answer("QUOTA_EXCEEDED")]}
    sleeps = Sleeps()
    provider = make(sleep=sleeps, budget=RetryBudget(total_wait=600))
    [outcome] = await provider.send([message("q")])
    assert outcome.ok
    assert len(sleeps.delays) == 1 and sleeps.delays[0] >= 60
    assert fcm.accepted_tokens() == ["q"]


async def test_unavailable_honours_retry_after(fcm: FakeFcm, make: Make) -> None:
    fcm.scripted = {"u": [Answer("UNAVAILABLE", "1")]}
    started = time.monotonic()
    [outcome] = await make().send([message("u")])
    assert outcome.ok
    assert time.monotonic() - started >= 1.0
    assert fcm.answers == [("u", 503), ("u", 200)]


async def test_internal_errors_back_off_exponentially_with_jitter(fcm: FakeFcm, make: Make) -> None:
    fcm.scripted = {"i": [Answer("INTERNAL")] * 4}
    sleeps = Sleeps()
    budget = RetryBudget(base_delay=0.5)
    [outcome] = await make(sleep=sleeps, budget=budget, rng=random.Random(7)).send([message("i")])
    assert outcome.ok
    for n, delay in enumerate(sleeps.delays):
        assert 0.25 * 2**n <= delay <= 0.5 * 2**n
    assert len(set(sleeps.delays)) == 4


async def test_an_exhausted_budget_returns_retry_after_without_sending(
    fcm: FakeFcm, make: Make
) -> None:
    fcm.scripted = {"i": [Answer("INTERNAL")] * 5}
    sleeps = Sleeps()
    [outcome] = await make(sleep=sleeps, budget=RetryBudget(attempts=3)).send([message("i")])
    assert not outcome.ok and not outcome.token_invalid and outcome.retry_after > 0
    assert [status for _, status in fcm.answers] == [500, 500, 500]
    assert fcm.accepted == []


async def test_a_token_endpoint_outage_is_waited_out(fcm: FakeFcm, make: Make) -> None:
    fcm.token_outage = [503, 500]
    sleeps = Sleeps()
    outcomes = await make(sleep=sleeps).send([message("a"), message("b")])
    assert all(o.ok for o in outcomes)
    assert sorted(fcm.accepted_tokens()) == ["a", "b"]


def _storm(tokens: list[str], seed: int) -> dict[str, list[Answer]]:
    rng = random.Random(seed)
    kinds = [
        Answer("UNAVAILABLE", "0"),
        Answer("UNAVAILABLE"),
        Answer("INTERNAL"),
        Answer("QUOTA_EXCEEDED"),
        Answer("BAD_GATEWAY"),
    ]
    return {t: [rng.choice(kinds) for _ in range(rng.randint(0, 4))] for t in tokens}


async def test_a_storm_still_delivers_everyone_exactly_once(fcm: FakeFcm, make: Make) -> None:
    tokens = [f"storm-{i}" for i in range(300)]
    fcm.scripted = _storm(tokens, seed=1)
    sleeps = Sleeps()
    budget = RetryBudget(attempts=10, total_wait=10_000)
    outcomes = await make(sleep=sleeps, budget=budget).send([message(t) for t in tokens])
    assert all(o.ok for o in outcomes)
    assert Counter(fcm.accepted_tokens()) == Counter(tokens)
    assert any(status in {429, 502, 503} for _, status in fcm.answers)


async def test_a_storm_beyond_the_budget_is_finished_by_later_sends(
    fcm: FakeFcm, make: Make
) -> None:
    tokens = [f"storm-{i}" for i in range(200)]
    fcm.scripted = _storm(tokens, seed=2)
    provider = make(sleep=Sleeps())
    pending, done, rounds = list(tokens), set(), 0
    while pending:
        rounds += 1
        outcomes = await provider.send([message(t) for t in pending])
        assert len(outcomes) == len(pending)
        assert all(o.retry_after for o in outcomes if not o.ok)
        done |= {o.registration_id for o in outcomes if o.ok}
        assert set(fcm.accepted_tokens()) == done  # what came back unsent was not taken
        pending = [o.registration_id for o in outcomes if not o.ok]
        assert rounds < 10
    assert rounds > 1  # quota answers were handed back, not waited out inside send
    assert Counter(fcm.accepted_tokens()) == Counter(tokens)


async def test_concurrency_is_capped_and_connections_are_kept(fcm: FakeFcm, make: Make) -> None:
    fcm.delay = 0.01
    provider = make(max_in_flight=5)
    for round_ in range(2):
        outcomes = await provider.send([message(f"c{round_}-{i}") for i in range(40)])
        assert all(o.ok for o in outcomes)
    assert fcm.max_in_flight == 5
    assert len(fcm.peers) <= 6  # at most one more for the token endpoint


async def test_pipelined_batches_share_the_cap_and_each_gets_its_own_outcomes(
    fcm: FakeFcm, make: Make
) -> None:
    """A stage keeps several pages with the provider at once: together they stay within
    max_in_flight, and each send returns the outcomes of its own messages, in order."""
    fcm.delay = 0.01
    provider = make(max_in_flight=5)
    batches = [[message(f"p{b}-{i}") for i in range(30)] for b in range(4)]
    results = await asyncio.gather(*(provider.send(batch) for batch in batches))
    for batch, outcomes in zip(batches, results, strict=True):
        assert [o.registration_id for o in outcomes] == [m.registration_id for m in batch]
        assert all(o.ok for o in outcomes)
    assert fcm.max_in_flight == 5
    assert Counter(fcm.accepted_tokens()) == Counter(m.registration_id for b in batches for m in b)


async def test_a_cancelled_send_drops_what_it_had_not_started(fcm: FakeFcm, make: Make) -> None:
    """An activity cancelled mid-page: the messages not yet handed over are never sent, and
    the provider goes on serving the next send."""
    fcm.delay = 0.05
    provider = make(max_in_flight=2)
    sending = asyncio.create_task(provider.send([message(f"x{i}") for i in range(40)]))
    await asyncio.sleep(0.12)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    await asyncio.sleep(0.2)  # those in flight finish
    dropped = 40 - len(fcm.accepted_tokens())
    assert dropped >= 30
    outcomes = await provider.send([message("after")])
    assert [o.ok for o in outcomes] == [True]
    assert len(fcm.accepted_tokens()) == 40 - dropped + 1


async def test_a_request_fcm_does_not_answer_times_out_and_is_handed_back(
    fcm: FakeFcm, make: Make
) -> None:
    """A hung FCM holds no sender for ever: past the provider's timeout the request counts as
    transient, is retried within the budget, then handed back for later; the next send goes."""
    fcm.delay = 5.0
    budget = RetryBudget(attempts=2, total_wait=1.0, base_delay=0.05, max_delay=0.05)
    provider = make(timeout=0.4, budget=budget, sleep=Sleeps())
    began = time.monotonic()
    [outcome] = await provider.send([message("hung")])
    took = time.monotonic() - began
    assert not outcome.ok and outcome.retry_after is not None
    assert "TimeoutError" in (outcome.error or "")
    assert 0.8 <= took < 3.0  # two attempts of 0.4 s, each noticed within the watchdog's tick
    fcm.delay = 0.0
    [after] = await provider.send([message("prompt")])
    assert after.ok


def _body(status: int, rpc_status: str, message: str, *details: dict[str, Any]) -> bytes:
    error = {"code": status, "message": message, "status": rpc_status, "details": list(details)}
    return json.dumps({"error": error}).encode()


FCM_CODE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
TOKEN_FIELD = {
    "@type": "type.googleapis.com/google.rpc.BadRequest",
    "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}],
}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        # INVALID_ARGUMENT names the token in a field violation (older answers) ...
        (
            400,
            _body(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", TOKEN_FIELD),
            "dead_token",
        ),
        # ... or only in its message (current answers).
        (
            400,
            _body(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                {"@type": FCM_CODE, "errorCode": "INVALID_ARGUMENT"},
            ),
            "dead_token",
        ),
        # A payload too large is the message's fault, not the token's.
        (400, _body(400, "INVALID_ARGUMENT", "Request contains an invalid argument."), "rejected"),
        (502, b"<!DOCTYPE html><title>Error 502 (Server Error)!!1</title>", "transient"),
        (401, _body(401, "UNAUTHENTICATED", "Request had invalid authentication"), "reauth"),
        (403, _body(403, "PERMISSION_DENIED", "Firebase Cloud Messaging API disabled"), "config"),
        (429, _body(429, "RESOURCE_EXHAUSTED", "Quota exceeded"), "quota"),
    ],
)
def test_real_fcm_bodies_are_classified(status: int, body: bytes, kind: str) -> None:
    assert classify(status, body).kind == kind


CUSTOM = {"msg_content": {"order": 42}, "title": "sync", "content_type": "json"}


async def test_a_message_only_push_is_an_fcm_data_message(fcm: FakeFcm, make: Make) -> None:
    sent = message(
        "tok-data", notify=False, title="sync", alert='{"order": 42}', extras={"kind": "order"}
    )
    sent.message = {**CUSTOM, "extras": {"kind": "order"}}
    [outcome] = await make().send([sent])
    assert outcome.ok
    [accepted] = fcm.accepted
    # No notification anywhere: Android hands the data to the app and shows nothing.
    assert accepted.message == {
        "token": "tok-data",
        "data": {
            "kind": "order",
            "msg_content": '{"order": 42}',
            "title": "sync",
            "content_type": "json",
            "relance_msg_id": "m-1",
            "relance_stage": "0",
        },
        "android": {},
    }


async def test_a_notification_with_a_message_carries_the_message_as_data(
    fcm: FakeFcm, make: Make
) -> None:
    [outcome] = await make().send([message("tok-both", message=CUSTOM)])
    assert outcome.ok
    sent = fcm.accepted[0].message
    assert sent["notification"] == {"body": "Flash sale: best sellers almost gone"}
    assert sent["data"]["msg_content"] == '{"order": 42}' and sent["data"]["title"] == "sync"
