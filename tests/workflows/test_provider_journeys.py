"""Journeys through a real provider client (Web Push) against a fake push service that
decrypts what it gets: a dead subscription is invalidated and left out of the next stage and
the next push; a 429 is retried and delivered once; wrong credentials fail the push with a
message a human can act on. Credentials go in through the API and never come back out."""

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from temporalio.testing import WorkflowEnvironment

from relance.simulator import Behaviour
from tests.providers.fakes.webpush_fake import Scripted, WebPushFake
from tests.stack import Stack, eventually, inprocess_stack
from tests.workflows.test_push_journey import stages_done
from workflows.push_journey import PushJourney

WEB = {"webpush": {"require_https": False}}


def vapid_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


async def use_webpush(stack: Stack, private_key: str) -> dict[str, Any]:
    response = await stack.api.put(
        "/v4/app/providers/webpush",
        json={
            "platforms": ["web"],
            "credentials": {"private_key": private_key, "subject": "mailto:ops@shop.example"},
        },
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def register(stack: Stack, subscriptions: list[str]) -> None:
    devices = [{"registration_id": s, "platform": "web"} for s in subscriptions]
    (await stack.api.post("/v4/devices", json={"devices": devices})).raise_for_status()


def web_push(resend: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "to": "all",
        "body": {
            "platform": "web",
            "notification": {"web": {"alert": "Flash sale", "title": "Shop"}},
        },
    }
    if resend:
        body["resend"] = resend
    return body


async def test_dead_subscription_is_dropped_and_a_429_delivered_once(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    key = vapid_key()
    async with inprocess_stack(time_env.client, tmp_path, task_queue, Behaviour(), WEB) as stack:
        shown = await use_webpush(stack, key)
        assert key not in json.dumps(shown) and shown["credentials"]["private_key"] == "**********"
        listed = (await stack.api.get("/v4/app/providers")).json()
        assert key not in json.dumps(listed)

        from relance.credentials import VapidCredentials

        server_key = VapidCredentials(private_key=key, subject="mailto:x@y.z")
        fake = WebPushFake(application_server_key=server_key.application_server_key())
        await fake.start()
        try:
            ok, busy, dead = fake.subscribe(), fake.subscribe(), fake.subscribe()
            fake.unsubscribe(dead, 410)
            fake.script(busy, Scripted(429, retry_after="1"))
            await register(stack, [ok.to_json(), busy.to_json(), dead.to_json()])
            resend = {
                "trigger": {"condition": "not_clicked", "within": "2h"},
                "stages": [{"after": "1h", "notification": {"title": "Still on"}}],
            }
            accepted = await stack.api.post("/v4/push", json=web_push(resend))
            assert accepted.status_code == 200, accepted.text
            msg_id = accepted.json()["msg_id"]
            handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
            await eventually(lambda: stages_done(time_env, msg_id, 1))
            await time_env.sleep(timedelta(hours=3, minutes=1))
            await eventually(lambda: stages_done(time_env, msg_id, 2))
            await time_env.sleep(timedelta(hours=2))  # the observation window
            result = await handle.result()

            stages = {s.stage: s for s in result.stages}
            assert (stages[0].sent, stages[0].failed) == (2, 1)
            assert (stages[1].sent, stages[1].targeted) == (2, 2)  # the dead one is not queued
            for sub in (ok, busy):
                got = [(a.payload["stage"], a.payload["title"]) for a in fake.received[sub.id]]
                assert got == [(0, "Shop"), (1, "Still on")]
            assert fake.received[dead.id] == []
            assert len(fake.attempts[dead.id]) == 1  # 410 is final: not retried
            assert len(fake.attempts[busy.id]) == 3  # 429 once, then stage 0 and stage 1

            events = (await stack.api.get(f"/v4/push/{msg_id}/callbacks")).json()["events"]
            failure = next(e for e in events if e["status"] == "failed")
            assert "410" in failure["error"] or "gone" in failure["error"].lower()

            again = await stack.api.post("/v4/push", json=web_push())
            second = again.json()["msg_id"]
            await time_env.client.get_workflow_handle_for(
                PushJourney.run, f"push-{second}"
            ).result()
            funnel = (await stack.api.get(f"/v4/push/{second}")).json()["funnel"]
            assert funnel["recipients"] == 2  # the invalidated device is not in the audience
        finally:
            await fake.stop()


async def test_wrong_credentials_fail_the_push_with_an_actionable_message(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    right = vapid_key()
    async with inprocess_stack(time_env.client, tmp_path, task_queue, Behaviour(), WEB) as stack:
        from relance.credentials import VapidCredentials

        subscribed_with = VapidCredentials(private_key=right, subject="mailto:x@y.z")
        fake = WebPushFake(application_server_key=subscribed_with.application_server_key())
        await fake.start()
        try:
            sub = fake.subscribe()
            await use_webpush(stack, vapid_key())  # not the key the browser subscribed with
            await register(stack, [sub.to_json()])
            msg_id = (await stack.api.post("/v4/push", json=web_push())).json()["msg_id"]
            handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
            result = await handle.result()
            assert result.state == "failed"
            status = (await stack.api.get(f"/v4/push/{msg_id}")).json()
            assert status["state"] == "failed" and "VAPID" in status["error"]
            devices_valid = fake.received[sub.id] == []
            assert devices_valid
            bad = await stack.api.put(
                "/v4/app/providers/webpush",
                json={"platforms": ["web"], "credentials": {"private_key": "nope", "subject": "x"}},
            )
            assert bad.status_code == 400 and "credentials.private_key" in bad.text
            assert "nope" not in bad.text
        finally:
            await fake.stop()
