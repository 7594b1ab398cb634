"""The device simulator: virtual devices that receive pushes and, with seeded, configurable
probabilities and delays, report delivered / displayed / clicked / failed back to relance's
`POST /v4/events` like a real app would. It also counts what every device received."""

import asyncio
import heapq
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import BaseModel, Field

log = logging.getLogger("relance.simulator")

Report = Callable[[list[dict[str, Any]]], Awaitable[None]]


class Behaviour(BaseModel):
    seed: int = 42
    p_fail: float = Field(0.02, ge=0, le=1)
    p_display: float = Field(0.85, ge=0, le=1)
    # Chance to click once displayed, per stage (the last value repeats for later stages).
    p_click: list[float] = Field(default_factory=lambda: [0.3, 0.25, 0.2])
    min_delay_ms: int = Field(50, ge=0)
    max_delay_ms: int = Field(800, ge=0)
    send_latency_ms: int = Field(0, ge=0)
    # Scripted devices: registration_id -> the stage at which it clicks (it never fails).
    clicks_at: dict[str, int] = Field(default_factory=dict)


class SimMessage(BaseModel):
    idempotency_key: str
    msg_id: str
    stage: int
    registration_id: str
    title: str | None = None
    alert: str
    extras: dict[str, Any] = {}
    # A data-only message (EngageLab's custom message without a notification), and the message.
    notify: bool = True
    message: dict[str, Any] | None = None


class SendBody(BaseModel):
    messages: list[SimMessage]


class LookupBody(BaseModel):
    keys: list[str] = Field(max_length=5000)


