"""Journeys through the FCM and APNs clients against fakes of their wire formats: a dead
token is invalidated, skipped by the next stage and left out of the next push; a
'try again' answer is retried and delivered once; a configuration error fails the push
with a message a human can act on."""

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from relance import ledger
from relance.simulator import Behaviour
from tests.providers.fakes import apns_fake, fcm_fake
from tests.stack import Stack, eventually, inprocess_stack
from tests.workflows.test_push_journey import stages_done
from workflows.push_journey import PushJourney

RESEND = {
    "trigger": {"condition": "not_clicked", "within": "2h"},
    "stages": [{"after": "1h", "notification": {"alert": "Still there?"}}],
}


@dataclass
class Setup:
    """A provider's fake, how to configure an app for it, and how to script its devices."""

    name: str
    platform: str
    credentials: dict[str, Any]
    options: dict[str, Any]
    tokens: list[str]  # ok, ok, busy (answers 'try later' once), dead
    accepted: Callable[[str], int]
    break_config: Callable[[], dict[str, Any]]  # credentials a human must fix


@asynccontextmanager
async def fcm(fakes: list[Any] | None = None) -> AsyncIterator[Setup]:
    info, public_key = fcm_fake.new_service_account("shop-123")
    fake = fcm_fake.FakeFcm("shop-123", info["client_email"], public_key)
    if fakes is not None:
        fakes.append(fake)
    async with fcm_fake.running_fcm(fake):
        tokens = [f"fcm-token-{i}" for i in range(4)]
        fake.scripted[tokens[2]] = [fcm_fake.Answer("UNAVAILABLE", retry_after="1")]
        fake.unregistered.add(tokens[3])
        credentials = {**info, "token_uri": fake.token_uri}
        other = fcm_fake.new_service_account("shop-123")[0]["private_key"]
        yield Setup(
            "fcm",
            "android",
            credentials,
            {"base_url": fake.url},
            tokens,
            lambda t: fake.accepted_tokens().count(t),
            lambda: {**credentials, "private_key": other},  # a key Google does not know
        )


@asynccontextmanager
async def apns(fakes: list[Any] | None = None) -> AsyncIterator[Setup]:
    private_key, public_key = apns_fake.new_p8_key()
    fake = apns_fake.FakeApns("TEAM123456", "KEY1234567", public_key, "shop.example.app")
    if fakes is not None:
        fakes.append(fake)
    async with apns_fake.serving(fake) as (url, ca):
        trust = ssl.create_default_context()
        ca.configure_trust(trust)
        tokens = [f"{i:064x}" for i in range(1, 5)]
        fake.scripted[tokens[2]] = [apns_fake.Answer(429, "TooManyRequests", retry_after="1")]
        fake.unregistered[tokens[3]] = 1_700_000_000_000
        credentials = {
            "team_id": "TEAM123456",
            "key_id": "KEY1234567",
            "private_key": private_key,
            "topic": "shop.example.app",
        }
        yield Setup(
            "apns",
            "ios",
            credentials,
            {"base_url": url, "verify": trust},
            tokens,
            fake.accepted_count,
            lambda: {**credentials, "private_key": apns_fake.new_p8_key()[0]},
        )


PROVIDERS = {"fcm": fcm, "apns": apns}


async def configure(stack: Stack, setup: Setup, credentials: dict[str, Any]) -> None:
    response = await stack.api.put(
        f"/v4/app/providers/{setup.name}",
        json={"platforms": [setup.platform], "credentials": credentials},
    )
    assert response.status_code == 200, response.text
    assert credentials["private_key"] not in response.text


