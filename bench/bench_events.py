"""Status events in: events committed per second through `POST /v4/events`, and the signals
the API sends each journey meanwhile.

    .venv/bin/python bench/bench_events.py --db postgresql [--recipients 20000] [--batch 250]
        [--clients 8] [--pushes 1] [--py-spy /tmp/api.txt]

Runs `relance api` as its own process, on SQLite or on a throwaway PostgreSQL cluster
(tests/pgserver.py: fsync and synchronous_commit off), against a Temporal dev server. The
pushes (N recipients each, stage 0 sent, one callback URL so the outbox is written too) are
put straight into the ledger; each journey is started on a task queue no worker polls, so the
coalesced signals the API sends land in its history and are counted there. Then C clients POST
batches of delivered, displayed and clicked events for distinct recipients, shuffled, so a
click often arrives before its delivery.

The baseline in the same run: the same client POSTing the same bodies to a FastAPI endpoint
that only validates them with the same model (the cost floor of HTTP + JSON + pydantic).
Committed events/s = acknowledged 200s x batch size / wall time. `--py-spy PATH` records the
API process during the relance phase (raw collapsed stacks) and prints its top frames."""

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402
from harness import free_port  # noqa: E402
from sqlalchemy import func  # noqa: E402
from sqlmodel import Session, col, select  # noqa: E402

STATUSES = ("delivered", "displayed", "clicked")


# ---- the floor: HTTP + JSON + the same pydantic model, nothing stored ----------------------


def floor_app() -> Any:
    from fastapi import FastAPI

    from relance.models import EventBatch

    app = FastAPI()

    @app.post("/v4/events")
    async def events(batch: EventBatch) -> dict[str, int]:
        return {"accepted": len(batch.events), "duplicates": 0}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "temporal": True}

    return app


# ---- the ledger: an app and pushes with N recipients each, stage 0 sent, in bulk -----------


def seed(url: str, pushes: int, recipients: int) -> tuple[str, str, list[str], list[str]]:
    from relance import ledger, migrate
    from relance.db import Delivery, Push, Recipient, make_engine
    from relance.ledger._base import chunks, insert_for

    engine = make_engine(url)
    migrate.upgrade(engine)
    key, secret = ledger.create_app(engine, "bench")
    rids = [f"bench-{i:07d}" for i in range(recipients)]
    msg_ids = [str(1_900_000_000_000_000_000 + p) for p in range(pushes)]
    now = datetime.now(UTC)
    with Session(engine) as session:
        for msg_id in msg_ids:
            session.add(
                Push(
                    msg_id=msg_id,
                    app_key=key,
                    request={
                        "from": "push",
                        "to": {"tag": ["bench"]},
                        "body": {"platform": "all", "notification": {"alert": "bench"}},
                        "custom_args": "bench",
                        "callback_url": ["https://callbacks.example/bench"],
                    },
                    condition="not_clicked",
                    stage_count=1,
                    state="waiting",
                    recipients=recipients,
                )
            )
        session.flush()
        for msg_id in msg_ids:
            for chunk in chunks(rids, 5000):
                session.execute(
                    insert_for(session)(Recipient),
                    [{"msg_id": msg_id, "registration_id": r} for r in chunk],
                )
                session.execute(
                    insert_for(session)(Delivery),
                    [
                        {
                            "msg_id": msg_id,
                            "stage": 0,
                            "registration_id": r,
                            "status": "sent",
                            "sent_at": now,
                        }
                        for r in chunk
                    ],
                )
        session.commit()
    if engine.dialect.name == "postgresql":
        # Statistics, as autovacuum gathers them within a minute of a bulk load: without them
        # the planner cannot tell the delivery indexes apart and may scan the whole push.
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    engine.dispose()
    return key, secret, msg_ids, rids


def check_ledger(url: str, msg_ids: list[str]) -> dict[str, Any]:
    from relance.db import CallbackRow, Push, StatusEvent, make_engine

    engine = make_engine(url)
    with Session(engine) as session:
        counters = {
            p.msg_id: (p.n_delivered, p.n_displayed, p.n_clicked, p.n_stopped, p.seq)
            for p in session.exec(select(Push).where(col(Push.msg_id).in_(msg_ids)))
        }
        events = session.execute(select(func.count()).select_from(StatusEvent)).scalar_one()
        rows = session.execute(select(func.count()).select_from(CallbackRow)).scalar_one()
    engine.dispose()
    return {"counters": counters, "events": events, "callback_rows": rows}


