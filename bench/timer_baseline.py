"""The baseline of bench/bench_timers.py: a plain Temporal workflow that sleeps until a due time,
then notes the workflow time and starts a trivial local activity that notes the wall clock.
Nothing else: how late a timer fires on this dev server, and how late a worker starts work on
it, with no relance code in the way. Its worker runs in its own process, with the SDK's
defaults as relance's worker has them (unsandboxed, 1,000 cached workflows).

    python bench/timer_baseline.py --address 127.0.0.1:7233 --task-queue plain-timers"""

import argparse
import asyncio
import time
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker


@activity.defn
async def started_at() -> float:
    """The wall clock when the activity began: what `send_stage` would start at."""
    return time.time()


@workflow.defn
class PlainTimer:
    @workflow.run
    async def run(self, due: float) -> list[float]:
        """`due`: epoch seconds. Returns [due, workflow time after the sleep, activity start,
        workflow time of the first task (from when on it waits)]."""
        first = workflow.now().timestamp()
        wait = due - first
        if wait > 0:
            await workflow.sleep(timedelta(seconds=wait))
        fired = workflow.now().timestamp()
        started = await workflow.execute_local_activity(
            started_at, start_to_close_timeout=timedelta(seconds=30)
        )
        return [due, fired, started, first]


async def main(address: str, task_queue: str) -> None:
    client = await Client.connect(address)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[PlainTimer],
        activities=[started_at],
        workflow_runner=UnsandboxedWorkflowRunner(),  # as relance's worker runs by default
    )
    await worker.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", default="plain-timers")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.address, args.task_queue))
    except KeyboardInterrupt:
        pass
