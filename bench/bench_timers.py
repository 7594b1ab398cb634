"""Timers on time: N journeys all waiting on one dev server, their stage-1 sends due across a
window that opens after the last one was created; how late each stage 1 starts. Baseline in the
same run, on the same dev server: N plain Temporal workflows that only sleep until the same due
times (bench/timer_baseline.py), measured the same way.

    .venv/bin/python bench/bench_timers.py [--journeys 10000] [--window 120] [--lead 30]

Goal 6 of the performance issue: with 10,000 journeys waiting, stage sends start <= 2 s after
their scheduled time at p99.

How the journeys are made: each is a push of one device with a resend policy
`within: <w>s, stages: [{after: 1s}]`, written to the ledger with `ledger.accept_push` and
started with `api.journeys.start_journey`, many at once (what `POST /v4/push` does, without
its HTTP; this bench measures timers, not accepting). Stage 0 goes out at once (with
--send-ahead, from the workers' send-ahead loop, and each journey waits on its delayed start
until the window's end, then on a 1 s timer for stage 1, as small pushes do by default); `w`
is chosen per push so that stage 1 is due at a slot of [T, T + window], T = the start of creation +
N / --relance-rate + --lead: every journey is waiting when the first one fires (the run
prints by how much the last creation beat T). Slots are spread evenly and dealt in a random
order, so lateness is not tied to the order of creation.

Lateness, per journey (all the same machine's clock):
- workflow: StageSummary.sent_at - scheduled_at of stage 1 (from each journey's result): the
  workflow time of the task that starts stage 1's send. The baseline's: workflow.now() after
  the sleep - the due time. The RATIO is on this one: same measure on both sides.
- sent: the ledger's Delivery.sent_at of stage 1 (recorded once the fake FCM answered) -
  scheduled_at; the baseline's: when its trivial local activity started - the due time.
- the worker's relance_stage_lateness_seconds{stage="resend"} (the start of `send_stage`,
  wall clock), as a cross-check: its buckets bound the quantiles (no bucket at 2 s: 1, 2.5).
A sample of histories splits the workflow figure: the timer armed late (workflow time is the
task's start, the timer starts when the task completes), the server firing it late, and the
wait for a worker to pick the fired timer up.

The baseline runs first, then relance, each alone on the server (the other's worker idles)."""

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import pct  # noqa: E402
from sqlalchemy import text  # noqa: E402
from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402

from api.journeys import start_journey, workflow_id  # noqa: E402
from relance import ledger  # noqa: E402
from relance.db import make_engine  # noqa: E402
from relance.journey import JourneyResult, plan_for  # noqa: E402
from relance.models import PushRequest  # noqa: E402
from tests.scrape import buckets, parse, quantile  # noqa: E402

AFTER = 1.0  # stage 1's `after`; `within` makes up the rest of the wait
PLAIN_QUEUE = "plain-timers"
LATENESS = "relance_stage_lateness_seconds"


@dataclass
class Phase:
    name: str
    n: int
    window: float
    created_first: float = 0.0
    created_last: float = 0.0
    window_start: float = 0.0  # T, epoch seconds
    overrun: int = 0  # journeys created too late to be due at their slot
    ids: list[str] = field(default_factory=list)
    due: dict[str, float] = field(default_factory=dict)  # workflow id -> scheduled, epoch
    workflow: dict[str, float] = field(default_factory=dict)  # id -> lateness (workflow time)
    sent: dict[str, float] = field(default_factory=dict)  # id -> lateness (wall clock)
    drift: list[float] = field(default_factory=list)  # scheduled - intended slot
    problems: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU s over the window, per process
    parts: dict[str, list[float]] = field(default_factory=dict)  # history sample breakdown
    # The first due time minus the last creation (plain) or the last stage 0 sent (relance):
    # positive when all N were waiting as the first timer fired.
    all_waiting: float | None = None


def slots(n: int, start: float, window: float, seed: int) -> list[float]:
    """n due times evenly over [start, start + window], in a random order."""
    times = [start + window * k / max(n - 1, 1) for k in range(n)]
    random.Random(seed).shuffle(times)
    return times


