"""CallbackForwarder: one per app. Woken when its outbox gets rows, it delivers due batches and
sleeps until the next retry is due; it ends when idle and is started again by the next wake."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from relance.journey import DeliverInput, DeliverResult, ForwarderInput

# Bounded history: continue-as-new after this many deliveries in one run.
ROUNDS_PER_RUN = 500


def _wait_summary(result: DeliverResult) -> str:
    if result.next_due is None:
        return "idle: end unless new callbacks come"
    return "until the next retry at " + result.next_due.strftime("%H:%M:%SZ")


@workflow.defn
class CallbackForwarder:
    def __init__(self) -> None:
        self._woken = False

    @workflow.signal
    def wake(self) -> None:
        """New rows are in the outbox (or a dead batch was requeued)."""
        self._woken = True

    @workflow.run
    async def run(self, inp: ForwarderInput) -> None:
        for _ in range(ROUNDS_PER_RUN):
            self._woken = False
            result = await workflow.execute_activity(
                "deliver_callbacks",
                DeliverInput(app_key=inp.app_key, now=workflow.now()),
                result_type=DeliverResult,
                start_to_close_timeout=timedelta(minutes=5),
                # A worker that dies mid-round is noticed in seconds, not at the 5-minute mark.
                heartbeat_timeout=timedelta(seconds=20),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                summary="deliver the due callbacks",
            )
            if self._woken:
                continue
            if result.next_due is None:
                wait = timedelta(seconds=inp.idle_seconds)
            else:
                wait = max(result.next_due - workflow.now(), timedelta(0))
            workflow.set_current_details(
                f"last round: {result.delivered} delivered, {result.failed} to retry, "
                f"{result.dead} dead"
            )
            try:
                await workflow.wait_condition(
                    lambda: self._woken, timeout=wait, timeout_summary=_wait_summary(result)
                )
            except TimeoutError:
                if result.next_due is None:
                    return
            if workflow.info().is_continue_as_new_suggested():
                break
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)
