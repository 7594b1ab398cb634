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
    )