async def create_all(
    n: int, concurrency: int, make: Callable[[int], Awaitable[None]], label: str
) -> tuple[float, float]:
    """Run make(0..n-1), `concurrency` at once; print progress; return (first, last) start."""
    todo = iter(range(n))
    done = 0
    began = time.time()

    async def client() -> None:
        nonlocal done
        for i in todo:
            await make(i)
            done += 1
            if done % 1000 == 0:
                print(
                    f"  {label}: {done} created, {done / (time.time() - began):.0f}/s", flush=True
                )

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return began, time.time()


async def running(client: Client, workflow_type: str) -> int:
    query = f"WorkflowType='{workflow_type}' AND ExecutionStatus='Running'"
    return (await client.count_workflows(query)).count


async def wait_window(
    run: harness.Run, client: Client, phase: Phase, workflow_type: str, timeout: float
) -> None:
    """Sleep to the window, report how many still run every 10 s, until none does."""
    await asyncio.sleep(max(0.0, phase.window_start - time.time() - 1))
    cpu = run.cpu()
    end = phase.window_start + phase.window
    deadline = end + timeout
    while True:
        for p in run.procs.values():
            p.check()
        left = await running(client, workflow_type)
        now = time.time()
        print(
            f"  {phase.name}: t={now - phase.window_start:+6.0f} s, {left} still running",
            flush=True,
        )
        if left == 0 and now > end:
            break
        if now > deadline:
            phase.problems.append(f"{left} still running {timeout:.0f} s after the window")
            break
        await asyncio.sleep(10 if now < end else 2)
    used = {k: v - cpu.get(k, 0.0) for k, v in run.cpu().items()}
    phase.cpu = {k: v for k, v in used.items() if v >= 0.05}
    phase.cpu["_seconds"] = time.time() - phase.window_start + 1


