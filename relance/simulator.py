"""The device simulator: virtual devices that receive pushes and, with seeded, configurable
probabilities and delays, report delivered / displayed / clicked / failed back to relance's
`POST /v4/events` like a real app would. It also counts what every device received."""

import asyncio
import heapq
import logging
import math
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
    # The truth of the funnel (see README "The simulator knows the truth"):
    # - baseline: the chance that a device clicks on its own, whatever it is sent after stage
    #   0, at a time that decays from stage 0's receipt (exponential, this half-life); reported
    #   without a stage, as an app reporting a later open would.
    baseline: float = Field(0.0, ge=0, le=1)
    baseline_half_life_s: float = Field(60.0, gt=0)
    # - effects: the click probability a received stage (key "1") or one of its variants (key
    #   "1:B") causes: clicked with that probability, displayed or not. Without one, a stage
    #   causes p_display x p_click[stage].
    effects: dict[str, float] = Field(default_factory=dict)

    def caused(self, stage: int, variant: str | None = None) -> float:
        """The click probability that receiving `stage` (`variant`) causes."""
        if variant is not None and f"{stage}:{variant}" in self.effects:
            return self.effects[f"{stage}:{variant}"]
        if str(stage) in self.effects:
            return self.effects[str(stage)]
        p_click = self.p_click[min(stage, len(self.p_click) - 1)] if self.p_click else 0.0
        return self.p_display * p_click

    def organic_by(self, seconds: float) -> float:
        """The chance that a device has clicked on its own `seconds` after stage 0."""
        return self.baseline * (1 - 0.5 ** (max(seconds, 0.0) / self.baseline_half_life_s))


def true_click_lift(
    behaviour: Behaviour, stage: int, variant: str | None, start_s: float, end_s: float
) -> float:
    """What sending resend stage `stage` (`variant`) truly adds to the click rate of the
    recipients still eligible at it, counting clicks from its time to `end_s` (both in seconds
    after stage 0): what a comparison with the stage's holdout estimates. A recipient that
    would have clicked on its own in the window adds nothing; one whose send failed neither:
    (1 - p_fail) x effect x (1 - P(clicks on its own in the window | not before))."""
    b = behaviour
    before, by_end = b.organic_by(start_s), b.organic_by(end_s)
    own = (by_end - before) / (1 - before) if before < 1 else 0.0
    return (1 - b.p_fail) * b.caused(stage, variant) * (1 - own)


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
    variant: str | None = None  # its A/B variant, if the stage has variants


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
        self.reported: Counter[tuple[str, int | None, str]] = Counter()
        self._queue: list[tuple[float, int, dict[str, Any]]] = []
        self._inflight: list[tuple[float, int, dict[str, Any]]] = []
        self._n = 0
        self._wake = asyncio.Event()
        # Devices that clicked (per push): a later click of their own is not reported again.
        self.clicked: set[tuple[str, str]] = set()

    def fate(self, msg_id: str, stage: int, rid: str, variant: str | None = None) -> list[str]:
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
        if str(stage) in b.effects or f"{stage}:{variant}" in b.effects:
            if rng.random() < b.caused(stage, variant):  # the stage's known causal effect
                return ["delivered", "displayed", "clicked"]
            return statuses + (["displayed"] if rng.random() < b.p_display else [])
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
            fate = self.fates[key] = self.fate(*key, m.variant)
            if m.stage == 0:
                self._organic(m.msg_id, m.registration_id, now)
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

    def organic_after(self, msg_id: str, rid: str) -> float | None:
        """Seconds after stage 0's receipt at which the device clicks on its own (None:
        never): seeded, like its fates."""
        b = self.behaviour
        if b.baseline <= 0:
            return None
        rng = random.Random(f"organic:{b.seed}:{msg_id}:{rid}")
        if rng.random() >= b.baseline:
            return None
        return -b.baseline_half_life_s * math.log2(1 - rng.random())

    def _organic(self, msg_id: str, rid: str, now: float) -> None:
        """The device's own click, sent or not sent anything more: with probability
        `baseline`, at an exponential time (the decaying hazard) after stage 0's receipt."""
        after = self.organic_after(msg_id, rid)
        if after is None:
            return
        self._n += 1
        event = {"msg_id": msg_id, "registration_id": rid, "status": "clicked", "organic": True}
        heapq.heappush(self._queue, (now + after, self._n, event))
        self._wake.set()

    def _due(self, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], set[Any]]:
        """What to report (a device's own click only if it has not clicked yet), and the
        devices that click in it (marked once the report went through)."""
        out, clickers = [], set()
        for e in events:
            if e["status"] == "clicked":
                clicker = (e["msg_id"], e["registration_id"])
                if e.get("organic") and (clicker in self.clicked or clicker in clickers):
                    continue
                clickers.add(clicker)
            out.append({k: v for k, v in e.items() if k != "organic"})
        return out, clickers

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
                report, clickers = self._due([e for _, _, e in due])
                if report:
                    await self.report(report)
            except Exception as exc:  # noqa: BLE001 — any failure: requeue, retry shortly
                log.warning("reporting %d events failed (%r); retrying", len(due), exc)
                for item in due:
                    heapq.heappush(self._queue, item)
                self._inflight = []
                await asyncio.sleep(0.5)
                continue
            self.clicked |= clickers
            for e in report:
                self.reported[(e["msg_id"], e.get("stage"), e["status"])] += 1
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
        organic = 0
        for (m, at_stage, status), count in self.reported.items():
            if m == msg_id and at_stage is None:  # a device's own click, reported without stage
                organic += count
            elif m == msg_id and at_stage is not None:
                stages[at_stage][status] += count
        return {
            "msg_id": msg_id,
            "stages": {str(k): v for k, v in sorted(stages.items())},
            "clicked_on_their_own": organic,
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

    @app.get("/v1/truth")
    async def truth() -> dict[str, Any]:
        """The behaviour this simulator plays: what `relance demo` compares a report with."""
        return behaviour.model_dump()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
