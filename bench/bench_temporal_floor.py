"""Temporal's own CPU per journey, by what the journey asks of it: the floor under any push.

    .venv/bin/python bench/bench_temporal_floor.py [--workflows 400] [--temporal-pragmas wal]

One dev server (the one `relance dev` runs, same pragmas and search attributes), one
in-process worker, and N workflows started 20 at a time for each shape below, in the same run.
Each workflow ends in a 2 h timer, as a journey waiting for a click does; the figure is the
dev server's CPU (utime+stime from /proc) from the first start until it is idle again,
divided by N. Shapes:

- `peer`: the naive peer (bench/naive_peer_workflow.py): one regular activity, then the timer;
- `relance`: what a small relance push asks of Temporal today: three search attributes at
  the start, a patch marker, one local activity, one search-attribute upsert, the timer;
- `relance-eager`: the same, started with `request_eager_start` by a client whose process runs
  the worker (RELANCE_API_EAGER_START);
- `bare-eager`: the least a workflow can cost: eager start, no search attribute, the timer;
- `relance-delayed`: a push sent ahead (RELANCE_SEND_AHEAD): the three search attributes and a
  start delay of the trigger window, so no workflow task until it ends. Its figure is what
  Temporal does before the window ends; the journey's first workflow task comes after.

What it tells: with one workflow per push, the ratio of small pushes relance/peer cannot pass
(peer's total CPU per push) / (Temporal's CPU per relance workflow), even if relance's own
code cost nothing. The RATIO line gives the Temporal part of that bound.
"""

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness  # noqa: E402

from cli import temporal_dev_command  # noqa: E402

MSG = SearchAttributeKey.for_keyword("RelanceMsgId")
APP = SearchAttributeKey.for_keyword("RelanceApp")
STATE = SearchAttributeKey.for_keyword("RelanceState")
SHAPES = ("peer", "relance", "relance-eager", "bare-eager", "relance-delayed")


@activity.defn
async def send(token: str) -> str:
    return token


@workflow.defn(sandboxed=False)
class Shape:
    @workflow.run
    async def run(self, shape: str) -> None:
        if shape.startswith("relance"):
            workflow.patched("local-small-stages")
            await workflow.execute_local_activity(
                send, "t", start_to_close_timeout=timedelta(seconds=30)
            )
            workflow.upsert_search_attributes([STATE.value_set("waiting")])
        elif shape == "peer":
            await workflow.execute_activity(send, "t", start_to_close_timeout=timedelta(seconds=30))
        await workflow.sleep(timedelta(hours=2))


async def measure(client: Client, pid: int, shape: str, n: int) -> tuple[float, float]:
    """(Temporal's CPU ms per workflow, this process's: client and worker)."""
    gate = asyncio.Semaphore(20)

    async def start(i: int) -> None:
        async with gate:
            await client.start_workflow(
                Shape.run,
                shape,
                id=f"{shape}-{uuid.uuid4()}",
                task_queue="floor",
                request_eager_start=shape.endswith("-eager"),
                start_delay=timedelta(hours=2) if shape.endswith("-delayed") else None,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(MSG, str(i)),
                        SearchAttributePair(APP, "app"),
                        SearchAttributePair(STATE, "sending"),
                    ]
                )
                if shape.startswith("relance")
                else None,
            )

    temporal0, own0 = harness.cpu_seconds(pid), time.process_time()
    await asyncio.gather(*(start(i) for i in range(n)))
    before = None
    while True:  # until every first workflow task is done: the server goes idle
        await asyncio.sleep(0.5)
        now = harness.cpu_seconds(pid)
        if before is not None and now - before < 0.02:
            break
        before = now
    return (
        1000 * (harness.cpu_seconds(pid) - temporal0) / n,
        1000 * (time.process_time() - own0) / n,
    )


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    port, ui = harness.free_port(), harness.free_port()
    cmd = temporal_dev_command(tmp / "t.db", port, ui, harness.PRAGMAS[args.temporal_pragmas])
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                client = await Client.connect(f"127.0.0.1:{port}")
                break
            except Exception:  # noqa: BLE001 — not up yet
                await asyncio.sleep(0.3)
        figures: dict[str, list[tuple[float, float]]] = {s: [] for s in SHAPES}
        async with Worker(client, task_queue="floor", workflows=[Shape], activities=[send]):
            for shape in SHAPES:  # warm up every path
                await measure(client, server.pid, shape, 20)
            for r in range(args.rounds):
                for shape in SHAPES if r % 2 == 0 else tuple(reversed(SHAPES)):
                    figures[shape].append(await measure(client, server.pid, shape, args.workflows))
    finally:
        server.terminate()
        server.wait()

    def temporal(shape: str) -> float:
        return sum(t for t, _ in figures[shape]) / len(figures[shape])

    def own(shape: str) -> float:
        return sum(o for _, o in figures[shape]) / len(figures[shape])

    plain, eager, delayed = (
        temporal("peer") / temporal("relance"),
        temporal("peer") / temporal("relance-eager"),
        temporal("peer") / temporal("relance-delayed"),
    )
    print(
        f"RATIO Temporal CPU per workflow, peer ÷ relance: {plain:.2f}"
        f" (with eager start: {eager:.2f}; sent ahead, up to the window's end: {delayed:.2f})"
    )
    print(
        f"{args.workflows} workflows per shape, {args.rounds} round(s), 20 starts at a time, "
        f"temporal pragmas {args.temporal_pragmas}"
    )
    print(f"machine: {harness.machine()}")
    for shape in SHAPES:
        print(
            f"  {shape:15s} Temporal {temporal(shape):5.1f} ms per workflow"
            f"  (rounds {[round(t, 1) for t, _ in figures[shape]]}),"
            f" worker and client {own(shape):5.1f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--temporal-pragmas", choices=sorted(harness.PRAGMAS), default="wal")
    asyncio.run(main(parser.parse_args()))
