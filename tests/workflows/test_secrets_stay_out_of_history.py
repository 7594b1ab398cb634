"""No secret reaches a workflow: a journey that sends through FCM (its fake, credentials
encrypted in the ledger) keeps the service account's private key, the app's master secret and
its callback secret out of the workflow history, the search attributes and the logs."""

import logging
from base64 import b64decode
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.history.v1 import History
from temporalio.testing import WorkflowEnvironment

from relance import ledger, sealing
from relance.simulator import Behaviour
from tests.stack import eventually, inprocess_stack
from tests.workflows.test_fcm_apns_journeys import RESEND, configure, fcm, push
from tests.workflows.test_push_journey import stages_done
from workflows.push_journey import PushJourney


async def test_a_journey_through_fcm_keeps_every_secret_out_of_history_and_logs(
    time_env: WorkflowEnvironment,
    tmp_path: Path,
    task_queue: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        fcm() as setup,
        inprocess_stack(
            time_env.client, tmp_path, task_queue, Behaviour(), {setup.name: setup.options}
        ) as stack,
    ):
        assert sealing.current() is not None  # the suite runs with RELANCE_SECRET_KEYS
        await configure(stack, setup, setup.credentials)
        await stack.api.post(
            "/v4/devices",
            json={"devices": [{"registration_id": t, "platform": "android"} for t in setup.tokens]},
        )
        msg_id = (await stack.api.post("/v4/push", json=push(setup, RESEND))).json()["msg_id"]
        handle = time_env.client.get_workflow_handle_for(PushJourney.run, f"push-{msg_id}")
        await eventually(lambda: stages_done(time_env, msg_id, 1), timeout=60)
        # Past the last stage and its observation window (the 2h trigger window).
        await time_env.sleep(timedelta(hours=5, minutes=1))
        result = await handle.result()
        assert [s.sent for s in result.stages] == [3, 3]  # sent with the sealed credentials
        # The history's own bytes: payloads in it are raw JSON (to_json() would base64 them).
        events = (await handle.fetch_history()).events
        history = History(events=events).SerializeToString().decode("utf-8", "replace")
        attributes = str((await handle.describe()).typed_search_attributes)
        app = ledger.get_app(stack.engine, stack.app_key)
        auth = stack.api.auth
        assert auth is not None
        header = next(auth.auth_flow(stack.api.build_request("GET", "/"))).headers
        master_secret = b64decode(header["authorization"].split()[1]).decode().split(":", 1)[1]
    secrets = {
        "callback secret": app.callback_secret or "",
        "master secret": master_secret,
        **{
            f"private key line {i}": line
            for i, line in enumerate(setup.credentials["private_key"].splitlines())
            if line and not line.startswith("-----")
        },
    }
    assert msg_id in history and "PushJourney" in history  # the journey's own history
    for where, text in {"history": history, "attributes": attributes, "logs": caplog.text}.items():
        leaked = [name for name, secret in secrets.items() if secret and secret in text]
        assert leaked == [], f"{where} holds {leaked}"
