"""The naive peer: what a Temporal user would write instead of relance, plainly and fairly.

A FastAPI handler starts one workflow per push (bench/naive_peer_workflow.py); an activity
POSTs FCM-shaped JSON with aiohttp to the same FCM as relance; the workflow waits up to 2 h
for a click signal and resends once on timeout. No ledger, no idempotency, no callbacks.

    python bench/naive_peer.py api --port 8001
    python bench/naive_peer.py worker

Environment: TEMPORAL_ADDRESS, PEER_FCM_URL (the fake FCM's base URL), PEER_TASK_QUEUE."""

import argparse
import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from fastapi import FastAPI
from naive_peer_workflow import FcmSend, PeerPush, Push
from pydantic import BaseModel
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

TEMPORAL_ADDRESS = os.environ.get("TEMPORAL_ADDRESS", "localhost:7233")
TASK_QUEUE = os.environ.get("PEER_TASK_QUEUE", "naive-peer")
FCM_URL = os.environ.get("PEER_FCM_URL", "https://fcm.googleapis.com")
PROJECT = "relance-bench"


class PushIn(BaseModel):
    token: str
    title: str
    alert: str
    resend_alert: str


class PushOut(BaseModel):
    workflow_id: str


def api() -> FastAPI:
    client: Client | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal client
        client = await Client.connect(TEMPORAL_ADDRESS)
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/push")
    async def push(body: PushIn) -> PushOut:
        assert client is not None
        handle = await client.start_workflow(
            PeerPush.run,
            Push(body.token, body.title, body.alert, body.resend_alert),
            id=f"peer-{uuid.uuid4()}",
            task_queue=TASK_QUEUE,
        )
        return PushOut(workflow_id=handle.id)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"temporal": client is not None}

    return app


class Fcm:
    """One aiohttp session and one OAuth access token, kept for the worker's life."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.token: str | None = None

    @activity.defn(name="send_fcm")
    async def send_fcm(self, message: FcmSend) -> str:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        if self.token is None:
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}
            async with self.session.post(f"{FCM_URL}/token", data=form) as response:
                response.raise_for_status()
                self.token = (await response.json())["access_token"]
        body = {
            "message": {
                "token": message.token,
                "notification": {"title": message.title, "body": message.alert},
                "android": {"ttl": "60s"},
            }
        }
        async with self.session.post(
            f"{FCM_URL}/v1/projects/{PROJECT}/messages:send",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        ) as response:
            response.raise_for_status()
            return str((await response.json())["name"])


async def worker() -> None:
    client = await Client.connect(TEMPORAL_ADDRESS)
    fcm = Fcm()
    try:
        await Worker(
            client, task_queue=TASK_QUEUE, workflows=[PeerPush], activities=[fcm.send_fcm]
        ).run()
    finally:
        if fcm.session is not None:
            await fcm.session.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["api", "worker"])
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    if args.part == "api":
        uvicorn.run(api(), host="127.0.0.1", port=args.port, log_level="warning")
    else:
        try:
            asyncio.run(worker())
        except KeyboardInterrupt:
            pass
