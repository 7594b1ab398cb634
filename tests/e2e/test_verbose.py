"""`--verbose` (RELANCE_VERBOSE) brings back what the quiet default leaves out: the API's line per
HTTP request (so per event batch), and the workflow context of the journey's lines. The same push,
events and devices on real `relance api`, `worker` and `simulator` processes, quiet then verbose."""

import re

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.e2e.conftest import relance_stack
from tests.e2e.test_journey_http import SIMULATOR, body
from tests.stack import eventually


async def _logs(dev_server: WorkflowEnvironment, tmp: pytest.TempPathFactory, verbose: str) -> dict:
    logs = tmp.mktemp(f"verbose-{verbose or 'quiet'}")
    env = {"RELANCE_VERBOSE": verbose}
    with relance_stack(dev_server.client, logs, SIMULATOR, extra_env=env) as stack:
        async with stack.api() as api:
            accepted = await api.post("/v4/push", json=body(["v-1", "v-2"]))
            assert accepted.status_code == 200, accepted.text
            msg_id = accepted.json()["msg_id"]

            async def done() -> bool:
                return (await api.get(f"/v4/push/{msg_id}")).json()["state"] == "completed"

            await eventually(done, timeout=60)
            event = {"msg_id": msg_id, "registration_id": "v-1", "status": "converted"}
            posted = await api.post("/v4/events", json={"events": [event]})
            assert posted.status_code == 200, posted.text
    return {
        "msg_id": msg_id,
        "api": (logs / "api.log").read_text(),
        "worker": (logs / "worker.log").read_text(),
    }


async def test_verbose_brings_back_requests_and_workflow_context(
    dev_server: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> None:
    quiet = await _logs(dev_server, tmp_path_factory, "")
    loud = await _logs(dev_server, tmp_path_factory, "1")
    request = re.compile(r'"POST /v4/events HTTP/1\.1" 200')
    stage = re.compile(r"push (\d+) stage 0 sent: 2 of 2.*")

    # Quiet: the journey's one line per stage, no line per request or event batch.
    assert not request.search(quiet["api"]), quiet["api"]
    assert "GET /v4/push/" not in quiet["api"]
    (line,) = [m.group(0) for m in stage.finditer(quiet["worker"]) if m.group(1) == quiet["msg_id"]]
    assert "workflow_id" not in line, line
    # Verbose: each request (the simulator's event batches and ours) and the workflow context.
    assert request.search(loud["api"]), loud["api"]
    assert f'"GET /v4/push/{loud["msg_id"]} HTTP/1.1" 200' in loud["api"]
    (line,) = [m.group(0) for m in stage.finditer(loud["worker"]) if m.group(1) == loud["msg_id"]]
    assert f"push-{loud['msg_id']}" in line and "workflow_id" in line, line