class Fleet:
    """Every virtual device; what each received is counted, repeats included."""

    def __init__(self, behaviour: Behaviour, report: Report) -> None:
        self.behaviour = behaviour
        self.report = report
        self.received: Counter[tuple[str, int, str]] = Counter()
        self.seen_keys: set[str] = set()
        self.busy_answered: set[tuple[str, int, str]] = set()
        self.contents: dict[tuple[str, int, str], SimMessage] = {}
        # When each (msg_id, stage, device) first arrived, wall-clock seconds: stage lateness.
        self.first_at: dict[tuple[str, int, str], float] = {}
        self.fates: dict[tuple[str, int, str], list[str]] = {}
        self.reported: Counter[tuple[str, int, str]] = Counter()
        self._queue: list[tuple[float, int, dict[str, Any]]] = []
        self._inflight: list[tuple[float, int, dict[str, Any]]] = []
        self._n = 0
        self._wake = asyncio.Event()

    def fate(self, msg_id: str, stage: int, rid: str) -> list[str]:
        """What this device does with this stage: seeded, so a run gives the same fates again."""
        b = self.behaviour
        if rid.startswith("silent-"):
            return []  # a device that never reports back
        if rid in b.clicks_at:
            clicks = b.clicks_at[rid] == stage
            return ["delivered", "displayed", "clicked"] if clicks else ["delivered", "displayed"]
        rng = random.Random(f"{b.seed}:{msg_id}:{stage}:{rid}")
        if rng.random() < b.p_fail:
            return ["failed"]
        statuses = ["delivered"]
        if rng.random() < b.p_display:
            statuses.append("displayed")
            p_click = b.p_click[min(stage, len(b.p_click) - 1)] if b.p_click else 0.0
            if rng.random() < p_click:
                statuses.append("clicked")
        return statuses

    async def receive(self, messages: list[SimMessage]) -> list[dict[str, Any]]:
        if self.behaviour.send_latency_ms:
            await asyncio.sleep(self.behaviour.send_latency_ms / 1000)
        results = []
        now = time.monotonic()
        for m in messages:
            key = (m.msg_id, m.stage, m.registration_id)
            if m.registration_id.startswith("busy-") and key not in self.busy_answered:
                self.busy_answered.add(key)  # the provider is busy once: try again in a minute
                results.append(
                    {
                        "registration_id": m.registration_id,
                        "ok": False,
                        "error": "busy, try again later",
                        "retry_after": 60.0,
                    }
                )
                continue
            self.received[key] += 1
            self.first_at.setdefault(key, time.time())
            if m.registration_id.startswith("dead-"):
                results.append(
                    {
                        "registration_id": m.registration_id,
                        "ok": False,
                        "error": "Unregistered",
                        "token_invalid": True,
                    }
                )
                continue
            results.append({"registration_id": m.registration_id, "ok": True})
            if m.idempotency_key in self.seen_keys:
                continue  # a repeat of a message this device already has: shown once
            self.seen_keys.add(m.idempotency_key)
            self.contents[key] = m
            fate = self.fates[key] = self.fate(*key)
            rng = random.Random(f"delay:{self.behaviour.seed}:{m.idempotency_key}")
            at = now
            for status in fate:
                at += rng.uniform(self.behaviour.min_delay_ms, self.behaviour.max_delay_ms) / 1000
                self._n += 1
                event = {
                    "msg_id": m.msg_id,
                    "registration_id": m.registration_id,
                    "status": status,
                    "stage": m.stage,
                }
                if status == "failed":
                    event["error"] = "device unreachable"
                heapq.heappush(self._queue, (at, self._n, event))
        self._wake.set()
        return results

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by relance (queued or being reported)."""
        return len(self._queue) + len(self._inflight)

    async def run_reporter(self) -> None:
        """Report due events in batches; on failure keep them and try again."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            delay = self._queue[0][0] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(min(delay, 0.05))
                continue
            due: list[Any] = []
            while self._queue and self._queue[0][0] <= time.monotonic() and len(due) < 1000:
                due.append(heapq.heappop(self._queue))
            self._inflight = due
            try:
                await self.report([e for _, _, e in due])
            except Exception as exc:  # noqa: BLE001 — any failure: requeue, retry shortly
                log.warning("reporting %d events failed (%r); retrying", len(due), exc)
                for item in due:
                    heapq.heappush(self._queue, item)
                self._inflight = []
                await asyncio.sleep(0.5)
                continue
            for _, _, e in due:
                self.reported[(e["msg_id"], e["stage"], e["status"])] += 1
            self._inflight = []

    def stats(self, msg_id: str) -> dict[str, Any]:
        stages: dict[int, dict[str, int]] = defaultdict(
            lambda: {
                "received": 0,
                "repeats": 0,
                "delivered": 0,
                "displayed": 0,
                "clicked": 0,
                "failed": 0,
            }
        )
        for (m, stage, _rid), count in self.received.items():
            if m == msg_id:
                stages[stage]["received"] += 1
                stages[stage]["repeats"] += count - 1
        for (m, stage, status), count in self.reported.items():
            if m == msg_id:
                stages[stage][status] += count
        return {
            "msg_id": msg_id,
            "stages": {str(k): v for k, v in sorted(stages.items())},
            "pending_reports": sum(
                1 for _, _, e in [*self._queue, *self._inflight] if e["msg_id"] == msg_id
            ),
        }

    def messages(self, msg_id: str, stage: int) -> list[dict[str, Any]]:
        return [
            {
                "registration_id": rid,
                "title": sim.title,
                "alert": sim.alert,
                "notify": sim.notify,
                "message": sim.message,
                "received": self.received[(m, s, rid)],
                "received_at": self.first_at.get((m, s, rid)),
                "fate": self.fates.get((m, s, rid), []),
            }
            for (m, s, rid), sim in sorted(self.contents.items(), key=lambda kv: kv[0])
            if m == msg_id and s == stage
        ]


def http_reporter(api_url: str, app_key: str, master_secret: str) -> Report:
    client = httpx.AsyncClient(base_url=api_url, auth=(app_key, master_secret), timeout=30)

    async def report(events: list[dict[str, Any]]) -> None:
        response = await client.post("/v4/events", json={"events": events})
        response.raise_for_status()

    return report


def create_simulator_app(behaviour: Behaviour, report: Report) -> FastAPI:
    fleet = Fleet(behaviour, report)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(fleet.run_reporter())
        yield
        task.cancel()

    app = FastAPI(title="relance device simulator", lifespan=lifespan)
    app.state.fleet = fleet

    @app.post("/v1/send")
    async def send(body: SendBody) -> dict[str, Any]:
        """Deliver a batch of messages to virtual devices."""
        return {"results": await fleet.receive(body.messages)}

    @app.post("/v1/lookup")
    async def lookup(body: LookupBody) -> dict[str, list[str]]:
        """Which of these idempotency keys were already received (the sender's crash recovery)."""
        return {"received": [k for k in body.keys if k in fleet.seen_keys]}

    @app.get("/v1/stats/{msg_id}")
    async def stats(msg_id: str) -> dict[str, Any]:
        """What the devices received and reported for one push, per stage."""
        return fleet.stats(msg_id)

    @app.get("/v1/messages/{msg_id}/{stage}")
    async def messages(msg_id: str, stage: int) -> list[dict[str, Any]]:
        """What each device received at one stage, with how many times."""
        return fleet.messages(msg_id, stage)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