async def gather_limited(coros: list[Awaitable[Any]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


def ts(value: Any) -> float:
    """A proto Timestamp, or a datetime (naive: UTC, as the ledger stores it), as epoch s."""
    if hasattr(value, "ToDatetime"):
        return float(value.ToDatetime(tzinfo=UTC).timestamp())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


async def breakdown(client: Client, phase: Phase, sample: int, seed: int) -> None:
    """From a sample of histories: how late the last timer was armed, fired, and picked up."""
    ids = random.Random(seed).sample(phase.ids, min(sample, len(phase.ids)))
    parts: dict[str, list[float]] = {"armed": [], "fired": [], "picked up": [], "sum": []}

    async def one(wid: str) -> None:
        events = (await client.get_workflow_handle(wid).fetch_history()).events
        by_id = {e.event_id: e for e in events}
        fired = [e for e in events if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED]
        if not fired or wid not in phase.due:
            return
        f = fired[-1]
        s = by_id[f.timer_fired_event_attributes.started_event_id]
        timeout = s.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        armed = ts(s.event_time) + timeout.total_seconds()
        task = next(
            e
            for e in events
            if e.event_id > f.event_id
            and e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
        )
        due = phase.due[wid]
        parts["armed"].append(armed - due)
        parts["fired"].append(ts(f.event_time) - armed)
        parts["picked up"].append(ts(task.event_time) - ts(f.event_time))
        parts["sum"].append(ts(task.event_time) - due)

    await gather_limited([one(w) for w in ids], 16)
    phase.parts = parts


async def plain_phase(run: harness.Run, address: str, args: argparse.Namespace) -> Phase:
    from timer_baseline import PlainTimer

    client = await Client.connect(address)
    phase = Phase("plain", args.journeys, args.window)
    t0 = time.time()
    phase.window_start = t0 + args.journeys / args.plain_rate + args.lead
    due = slots(args.journeys, phase.window_start, args.window, args.seed)
    phase.ids = [f"plain-{i:06d}" for i in range(args.journeys)]

    async def make(i: int) -> None:
        if due[i] < time.time() + 1:
            phase.overrun += 1
        await client.start_workflow(PlainTimer.run, due[i], id=phase.ids[i], task_queue=PLAIN_QUEUE)

    print(f"plain: creating {args.journeys} timers", flush=True)
    phase.created_first, phase.created_last = await create_all(
        args.journeys, args.concurrency, make, "plain"
    )
    await wait_window(run, client, phase, "PlainTimer", args.drain_timeout)
    results = await gather_limited([client.get_workflow_handle(w).result() for w in phase.ids], 64)
    phase.all_waiting = min(due) - max(r[3] for r in results)
    for wid, (d, fired, started, _) in zip(phase.ids, results, strict=True):
        phase.due[wid] = d
        phase.workflow[wid] = fired - d
        phase.sent[wid] = started - d
    await breakdown(client, phase, args.history_sample, args.seed)
    return phase


def push_body(token: str, within: float) -> dict[str, Any]:
    return {
        "from": "push",
        "to": {"registration_id": [token]},
        "body": {
            "platform": "android",
            "notification": {"android": {"title": "Timers", "alert": "stage 0"}},
        },
        "request_id": token,
        "resend": {
            "trigger": {"condition": "not_clicked", "within": f"{within:.3f}s"},
            "stages": [{"after": f"{AFTER:g}s", "notification": {"alert": "stage 1"}}],
            # Complete after stage 1: by default a journey observes for its trigger window more.
            "observe": "0s",
        },
    }


async def relance_phase(
    run: harness.Run,
    address: str,
    database_url: str,
    app_key: str,
    metrics_url: str,
    fcm_url: str,
    args: argparse.Namespace,
) -> tuple[Phase, dict[float, float]]:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    engine = make_engine(database_url)
    phase = Phase("relance", args.journeys, args.window)
    t0 = time.time()
    phase.window_start = t0 + args.journeys / args.relance_rate + args.lead
    due = slots(args.journeys, phase.window_start, args.window, args.seed)
    intended: dict[str, float] = {}
    before = await scrape(metrics_url)
    # Creation waits while more than --backlog journeys have yet to send stage 0, so the worker
    # is not still busy with stage 0s when stage 1s fall due (and scheduled_at, counted from
    # each journey's first task, stays near its slot).
    created, arrived = 0, 0

    async def poll() -> None:
        nonlocal arrived
        while True:
            arrived = (await harness.run_summary(fcm_url, "timers"))["count"]
            await asyncio.sleep(0.25)

    poller = asyncio.create_task(poll())

    async def make(i: int) -> None:
        nonlocal created
        while created - arrived > args.backlog:
            await asyncio.sleep(0.05)
        created += 1
        token = f"timers:{i:06d}"
        within = due[i] - time.time() - AFTER
        if within < 1:
            phase.overrun += 1
            within = max(within, 0.001)
        request = PushRequest.model_validate(push_body(token, within))
        accepted = await asyncio.to_thread(
            ledger.accept_push, engine, app_key, request, args.send_ahead
        )
        msg_id = accepted.push.msg_id
        plan = plan_for(msg_id, app_key, request)
        if args.send_ahead:  # as the API plans it: the journey's start delayed to the window end
            plan.sent_ahead_at = accepted.push.created_at
        await start_journey(client, "relance", plan)
        intended[workflow_id(msg_id)] = due[i]

    sent = " sent ahead" if args.send_ahead else ""
    print(f"relance: creating {args.journeys} journeys{sent}", flush=True)
    phase.created_first, phase.created_last = await create_all(
        args.journeys, args.concurrency, make, "relance"
    )
    poller.cancel()
    phase.ids = list(intended)
    await wait_window(run, client, phase, "PushJourney", args.drain_timeout)
    after = await scrape(metrics_url)
    metric = {le: n - before.get(le, 0.0) for le, n in after.items()}

    async def result(wid: str) -> JourneyResult:
        handle = client.get_workflow_handle(wid, result_type=JourneyResult)
        return await handle.result()

    results = await gather_limited([result(w) for w in phase.ids], 64)
    for wid, res in zip(phase.ids, results, strict=True):
        stage1 = [s for s in res.stages if s.stage == 1]
        if not stage1 or stage1[0].sent != 1:
            phase.problems.append(f"{wid}: {res.state.value}, stages {res.stages}")
            continue
        s = stage1[0]
        phase.due[wid] = ts(s.scheduled_at)
        phase.workflow[wid] = ts(s.sent_at) - ts(s.scheduled_at)
        phase.drift.append(ts(s.scheduled_at) - intended[wid])
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT msg_id, sent_at FROM delivery WHERE stage = 1 AND sent_at IS NOT NULL")
        ).all()
    with engine.connect() as conn:
        last0 = conn.execute(text("SELECT max(sent_at) FROM delivery WHERE stage = 0")).scalar()
    if isinstance(last0, str):
        last0 = datetime.fromisoformat(last0)
    phase.all_waiting = min(phase.due.values()) - ts(last0) if last0 and phase.due else None
    for msg_id, sent_at in rows:
        wid = workflow_id(msg_id)
        if wid in phase.due:
            if isinstance(sent_at, str):
                sent_at = datetime.fromisoformat(sent_at)
            phase.sent[wid] = ts(sent_at) - phase.due[wid]
    engine.dispose()
    await breakdown(client, phase, args.history_sample, args.seed)
    return phase, metric


async def scrape(url: str) -> dict[float, float]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return buckets(parse(await response.text()), LATENESS, stage="resend")


def dist(values: list[float]) -> str:
    if not values:
        return "no data"
    ok = sum(v <= 2.0 for v in values) / len(values)
    return (
        f"p50 {pct(values, 0.5):6.3f}  p90 {pct(values, 0.9):6.3f}  p99 {pct(values, 0.99):6.3f}"
        f"  p99.9 {pct(values, 0.999):6.3f}  max {max(values):6.3f} s"
        f"  (<= 2 s: {100 * ok:.2f}%, n {len(values)})"
    )


def by_window(phase: Phase, values: dict[str, float], width: float = 20) -> str:
    """p99 of lateness per `width` s of due time: does it grow as the window goes on?"""
    groups: dict[int, list[float]] = {}
    for wid, late in values.items():
        groups.setdefault(int((phase.due[wid] - phase.window_start) // width), []).append(late)
    return ", ".join(
        f"{k * width:+.0f}s: {pct(v, 0.99):.2f}" for k, v in sorted(groups.items()) if v
    )


def report(phase: Phase, args: argparse.Namespace) -> None:
    made = phase.created_last - phase.created_first
    due = sorted(phase.due.values())
    span = due[-1] - due[0] if len(due) > 1 else float("nan")
    waiting = (
        f"all {phase.n} waiting {phase.all_waiting:.1f} s before the first was due"
        if phase.all_waiting is not None and phase.all_waiting > 0
        else f"NOT all waiting when the first was due ({phase.all_waiting})"
    )
    what = "stage 0 sent" if phase.name == "relance" else "first task"
    print(
        f"{phase.name}: {phase.n} created in {made:.0f} s ({phase.n / made:.0f}/s), {waiting} "
        f"(last {what} vs first due); due across {span:.0f} s ({len(due) / span:.0f} timers/s); "
        f"{phase.overrun} created too late for their slot"
    )
    print(f"  workflow lateness  {dist(list(phase.workflow.values()))}")
    label = "ledger sent_at   " if phase.name == "relance" else "activity start   "
    print(f"  {label}  {dist(list(phase.sent.values()))}")
    print(f"  p99 workflow lateness per 20 s of due time: {by_window(phase, phase.workflow)}")
    if phase.drift:
        print(
            f"  scheduled_at vs intended slot (stage 0's first task after creation): "
            f"p50 {pct(phase.drift, 0.5):.2f} s, max {max(phase.drift):.2f} s"
        )
    if phase.parts.get("sum"):
        shown = "; ".join(
            f"{k} p50 {statistics.median(v):.3f} p99 {pct(v, 0.99):.3f} max {max(v):.3f}"
            for k, v in phase.parts.items()
        )
        print(f"  history sample of {len(phase.parts['sum'])} (s after due): {shown}")
    seconds = phase.cpu.pop("_seconds", 0.0)
    if seconds:
        print(
            f"  CPU s while the window ran ({seconds:.0f} s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(phase.cpu.items()))
            + f"; cores busy {sum(phase.cpu.values()) / seconds:.2f}"
        )
    for p in phase.problems[:5]:
        print(f"  PROBLEM {p}")
    if len(phase.problems) > 5:
        print(f"  ... and {len(phase.problems) - 5} more problems")


async def main(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-timers-")))
        run = harness.Run(tmp, stack)
        address = await harness.temporal(run, args.temporal_pragmas)
        fcm = harness.fake_fcm(run)
        # The worker's own metrics port, free, on loopback (harness.relance passes os.environ).
        metrics_port = harness.free_port()
        os.environ["RELANCE_WORKER_METRICS_PORT"] = str(metrics_port)
        os.environ["RELANCE_WORKER_METRICS_HOST"] = "127.0.0.1"
        database_url = f"sqlite:///{tmp / 'ledger.db'}"
        ours = await harness.relance(run, address, database_url, fcm)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        await asyncio.to_thread(harness.wait_port, metrics_port)
        run.python(
            "plain_worker",
            [str(Path(__file__).with_name("timer_baseline.py")), "--address", address],
        )
        run.sample_rss(["worker", "plain_worker", "temporal"])
        plain = await plain_phase(run, address, args)
        ours_phase, metric = await relance_phase(
            run, address, database_url, ours.app_key, metrics_url, fcm, args
        )
        peaks = dict(run.peaks)
        logs = {n: p.log for n, p in run.procs.items()}
        errors = {
            n: sum("Traceback" in line for line in log.read_text(errors="replace").splitlines())
            for n, log in logs.items()
        }

    def p99(values: dict[str, float]) -> float:
        return pct(list(values.values()), 0.99) if values else float("nan")

    print()
    r_wf, p_wf = p99(ours_phase.workflow), p99(plain.workflow)
    r_sent, p_sent = p99(ours_phase.sent), p99(plain.sent)
    print(
        f"RATIO relance p99 lateness / plain timer p99 lateness: {r_wf / p_wf:.2f} "
        f"(workflow time: relance {r_wf:.3f} s / plain {p_wf:.3f} s); "
        f"wall clock, sent / activity start: {r_sent / p_sent:.2f} "
        f"({r_sent:.3f} s / {p_sent:.3f} s)"
    )
    worst = max(r_wf, r_sent)
    print(
        f"goal: p99 <= 2 s with {args.journeys} journeys waiting: "
        f"{'MET' if worst <= 2.0 else 'NOT MET'} (stage 1 p99: {r_wf:.3f} s to its workflow "
        f"task, {r_sent:.3f} s to the ledger's sent_at)"
    )
    print(
        f"timers: {args.journeys} per side, due across {args.window:.0f} s, window opened "
        f"~{args.lead:.0f} s after the estimated end of creation, temporal pragmas "
        f"{args.temporal_pragmas}, SQLite ledger"
    )
    print(f"machine: {harness.machine()}")
    report(plain, args)
    report(ours_phase, args)
    total = metric.get(float("inf"), 0.0)
    if total:
        le = {b: metric[b] / total for b in sorted(metric) if b in (0.5, 1.0, 2.5, 5.0)}
        q = {k: quantile(k, metric) for k in (0.5, 0.9, 0.99)}
        print(
            f'worker metric {LATENESS}{{stage="resend"}} over the relance phase: '
            f"{total:.0f} sends; "
            + ", ".join(f"<= {b:g} s {100 * v:.2f}%" for b, v in le.items())
            + "; histogram_quantile "
            + ", ".join(f"p{round(k * 100)} {v:.2f} s" for k, v in q.items() if v is not None)
        )
    else:
        print(f"worker metric {LATENESS}: no resend observed (metrics port unreachable?)")
    print("peak RSS MB: " + ", ".join(f"{n} {v:.0f}" for n, v in peaks.items()))
    if any(errors.values()):
        print("tracebacks in logs: " + ", ".join(f"{n} {c}" for n, c in errors.items() if c))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--journeys", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=120, help="s over which stage 1s are due")
    parser.add_argument("--lead", type=float, default=30, help="s from creation's end to T")
    parser.add_argument("--concurrency", type=int, default=32, help="creations at once")
    parser.add_argument(
        "--relance-rate", type=float, default=28, help="journeys/s assumed to place T"
    )
    parser.add_argument("--plain-rate", type=float, default=60, help="timers/s assumed")
    parser.add_argument(
        "--backlog", type=int, default=300, help="journeys created but not yet past stage 0"
    )
    parser.add_argument("--history-sample", type=int, default=200)
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument(
        "--send-ahead",
        action="store_true",
        help="the journeys sent ahead, as small pushes are by default: a worker sends stage 0, "
        "each journey waits on its delayed start (the window's end), then on stage 1's timer",
    )
    parser.add_argument("--temporal-pragmas", choices=sorted(harness.PRAGMAS), default="wal")
    asyncio.run(main(parser.parse_args()))
