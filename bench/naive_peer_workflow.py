"""The naive peer's workflow, in a module of its own as Temporal's docs advise (the sandbox
re-imports a workflow's module for every run, so it should import little).

Send the push, wait up to 2 h for a click signal, resend once if none came."""

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow


@dataclass
class Push:
    token: str
    title: str
    alert: str
    resend_alert: str


@dataclass
class FcmSend:
    token: str
    title: str
    alert: str


@workflow.defn
class PeerPush:
    def __init__(self) -> None:
        self.clicked = False

    @workflow.run
    async def run(self, push: Push) -> str:
        await workflow.execute_activity(
            "send_fcm",
            FcmSend(push.token, push.title, push.alert),
            start_to_close_timeout=timedelta(seconds=30),
        )
        try:
            await workflow.wait_condition(lambda: self.clicked, timeout=timedelta(hours=2))
            return "clicked"
        except TimeoutError:
            await workflow.execute_activity(
                "send_fcm",
                FcmSend(push.token, push.title, push.resend_alert),
                start_to_close_timeout=timedelta(seconds=30),
            )
            return "resent"

    @workflow.signal
    def click(self) -> None:
        self.clicked = True