def push(setup: Setup, resend: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "to": "all",
        "body": {
            "platform": setup.platform,
            "notification": {setup.platform: {"title": "Shop", "alert": "Flash sale"}},
        },
    }
    return {**body, "resend": resend} if resend else body


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_dead_token_dropped_and_try_later_delivered_once(
    provider: str, time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    async with (
        PROVIDERS[provider]() as setup,
        inprocess_stack(
            time_env.client, tmp_path, task_queue, Behaviour(), {setup.name: setup.options}
        ) as stack,
    ):
        await configure(stack, setup, setup.credentials)
        await stack.api.post(
            "/v4/devices",
            json={
                "devices": [
                    {"registration_id": t, "platform": setup.platform} for t in setup.tokens
                ]
            },
        )
        msg_id = (await stack.api.post("/v4/push", json=push(setup, RESEND))).json()["msg_id"]
        handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        await eventually(lambda: stages_done(time_env, msg_id, 1), timeout=60)
        # Past the last stage and its observation window (the 2h trigger window).
        await time_env.sleep(timedelta(hours=5, minutes=1))
        result = await handle.result()
        ok1, ok2, busy, dead = setup.tokens
        assert [(s.sent, s.failed) for s in result.stages] == [(3, 1), (3, 0)]
        assert [setup.accepted(t) for t in (ok1, ok2, busy, dead)] == [2, 2, 2, 0]

        second = (await stack.api.post("/v4/push", json=push(setup))).json()["msg_id"]
        await time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{second}").result()
        funnel = (await stack.api.get(f"/v4/push/{second}")).json()["funnel"]
        assert funnel["recipients"] == 3
        assert setup.accepted(dead) == 0


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_wrong_credentials_fail_the_push_and_keep_the_tokens(
    provider: str, time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    async with (
        PROVIDERS[provider]() as setup,
        inprocess_stack(
            time_env.client, tmp_path, task_queue, Behaviour(), {setup.name: setup.options}
        ) as stack,
    ):
        await configure(stack, setup, setup.break_config())
        ok = setup.tokens[0]
        await stack.api.post(
            "/v4/devices", json={"devices": [{"registration_id": ok, "platform": setup.platform}]}
        )
        msg_id = (await stack.api.post("/v4/push", json=push(setup))).json()["msg_id"]
        result = await time_env.client.get_workflow_handle_for(
            PushJourney.run, f"push-{msg_id}"
        ).result()
        assert result.state == "failed"
        status = (await stack.api.get(f"/v4/push/{msg_id}")).json()
        assert status["state"] == "failed" and status["error"].startswith(f"{setup.name}: ")
        # The token was kept: with the right credentials the same device is reached.
        await configure(stack, setup, setup.credentials)
        again = (await stack.api.post("/v4/push", json=push(setup))).json()["msg_id"]
        await time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{again}").result()
        assert setup.accepted(ok) == 1


async def test_one_apps_slow_provider_does_not_hold_up_another_app(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    """Two apps on the same FCM project: each has its own client, so one app's sends waiting
    out a Retry-After do not delay the other's."""
    fakes: list[Any] = []
    async with (
        fcm(fakes) as setup,
        inprocess_stack(
            time_env.client, tmp_path, task_queue, Behaviour(), {"fcm": setup.options}
        ) as stack,
    ):
        fake = fakes[0]
        other_key, other_secret = ledger.create_app(stack.engine, "other")
        other = {"auth": (other_key, other_secret)}
        slow_tokens = [f"slow-{i}" for i in range(3)]
        for token in slow_tokens:  # every send of the first app: "try again in 4 s"
            fake.scripted[token] = [fcm_fake.Answer("UNAVAILABLE", retry_after="4")]
        await configure(stack, setup, setup.credentials)
        response = await stack.api.put(
            "/v4/app/providers/fcm",
            json={"platforms": ["android"], "credentials": setup.credentials},
            **other,
        )
        assert response.status_code == 200
        await stack.api.post(
            "/v4/devices",
            json={"devices": [{"registration_id": t, "platform": "android"} for t in slow_tokens]},
        )
        await stack.api.post(
            "/v4/devices",
            json={"devices": [{"registration_id": "fast-1", "platform": "android"}]},
            **other,
        )
        slow_push = (await stack.api.post("/v4/push", json=push(setup))).json()["msg_id"]
        await eventually(lambda: len(fake.answers) >= len(slow_tokens))  # the slow app waits
        started = asyncio.get_running_loop().time()
        fast_push = (await stack.api.post("/v4/push", json=push(setup), **other)).json()["msg_id"]
        await time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{fast_push}").result()
        fast_took = asyncio.get_running_loop().time() - started
        slow = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{slow_push}")
        assert (await slow.describe()).close_time is None  # still waiting out its Retry-After
        assert fast_took < 3.0 and fake.accepted_tokens().count("fast-1") == 1
        result = await slow.result()
        assert [s.sent for s in result.stages] == [3]
        assert all(fake.accepted_tokens().count(t) == 1 for t in slow_tokens)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_a_message_only_push_goes_out_data_only_at_every_stage(
    provider: str, time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    fakes: list[Any] = []
    async with (
        PROVIDERS[provider](fakes) as setup,
        inprocess_stack(
            time_env.client, tmp_path, task_queue, Behaviour(), {setup.name: setup.options}
        ) as stack,
    ):
        await configure(stack, setup, setup.credentials)
        ok = setup.tokens[0]
        await stack.api.post(
            "/v4/devices", json={"devices": [{"registration_id": ok, "platform": setup.platform}]}
        )
        body = {
            "to": {"registration_id": [ok]},
            "body": {
                "platform": setup.platform,
                "message": {"title": "sync", "msg_content": "refresh", "extras": {"k": "v"}},
            },
            # Nothing reports delivery here: the resend goes to the device again.
            "resend": {
                "trigger": {"condition": "not_delivered", "within": "1h"},
                "stages": [{"after": "1h", "notification": {"alert": "refresh again"}}],
            },
        }
        response = await stack.api.post("/v4/push", json=body)
        assert response.status_code == 200, response.text
        msg_id = response.json()["msg_id"]
        handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        await eventually(lambda: stages_done(time_env, msg_id, 1), timeout=60)
        # Past the last stage and its observation window (the 1h trigger window).
        await time_env.sleep(timedelta(hours=3, minutes=1))
        result = await handle.result()
        assert [s.sent for s in result.stages] == [1, 1]
        fake = fakes[0]
        if provider == "fcm":
            sent = [a.message for a in fake.accepted if a.token == ok]
            assert ["notification" in m or "notification" in m["android"] for m in sent] == [
                False,
                False,
            ]
            assert [(m["data"]["msg_content"], m["data"]["k"]) for m in sent] == [
                ("refresh", "v"),
                ("refresh again", "v"),
            ]
        else:
            accepted = [a for a in fake.accepted if a.token == ok]
            assert [a.payload for a in accepted] == [
                {"aps": {"content-available": 1}, "k": "v", "msg_content": text, "title": "sync"}
                for text in ("refresh", "refresh again")
            ]
            assert {a.headers["apns-push-type"] for a in accepted} == {"background"}
