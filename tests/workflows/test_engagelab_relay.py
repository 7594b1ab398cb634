"""relance behind EngageLab: pushes go out through EngageLab's /v4/push (a fake of it), and
EngageLab's own callbacks come back to POST /v4/callbacks/engagelab — the echostr check, a
good and a bad X-CALLBACK-ID, and rows that move the journey (a click stops the resend; a
dead token leaves the audience)."""

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment

from relance import ledger
from relance.callbacks import engagelab_signature
from relance.simulator import Behaviour
from tests.providers.fakes.engagelab_fake import FakeEngageLab
from tests.stack import eventually, inprocess_stack
from tests.workflows.test_push_journey import stages_done
from workflows.push_journey import PushJourney

USERNAME, SECRET = "shop", "callback-secret-0123456789"
DEVICES = ["el-a", "el-b", "el-c"]


def signed(secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    timestamp, nonce = str(int(at or time.time())), "n0nce"
    signature = engagelab_signature(secret, timestamp, nonce, USERNAME)
    return {
        "X-CALLBACK-ID": f"timestamp={timestamp};nonce={nonce};username={USERNAME};"
        f"signature={signature}"
    }


def row(msg_id: str, rid: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "message_id": f"el-{rid}",
        "from": "push",
        "to": rid,
        "server": "fcm",
        "channel": "fcm",
        "custom_args": {"relance_msg_id": msg_id, "relance_stage": 0},
        "itime": int(time.time()),
        "status": {
            "message_status": status,
            "status_data": {},
            "error_code": 0,
            "error_detail": {},
            **extra,
        },
    }


async def test_engagelab_relay_round_trip(
    time_env: WorkflowEnvironment, tmp_path: Path, task_queue: str
) -> None:
    fake = FakeEngageLab()
    await fake.start()
    try:
        async with inprocess_stack(time_env.client, tmp_path, task_queue, Behaviour()) as stack:
            configured = await stack.api.put(
                "/v4/app/providers/engagelab",
                json={
                    "platforms": ["android", "ios"],
                    "credentials": {
                        "app_key": "fake-app-key",
                        "master_secret": "fake-master-secret",
                        "base_url": fake.base_url,
                        "callback_username": USERNAME,
                        "callback_secret": SECRET,
                    },
                },
            )
            assert configured.status_code == 200, configured.text
            assert SECRET not in configured.text and "fake-master-secret" not in configured.text
            await stack.api.post(
                "/v4/devices", json={"devices": [{"registration_id": rid} for rid in DEVICES]}
            )
            accepted = await stack.api.post(
                "/v4/push",
                json={
                    "to": {"registration_id": DEVICES},
                    "body": {"platform": "android", "notification": {"android": {"alert": "Hi"}}},
                    "resend": {
                        "trigger": {"condition": "not_clicked", "within": "2h"},
                        "stages": [{"after": "1h", "notification": {"alert": "Still there?"}}],
                    },
                },
            )
            msg_id = accepted.json()["msg_id"]
            await eventually(lambda: stages_done(time_env, msg_id, 1))
            assert sorted(a.registration_id for a in fake.accepted) == DEVICES

            handshake = await stack.api.post("/v4/callbacks/engagelab", json={"echostr": "x1y2"})
            assert handshake.status_code == 200 and handshake.text == "x1y2"

            rows = {
                "total": 3,
                "rows": [
                    row(msg_id, "el-a", "click"),
                    row(msg_id, "el-b", "delivered"),
                    row(msg_id, "el-c", "target_invalid", error_code=20101),
                ],
            }
            forged = await stack.api.post(
                "/v4/callbacks/engagelab", json=rows, headers=signed("not-the-secret")
            )
            stale = await stack.api.post(
                "/v4/callbacks/engagelab", json=rows, headers=signed(at=time.time() - 3600)
            )
            unsigned = await stack.api.post("/v4/callbacks/engagelab", json=rows)
            assert [r.status_code for r in (forged, stale, unsigned)] == [401, 401, 401]
            assert ledger.progress(stack.engine, msg_id).clicked == 0

            good = await stack.api.post("/v4/callbacks/engagelab", json=rows, headers=signed())
            assert good.status_code == 200, good.text
            assert good.json() == {"accepted": 3, "duplicates": 0, "skipped": 0}
            again = await stack.api.post("/v4/callbacks/engagelab", json=rows, headers=signed())
            assert again.json()["duplicates"] == 3

            handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
            # Past the last stage and its observation window (the 2h trigger window).
            await time_env.sleep(timedelta(hours=5, minutes=1))
            result = await handle.result()
    finally:
        await fake.stop()

    # el-a clicked and el-c's token is dead: only el-b gets the resend.
    assert [s.sent for s in result.stages] == [3, 1]
    resent = [a for a in fake.accepted if a.request["custom_args"]["relance_stage"] == 1]
    assert [a.registration_id for a in resent] == ["el-b"]
    assert resent[0].request["body"]["notification"]["android"]["alert"] == "Still there?"
    assert result.funnel.clicked == 1 and result.funnel.delivered == 2
