"""The Temporal server SIGKILLed while journeys wait on their resend timers, then restarted on
the same SQLite file and port, with the API and the worker left running: every stage of every
journey reaches each (simulated) device exactly once, none early and none more than LATE_BOUND
seconds after the later of its planned time and the server's return; while the server is down
`POST /v4/push` answers 503 in EngageLab's shape and /healthz says `temporal: false`, and both
processes come back by themselves. On SQLite and on PostgreSQL ledgers.

Both kinds of journey wait through the outage: pushes to listed devices are sent ahead (the
default: a worker sent their stage 0, and Temporal holds their journeys' delayed starts), and a
push to a tag sends stage 0 from its journey, which then waits on a timer. A push that can be
sent ahead needs no Temporal to be accepted: during the outage it is answered 200, its stage 0
goes out, and the API's repair loop starts its journey once the server is back.

The Temporal server is the dev server as `relance dev` runs it (cli.temporal_dev_command): its
state (histories, timers) is in its SQLite file, so a timer due while it was down fires when it
is back. Durations are scaled down: resend windows of seconds, an outage of about 10 s (what
the API takes to refuse a push: its Temporal client retries the start for up to 10 s, then 503).

A push to a tag accepted during the outage: with a `request_id` it stays recorded (the 503
says "retry the same request"); the client that retries it after the outage gets the same
msg_id, and the one nobody retries is started by the API's journey repair loop (here every
0.5 s for pushes older than 2 s). Each is sent exactly once. Without a `request_id` nothing
is kept."""

import asyncio
import signal
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from cli import temporal_dev_command
from tests.e2e.conftest import Stack, relance_stack
from tests.e2e.faults import fresh_database, ledger_pushes, per_device, register, state
from tests.stack import eventually, free_port

DEVICES = [f"silent-tkill-{i}" for i in range(5)]
# Stage 0 now; the trigger window closes 4 s later (the server is killed within it); stage 1
# one second after that (due while the server is down), stage 2 twenty seconds after it (due
# after the server is back: the outage lasts the 503s' 10 s and a little more).
RESEND = {
    "trigger": {"condition": "not_clicked", "within": "4s"},
    "stages": [
        {"after": "1s", "notification": {"alert": "Still there?"}},
        {"after": "20s", "notification": {"alert": "Last call"}},
    ],
}
REPAIR = {
    "RELANCE_JOURNEY_REPAIR_INTERVAL_SECONDS": "0.5",
    "RELANCE_JOURNEY_REPAIR_AFTER_SECONDS": "2",
}
# How late a stage may reach its devices after the later of its planned time and the server's
# return. The worker's pollers retry a failed long poll with the SDK's fixed backoff (200 ms
# doubling, capped at 10 s, 20 % jitter: at most 12 s between tries, however long the outage),
# then the timer's workflow task and a 5-device send take about a second. So 13 s, whatever the
# outage; measured here 3 s after a 10 s outage (5 to 9 s after a 25 s one), and about 0.2 s for
# a stage due once the server is back.
LATE_BOUND = 13.0


