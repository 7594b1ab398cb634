"""Fan-out: one push to a tag of N devices, until stage 0 has reached the provider; relance next
to a raw aiohttp loop (50 in flight) to the same fake FCM, in the same run.

    .venv/bin/python bench/bench_fanout.py --devices 20000 --db sqlite|postgresql \\
        --temporal-pragmas default|wal [--workers 2] [--shard-size 2500]

The raw loop runs before and after relance; the ratio is relance's sends/s over their mean.
relance's rate is N / (POST sent -> last arrival at the fake). Also: the POST's latency, the
delay to the first arrival, and the API's and the worker's RSS (peak, and after the send).
Goal: 100,000 devices by tag at >= 0.8x the raw loop, on SQLite and on PostgreSQL.

--workers N starts N `relance worker` processes on the queue (a stage of at least twice
--shard-size deliveries goes out as shards, one activity each, spread over them).

--profile DIR records the API and the worker with py-spy from the POST on (as
bench_small_pushes.py does; the send must last twice --profile-seconds)."""

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

IN_FLIGHT = 50


RAW_CPU: list[float] = []  # the raw loop's own CPU per send (µs), each run


async def raw_loop(fcm: str, run_name: str, n: int) -> float:
    """What the network and the fake alone allow: FCM-shaped JSON, 50 requests in flight."""
    cpu = time.process_time()
    url = f"{fcm}/v1/projects/{harness.PROJECT}/messages:send"
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(f"{fcm}/token", data={"grant_type": "jwt-bearer"}) as response:
            headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}

        async def sender() -> None:
            for i in todo:
                body = {
                    "message": {
                        "token": f"{run_name}:{i:07d}",
                        "notification": {"title": "Promotion 618", "body": "Flash sale"},
                        "android": {"ttl": "60s"},
                    }
                }
                async with http.post(url, json=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, response.status

        began = time.monotonic()
        await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    RAW_CPU.append(1e6 * (time.process_time() - cpu) / n)
    done = await harness.run_summary(fcm, run_name)
    return float(done["count"] / (done["last"] - began))


async def main(args: argparse.Namespace) -> None:
    n = args.devices
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fanout-")))
        if args.db == "postgresql":
            sys.path.insert(0, str(harness.ROOT))
            from tests.pgserver import running_postgres

            database_url = stack.enter_context(running_postgres(tmp))
        else:
            database_url = f"sqlite:///{tmp / 'ledger.db'}"
        run = harness.Run(tmp, stack, postgres=args.db == "postgresql")
        address = await harness.temporal(run, args.temporal_pragmas)
        fcm = harness.fake_fcm(run)
        shards = {"RELANCE_SEND_SHARD_SIZE": str(args.shard_size)}
        if args.shard_slots:
            shards["RELANCE_SEND_SHARD_SLOTS"] = str(args.shard_slots)
        ours = await harness.relance(
            run, address, database_url, fcm, args.batch_size, args.workers, shards
        )
        async with ours.session() as http:
            began = time.monotonic()
            await harness.register(http, [f"fan:{i:07d}" for i in range(n)], ["fanout"])
            registered = time.monotonic() - began
            await raw_loop(fcm, "warm", 2000)
            raw_before = await raw_loop(fcm, "raw1", n)
            run.sample_rss(["api", "worker"])
            body = {
                "from": "push",
                "to": {"tag": ["fanout"]},
                "body": {
                    "platform": "android",
                    "notification": {"android": {"title": "Promotion 618", "alert": "Flash"}},
                },
                "resend": {
                    "trigger": {"condition": "not_clicked", "within": "2h"},
                    "stages": [{"after": "1s", "notification": {"alert": "Last chance"}}],
                },
            }
            print(f"push to a tag of {n} devices", flush=True)
            spying = None
            if args.profile:
                spying = asyncio.create_task(
                    harness.py_spy(run, args.profile, args.profile_seconds)
                )
            cpu = run.cpu()
            began = time.monotonic()
            async with http.post("/v4/push", json=body) as response:
                assert response.status == 200, await response.text()
            post = time.monotonic() - began
            await harness.wait_arrivals(fcm, "fan", n, timeout=args.timeout)
            done = await harness.run_summary(fcm, "fan")
            used = {k: v - cpu.get(k, 0.0) for k, v in run.cpu().items()}
            if spying:
                await spying
            after = {name: run.rss(name) for name in ("api", "worker")}
            peaks = dict(run.peaks)
            raw_after = await raw_loop(fcm, "raw2", n)
    relance = n / (done["last"] - began)
    raw = (raw_before + raw_after) / 2
    print()
    print(f"RATIO relance/raw loop, sends/s: {relance / raw:.2f} (goal >= 0.8)")
    print(
        f"fan-out: one push to a tag of {n} devices, ledger {args.db}, "
        f"temporal pragmas {args.temporal_pragmas}, send batch {args.batch_size}, "
        f"{args.workers} worker process(es), shard size {args.shard_size}, "
        f"shard slots per worker {args.shard_slots or 'default'}"
    )
    print(f"machine: {harness.machine()}")
    print(
        f"  relance   {relance:7.0f} sends/s (POST sent -> last of {done['count']} at the fake: "
        f"{done['last'] - began:.1f} s; first after {done['first'] - began:.2f} s)"
    )
    print(
        f"  raw loop  {raw:7.0f} sends/s ({IN_FLIGHT} in flight; before {raw_before:.0f}, "
        f"after {raw_after:.0f}); its own CPU {sum(RAW_CPU[-2:]) / 2:.0f} ms per 1,000 sends"
    )
    print(f"  POST /v4/push: {post * 1000:.0f} ms")
    print(
        "  CPU ms per 1,000 sends: "
        + ", ".join(f"{k} {1e6 * v / n:.0f}" for k, v in used.items() if v >= 0.05)
        + f"; cores busy {sum(used.values()) / (done['last'] - began):.2f} of 2"
    )
    print(
        "  RSS MB peak: "
        + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
        + "; after the send: "
        + ", ".join(f"{k} {v:.0f}" for k, v in after.items())
    )
    print(f"  (registering {n} devices took {registered:.1f} s: {n / registered:.0f}/s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--temporal-pragmas", choices=sorted(harness.PRAGMAS), default="wal")
    parser.add_argument("--batch-size", type=int, default=100, help="RELANCE_SEND_BATCH_SIZE")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--workers", type=int, default=1, help="relance worker processes")
    parser.add_argument(
        "--shard-size", type=int, default=10_000, help="RELANCE_SEND_SHARD_SIZE (0: no shards)"
    )
    parser.add_argument(
        "--shard-slots", type=int, help="RELANCE_SEND_SHARD_SLOTS (unset: relance's default, 2)"
    )
    parser.add_argument("--profile", type=Path, help="record py-spy raw profiles into this dir")
    parser.add_argument("--profile-seconds", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
