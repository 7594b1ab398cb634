"""The API's journey repair loop (api/journeys.py), on the dev server and both ledgers (not
the time-skipping server: journeys started there with no worker on their queue held its
clock for the session's later tests): it asks Temporal nothing about a push whose POST
started its journey, pages on past them to reach a push whose journey never started, and
starts that one once."""

from sqlalchemy.engine import Engine
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from api.journeys import PAGE, Repairs, repair_journeys
from relance import ledger
from relance.models import PushRequest
from relance.settings import Settings
from tests.workflows.test_when import body


async def test_the_repair_loop_skips_what_its_api_started_and_reaches_the_push_behind_them(
    dev_server: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    key, _ = ledger.create_app(engine, "repairs")
    request = PushRequest.model_validate(body(["r-1"]))
    repairs = Repairs()
    # More journeys waiting than a page holds, each started by its POST (as this process saw),
    # then one whose API died before its start.
    started = [ledger.accept_push(engine, key, request).push for _ in range(PAGE + 100)]
    for push in started:
        repairs.saw_started(push.msg_id, push.created_at)
    orphan = ledger.accept_push(engine, key, request).push
    settings = Settings(task_queue=task_queue, journey_repair_after_seconds=0)

    assert await repair_journeys(dev_server.client, engine, settings, repairs) == 1
    handle = dev_server.client.get_workflow_handle(f"push-{orphan.msg_id}")
    assert (await handle.describe()).id == f"push-{orphan.msg_id}"  # started
    for push in (started[0], started[PAGE], started[-1]):  # never asked about
        try:
            await dev_server.client.get_workflow_handle(f"push-{push.msg_id}").describe()
            raise AssertionError(f"a start was made for {push.msg_id}")
        except RPCError as exc:
            assert exc.status == RPCStatusCode.NOT_FOUND
    assert repairs.after is not None and repairs.after[1] == orphan.msg_id
    assert repairs.started == {}  # behind the cursor: forgotten

    # The next pass goes on from there: nothing new, nothing asked.
    assert await repair_journeys(dev_server.client, engine, settings, repairs) == 0
    late = ledger.accept_push(engine, key, request).push
    assert await repair_journeys(dev_server.client, engine, settings, repairs) == 1
    assert repairs.after is not None and repairs.after[1] == late.msg_id
    await handle.terminate()
    await dev_server.client.get_workflow_handle(f"push-{late.msg_id}").terminate()


async def test_a_pass_makes_at_most_its_calls_and_the_next_goes_on_from_there(
    dev_server: WorkflowEnvironment, engine: Engine, task_queue: str
) -> None:
    """After an API restart, every unfinished push in the window is unknown: a pass starts at
    most `calls` of them, and the next pass the following ones, each once."""
    key, _ = ledger.create_app(engine, "restart")
    request = PushRequest.model_validate(body(["r-1"]))
    pushes = [ledger.accept_push(engine, key, request).push for _ in range(5)]
    settings = Settings(task_queue=task_queue, journey_repair_after_seconds=0)
    repairs = Repairs()

    assert await repair_journeys(dev_server.client, engine, settings, repairs, calls=3) == 3
    assert repairs.after is not None and repairs.after[1] == pushes[2].msg_id
    assert await repair_journeys(dev_server.client, engine, settings, repairs, calls=3) == 2
    assert await repair_journeys(dev_server.client, engine, settings, repairs, calls=3) == 0
    for push in pushes:
        handle = dev_server.client.get_workflow_handle(f"push-{push.msg_id}")
        await handle.terminate()