# ---- the load ----------------------------------------------------------------------------


def bodies(
    msg_ids: list[str], rids: list[str], batch: int, stageless: float, seed_: int
) -> list[bytes]:
    """Batches of one status for `batch` distinct recipients of one push, shuffled."""
    rnd = random.Random(seed_)
    at = datetime.now(UTC) - timedelta(minutes=5)
    out = []
    for msg_id in msg_ids:
        for status in STATUSES:
            for i in range(0, len(rids), batch):
                events = []
                for rid in rids[i : i + batch]:
                    e: dict[str, Any] = {
                        "msg_id": msg_id,
                        "registration_id": rid,
                        "status": status,
                        "at": at.isoformat(),
                    }
                    if rnd.random() >= stageless:
                        e["stage"] = 0
                    events.append(e)
                out.append(json.dumps({"events": events}).encode())
    rnd.shuffle(out)
    return out


async def post_all(
    base: str, auth: str, payloads: list[bytes], clients: int
) -> tuple[float, int, int, list[float], Counter[int]]:
    """POST every payload with `clients` concurrent workers; returns wall time, acknowledged
    events, duplicates, per-request latencies and the status codes seen."""
    queue = list(reversed(payloads))
    latencies: list[float] = []
    codes: Counter[int] = Counter()
    accepted = duplicates = 0
    headers = {"authorization": auth, "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base, connector=connector) as http:

        async def worker() -> None:
            nonlocal accepted, duplicates
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                async with http.post("/v4/events", data=body, headers=headers) as resp:
                    answer = await resp.read()
                latencies.append(time.perf_counter() - t0)
                codes[resp.status] += 1
                if resp.status == 200:
                    got = json.loads(answer)
                    accepted += got["accepted"]
                    duplicates += got["duplicates"]

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return wall, accepted, duplicates, latencies, codes


async def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{base}: process exited with {proc.returncode}")
            try:
                async with http.get(f"{base}/healthz") as resp:
                    if resp.status == 200 and (await resp.json())["temporal"]:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{base} not healthy within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- signals, read back from each journey's history --------------------------------------


async def signals_of(client: Any, msg_id: str) -> list[datetime]:
    from temporalio.api.enums.v1 import EventType

    history = await client.get_workflow_handle(f"push-{msg_id}").fetch_history()
    return [
        e.event_time.ToDatetime()
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]


def max_per_second(times: list[datetime]) -> int:
    """The most signals any sliding one-second window holds."""
    ts = sorted(t.timestamp() for t in times)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while ts[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


# ---- py-spy ------------------------------------------------------------------------------


def summarise(raw: Path, top: int = 15) -> str:
    """Top frames of py-spy's raw (collapsed) output: by own samples and by inclusive ones."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] for f in stack.split(";")]
        samples = int(n)
        total += samples
        if "wait (threading.py" in stack or "select (selectors.py" in stack:
            idle = True
        else:
            idle = False
        own["(idle) " + frames[-1] if idle else frames[-1]] += samples
        for f in set(frames):
            incl[f] += samples
    lines = [f"{total} samples", "", "own (leaf frames):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top * 2)]
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.db == "postgresql":
            from tests.pgserver import running_postgres

            url = stack.enter_context(running_postgres(tmp / "pg"))
        else:
            url = f"sqlite:///{tmp / 'ledger.db'}"
        t0 = time.perf_counter()
        key, secret, msg_ids, rids = seed(url, args.pushes, args.recipients)
        print(
            f"seeded {args.pushes} push(es) x {len(rids)} recipients in "
            f"{time.perf_counter() - t0:.1f}s"
        )
        payloads = bodies(msg_ids, rids, args.batch, args.stageless, 1)
        n_events = len(payloads) * args.batch
        auth = "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()

        env = await harness.local_dev_server()
        try:
            for msg_id in msg_ids:  # no worker polls this queue: signals just land in history
                await env.client.start_workflow(
                    "PushJourney", {}, id=f"push-{msg_id}", task_queue="bench-no-worker"
                )
            environ = {
                **os.environ,
                "RELANCE_DATABASE_URL": url,
                "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
                "RELANCE_TASK_QUEUE": "bench-no-worker",
                "RELANCE_RATE_LIMIT_PER_SECOND": "0",  # the ceiling, not EngageLab's rate
            }
            if args.signal_interval is not None:
                environ["RELANCE_SIGNAL_INTERVAL_SECONDS"] = str(args.signal_interval)

            # The floor first, then relance: the same bodies, the same client.
            port = free_port()
            floor = subprocess.Popen(
                [sys.executable, __file__, "--serve-floor", str(port)], env=environ
            )
            try:
                await wait_healthy(f"http://127.0.0.1:{port}", floor)
                f_wall, f_acc, _, f_lat, f_codes = await post_all(  # three rounds: it is quick
                    f"http://127.0.0.1:{port}", auth, payloads * 3, args.clients
                )
            finally:
                stop(floor)

            port = free_port()
            api = subprocess.Popen(
                [str(ROOT / ".venv/bin/relance"), "api", "--port", str(port)], env=environ
            )
            spy = None
            try:
                await wait_healthy(f"http://127.0.0.1:{port}", api)
                if args.py_spy:
                    spy = subprocess.Popen(
                        [
                            str(ROOT / ".venv/bin/py-spy"),
                            "record",
                            "--pid",
                            str(api.pid),
                            "--format",
                            "raw",
                            "-o",
                            args.py_spy,
                            "--rate",
                            "200",
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                    )
                    await asyncio.sleep(1)
                r_wall, r_acc, r_dup, r_lat, r_codes = await post_all(
                    f"http://127.0.0.1:{port}", auth, payloads, args.clients
                )
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
                await asyncio.sleep(2.5)  # the last coalesced signals go out
                # A retried batch changes nothing.
                d_wall, d_acc, d_dup, _, _ = await post_all(
                    f"http://127.0.0.1:{port}", auth, payloads[:20], args.clients
                )
                await asyncio.sleep(1.5)
            finally:
                stop(api)
            sig = {m: await signals_of(env.client, m) for m in msg_ids}
        finally:
            await env.shutdown()
        state = check_ledger(url, msg_ids)

    f_rate = f_acc / f_wall
    r_rate = (r_acc + r_dup) / r_wall
    print()
    print(
        f"machine: {os.cpu_count()} cores (nproc), {args.db}, {args.pushes} push(es) x "
        f"{args.recipients} recipients, {len(payloads)} batches of {args.batch} "
        f"({n_events} events), {args.clients} clients"
    )
    print(f"relance / floor: {r_rate / f_rate:.3f}")
    for name, rate, wall, lat, codes in (
        ("floor  ", f_rate, f_wall, f_lat, f_codes),
        ("relance", r_rate, r_wall, r_lat, r_codes),
    ):
        q = statistics.quantiles(lat, n=100)
        print(
            f"{name}: {rate:8.0f} events/s committed  ({wall:.1f}s; per batch p50 "
            f"{1000 * q[49]:.0f} ms, p99 {1000 * q[98]:.0f} ms; HTTP {dict(codes)})"
        )
    print(
        f"relance: {r_acc} accepted, {r_dup} duplicates; "
        f"replaying 20 batches: {d_acc} accepted, {d_dup} duplicates"
    )
    for m, times in sig.items():
        ordered = sorted(times)
        gaps = [(b - a).total_seconds() for a, b in zip(ordered, ordered[1:], strict=False)]
        print(
            f"journey push-{m}: {len(times)} signals, at most {max_per_second(times)} in any "
            f"second, smallest gap {min(gaps, default=float('nan')):.3f}s"
        )
    want = (args.recipients,) * 4
    for m, c in state["counters"].items():
        ok = "ok" if c[:4] == want else f"WRONG, want {want}"
        print(f"push {m}: delivered/displayed/clicked/stopped {c[:4]} seq {c[4]} — {ok}")
    print(f"ledger: {state['events']} status events, {state['callback_rows']} callback rows")
    if args.py_spy:
        print()
        print(summarise(Path(args.py_spy)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--pushes", type=int, default=1)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--stageless", type=float, default=0.1, help="share of events sent without a stage"
    )
    parser.add_argument(
        "--signal-interval",
        type=float,
        default=None,
        help="RELANCE_SIGNAL_INTERVAL_SECONDS for the API (default: its own)",
    )
    parser.add_argument("--py-spy", default=None, help="record the API process to this file")
    parser.add_argument("--summarise", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor is not None:
        import uvicorn

        uvicorn.run(floor_app(), host="127.0.0.1", port=args.serve_floor, log_level="warning")
        return
    if args.summarise is not None:
        print(summarise(Path(args.summarise)))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