class TemporalServer:
    """`temporal server start-dev` on a fixed port and SQLite file, as a process to kill."""

    def __init__(self, db_file: Path, log: Path) -> None:
        self.db_file, self.log = db_file, log
        self.port, self.ui_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False

    def start(self) -> None:
        """Start it; a restart keeps its ports. A free port can be taken between free_port()
        and the server's bind (a fresh clone's run once lost its UI port so, and the server
        exited "address already in use"): the first start tries new ports then, up to 3 times."""
        for attempt in range(3):
            cmd = temporal_dev_command(self.db_file, self.port, self.ui_port)
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.proc.poll() is None:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", self.port)) == 0:
                        self.started = True
                        return
                time.sleep(0.2)
            if self.started or self.proc.poll() is None or attempt == 2:
                break
            self.port, self.ui_port = free_port(), free_port()  # lost a port: new ones
        raise RuntimeError(f"the Temporal dev server did not listen on {self.port}: {self.log}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return fresh_database(request.getfixturevalue("postgres_url"))


def push_body(request_id: str | None = None, tag: bool = False) -> dict[str, Any]:
    """To the devices listed (sent ahead), or to their tag (stage 0 from the journey)."""
    body: dict[str, Any] = {
        "to": {"tag": ["tkill"]} if tag else {"registration_id": DEVICES},
        "body": {"notification": {"alert": "Hello"}},
        "resend": RESEND,
    }
    return body if request_id is None else {**body, "request_id": request_id}


async def healthz_temporal(stack: Stack) -> bool | None:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            return bool((await http.get(f"{stack.api_url}/healthz")).json()["temporal"])
    except httpx.HTTPError:
        return None


async def post(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    async with stack.api() as api:
        return await api.post("/v4/push", json=body)


async def arrivals(stack: Stack, msg_id: str, stage: int) -> list[float]:
    """When each device first got the stage (wall clock, at the simulator), all devices' or []."""
    rows = await _messages(stack, msg_id, stage)
    return sorted(r["received_at"] for r in rows) if len(rows) == len(DEVICES) else []


def times(accepted: httpx.Response) -> list[float]:
    """The push's planned stage times, from its accept."""
    return [datetime.fromisoformat(s).timestamp() for s in accepted.json()["schedule"]]


def ahead_rows(stack: Stack) -> list[str]:
    """The pushes whose stage 0 a worker has yet to finish sending ahead."""
    with stack.engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT msg_id FROM send_ahead"))]


async def all_in(stack: Stack, msg_ids: list[str], expected: str) -> bool:
    return all([await state(stack, m) == expected for m in msg_ids])


async def _messages(stack: Stack, msg_id: str, stage: int) -> list[dict[str, Any]]:
    async with stack.simulator() as sim:
        return list((await sim.get(f"/v1/messages/{msg_id}/{stage}")).json())


async def _connect(port: int, timeout: float = 60) -> Client:
    """A client once the server answers: its port opens before its frontend is healthy, and a
    connect in between fails ("Frontend is not healthy yet") on a slow machine."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_temporal_killed_while_journeys_wait_every_stage_fires_once_and_late_by_outage(
    tmp_path: Path, ledger_url: str | None
) -> None:
    server = TemporalServer(tmp_path / "temporal.db", tmp_path / "temporal.log")
    server.start()
    try:
        client = await _connect(server.port)
        with relance_stack(client, tmp_path, [], extra_env=REPAIR, database_url=ledger_url) as st:
            await run_the_outage(st, server)
    finally:
        server.stop()


async def run_the_outage(stack: Stack, server: TemporalServer) -> None:
    await register(stack, DEVICES, "tkill")
    planned: dict[str, list[float]] = {}
    async with stack.api() as api:
        for body in (push_body(), push_body(), push_body(), push_body(tag=True)):
            accepted = await api.post("/v4/push", json=body)
            assert accepted.status_code == 200, accepted.text
            planned[accepted.json()["msg_id"]] = times(accepted)
    journeys = list(planned)
    assert len(ahead_rows(stack)) <= 3  # the three listed pushes were sent ahead; not the tag's

    # All four sent stage 0 and wait: three on their delayed starts, the tag's journey on its
    # timer. The server is killed.
    async def stage0_everywhere() -> bool:
        return all([await arrivals(stack, m, 0) for m in journeys])

    await eventually(stage0_everywhere, timeout=20)
    await eventually(lambda: all_in(stack, journeys, "waiting"), timeout=5)
    assert time.time() < min(t[1] for t in planned.values()) - 1  # killed before any stage 1
    server.kill()
    down_at = time.time()

    # Down: pushes to a tag answer 503 in EngageLab's shape, /healthz says so, nothing is
    # sent. A push sent ahead is answered 200 and gets its stage 0.
    pushes_before = set(ledger_pushes(stack))
    started = time.monotonic()
    kept, retried, dropped, ahead = await asyncio.gather(
        post(stack, push_body("outage-nobody-retries", tag=True)),
        post(stack, push_body("outage-client-retries", tag=True)),
        post(stack, push_body(tag=True)),
        post(stack, push_body("outage-sent-ahead")),
    )
    took = time.monotonic() - started
    assert ahead.status_code == 200, ahead.text
    ahead_id = ahead.json()["msg_id"]
    planned_ahead = times(ahead)
    for answer in (kept, retried, dropped):
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == 21503, answer.text
        assert "retry the same request" in answer.json()["error"]["message"]
    assert took < 15, f"pushes took {took:.1f}s to be refused"  # the client's retries: 10 s
    assert await healthz_temporal(stack) is False
    # Those with a request_id stay recorded (a retry converges on them); the other is gone.
    outage_pushes = set(ledger_pushes(stack)) - pushes_before
    assert len(outage_pushes) == 3 and ahead_id in outage_pushes, outage_pushes
    await eventually(lambda: arrivals(stack, ahead_id, 0), timeout=10)  # stage 0, still down
    assert await state(stack, ahead_id) == "waiting"
    assert await healthz_temporal(stack) is False
    await asyncio.sleep(max(0.0, down_at + 6 - time.time()))  # an outage of at least 6 s
    for msg_id in [*journeys, ahead_id]:
        assert await _messages(stack, msg_id, 1) == [], "a stage was sent while Temporal was down"

    # Back on the same file and port; the API and the worker are not touched.
    server.start()
    back_at = time.time()
    for part in stack.parts.values():
        assert part.proc is not None and part.proc.poll() is None, f"{part.name} exited"
    await eventually(lambda: healthz_temporal(stack), timeout=15)

    async with stack.api() as api:
        again = await api.post("/v4/push", json=push_body("outage-client-retries", tag=True))
    assert again.status_code == 200, again.text
    retried_msg_id = again.json()["msg_id"]
    assert retried_msg_id in outage_pushes
    journeys += sorted(outage_pushes)

    await eventually(lambda: all_in(stack, journeys, "completed"), timeout=60)
    assert set(ledger_pushes(stack)) == set(journeys)  # nothing else was made
    for msg_id in journeys:
        for stage in range(3):
            assert await per_device(stack, msg_id, stage) == dict.fromkeys(DEVICES, 1), (
                msg_id,
                stage,
            )

    # The journeys that waited through the outage: stage 1 came due while the server was down,
    # stage 2 after it was back; each is on time, or late by the outage and LATE_BOUND at most.
    assert all(down_at < t[1] < back_at < t[2] for t in planned.values()), planned
    assert ahead_rows(stack) == []  # every stage 0 sent ahead is done
    lateness = {}
    for msg_id, schedule in {**planned, ahead_id: planned_ahead}.items():
        for stage, at in enumerate(schedule):
            got = await arrivals(stack, msg_id, stage)
            due = max(at, back_at) if at > down_at else at
            assert got[0] >= at - 0.5, f"{msg_id} stage {stage} early by {at - got[0]:.1f}s"
            lateness[(msg_id, stage)] = got[-1] - due
    assert max(lateness.values()) <= LATE_BOUND, lateness
