"""Callback latency: from the API's acknowledgement of a status event to its arrival at a
healthy receiver, under a steady event rate (default 1,000 events/s for 60 s).

    .venv/bin/python bench/bench_callbacks.py [--rate 1000] [--seconds 60]

Runs the real stack (Temporal dev server, `relance api`, `relance worker`) on SQLite and a
receiver on loopback. The baseline in the same run is a plain loopback POST to the same
receiver: what the network and the receiver alone cost.

Cross-check: the worker's relance_callback_delivery_lag_seconds over the same events. It runs
from the API's receipt (before the ack) to the recorded delivery (after the POST) of each
batch's oldest event, so it reads somewhat above the per-event figure measured here."""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from relance.binaries import temporal_cli  # noqa: E402
from relance.ledger import event_key  # noqa: E402
from tests.e2e.conftest import relance_stack  # noqa: E402
from tests.e2e.receiver import Receiver  # noqa: E402
from tests.scrape import buckets, quantile, scrape  # noqa: E402
from tests.stack import eventually, free_port, serve  # noqa: E402
from workflows.push_journey import APP, MSG_ID, STATE  # noqa: E402

STATUSES = ("delivered", "displayed", "clicked")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


async def main(rate: int, seconds: int, batch: int) -> None:
    total = rate * seconds
    devices = [f"silent-bench-{i:06d}" for i in range(-(-total // len(STATUSES)))]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=[MSG_ID, APP, STATE],
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    receiver, port = Receiver(), free_port()
    arrived: dict[str, float] = {}
    acked: dict[str, float] = {}
    lag: dict[float, float] = {}
    try:
        async with serve(receiver.app(), port):  # type: ignore[arg-type]
            url = f"http://127.0.0.1:{port}/cb"
            with (
                tempfile.TemporaryDirectory() as tmp,
                relance_stack(env.client, Path(tmp), [], batch_size=500) as stack,
            ):
                async with stack.api() as api:
                    for i in range(0, len(devices), 5000):
                        await api.post(
                            "/v4/devices",
                            json={
                                "devices": [
                                    {"registration_id": rid, "tags": ["bench"]}
                                    for rid in devices[i : i + 5000]
                                ]
                            },
                        )
                    msg_id = (
                        await api.post(
                            "/v4/push",
                            json={
                                "to": {"tag": ["bench"]},
                                "body": {"notification": {"alert": "b"}},
                                "callback_url": [url],
                            },
                        )
                    ).json()["msg_id"]
                    print(f"push {msg_id} to {len(devices)} devices; waiting for the send")

                    async def sent() -> bool:
                        state = (await api.get(f"/v4/push/{msg_id}")).json()["state"]
                        return state == "completed" and len(receiver.event_ids()) >= len(devices)

                    await eventually(sent, timeout=600)
                    baseline = await _baseline(url)
                    lag_before = await _callback_lag(stack.worker_metrics_url)
                    events = [
                        {"msg_id": msg_id, "registration_id": rid, "status": s, "stage": 0}
                        for s in STATUSES
                        for rid in devices
                    ][:total]
                    print(f"posting {total} events at {rate}/s in batches of {batch}")
                    began = time.monotonic()
                    limit = asyncio.Semaphore(16)

                    async def post(chunk: list[dict[str, object]]) -> None:
                        async with limit:
                            response = await api.post("/v4/events", json={"events": chunk})
                            response.raise_for_status()
                            now = time.monotonic()
                            for e in chunk:
                                key = event_key(
                                    msg_id, str(e["registration_id"]), 0, str(e["status"])
                                )
                                acked[key] = now

                    tasks = []
                    for n, i in enumerate(range(0, total, batch)):
                        await asyncio.sleep(max(0.0, began + n * batch / rate - time.monotonic()))
                        tasks.append(asyncio.create_task(post(events[i : i + batch])))
                    await asyncio.gather(*tasks)
                    posting = time.monotonic() - began
                    await eventually(
                        lambda: set(acked) <= _arrivals(receiver, arrived), timeout=300
                    )
                    await asyncio.sleep(1)  # the last batches' deliveries recorded
                    lag_after = await _callback_lag(stack.worker_metrics_url)
                    lag = {le: n - lag_before.get(le, 0.0) for le, n in lag_after.items()}
    finally:
        await env.shutdown()
    latencies = [arrived[k] - acked[k] for k in acked]
    start = min(acked.values())
    windows: dict[int, list[float]] = {}
    for k, at in acked.items():
        windows.setdefault(int((at - start) // 10), []).append(arrived[k] - at)
    print(
        "p99 per 10 s window (ms):",
        [round(pct(w, 0.99) * 1000) for _, w in sorted(windows.items())],
    )
    print(f"achieved rate: {total / posting:.0f} events/s over {posting:.1f} s")
    print(
        f"ack -> arrival: p50 {pct(latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {pct(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    if lag:  # the cross-check: what the worker's metrics say, from the API's receipt
        p50, p99 = quantile(0.5, lag) or 0.0, quantile(0.99, lag) or 0.0
        print(
            f"relance_callback_delivery_lag_seconds (each batch's oldest event, "
            f"{lag[float('inf')]:.0f} batches): p50 ~{p50 * 1000:.0f} ms, p99 ~{p99 * 1000:.0f} ms"
        )
    print(
        f"baseline loopback POST: p50 {pct(baseline, 0.5) * 1000:.1f} ms, "
        f"p99 {pct(baseline, 0.99) * 1000:.1f} ms"
    )


async def _callback_lag(url: str) -> dict[float, float]:
    async with httpx.AsyncClient() as client:
        return buckets(await scrape(client, url), "relance_callback_delivery_lag_seconds")


def _arrivals(receiver: Receiver, arrived: dict[str, float]) -> set[str]:
    for delivery in receiver.deliveries:
        for row in delivery.rows:
            arrived.setdefault(row["event_id"], delivery.at)
    return set(arrived)


async def _baseline(url: str, n: int = 500) -> list[float]:
    out = []
    async with httpx.AsyncClient() as client:
        for _ in range(n):
            start = time.monotonic()
            await client.post(url, json={"total": 0, "rows": []})
            out.append(time.monotonic() - start)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.seconds, args.batch))
