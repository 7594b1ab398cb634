"""Waking an app's CallbackForwarder (by workflow type name: relance does not import workflows)."""

from temporalio.client import Client

from relance.journey import ForwarderInput


def forwarder_id(app_key: str) -> str:
    return f"callbacks-{app_key}"


async def wake_forwarder(client: Client, task_queue: str, app_key: str) -> None:
    """Signal-with-start: wakes the running forwarder, or starts one."""
    await client.start_workflow(
        "CallbackForwarder",
        ForwarderInput(app_key=app_key),
        id=forwarder_id(app_key),
        task_queue=task_queue,
        start_signal="wake",
        static_summary=f"Callbacks of app {app_key}: deliver status events, retry, dead-letter",
        static_details=(
            f"Delivers the status events of app `{app_key}` to its callback URLs in "
            "EngageLab's callback shape, signed; retries at 10 s, 1 min, 5 min, 30 min, 1 h; "
            "then dead letters (`GET /v4/callbacks/dead`). Ends when idle; the next event "
            "starts it again."
        ),
    )
