"""A million recipients in flat memory: one push to a tag of N devices (default 1,000,000) on
PostgreSQL runs stage 0 and one resend stage; the API's and the worker's RSS are sampled
throughout, and the fake FCM counts, per stage, messages and distinct devices.

    .venv/bin/python bench/bench_million.py --devices 1000000 --db postgresql

Goal (performance issue, goal 4): every device reaches the fake exactly once per stage, and
worker and API RSS stay under 300 MB throughout. This is a bench, not a test: it reports its
wall time. Nobody clicks, so the resend stage goes to every device again.

Its baseline in the same run is the raw aiohttp loop of bench_fanout.py over the first
100,000 devices' worth of messages, so that the send rate can be read as a ratio too."""

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from bench_fanout import raw_loop  # noqa: E402

LIMIT_MB = 300


async def stages(fcm: str, run_name: str) -> dict[str, dict[str, int]]:
    async with aiohttp.ClientSession() as http, http.get(f"{fcm}/runs/{run_name}/stages") as r:
        return await r.json()  # type: ignore[no-any-return]


def load_devices(database_url: str, app_key: str, n: int) -> None:
    """N android devices tagged "million", written by one INSERT ... SELECT on PostgreSQL (the
    bench measures the push, not registration: through `POST /v4/devices` a million devices
    take a quarter of an hour on this machine)."""
    from sqlalchemy import text

    from relance.db import make_engine

    engine = make_engine(database_url)
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO device (app_key, registration_id, platform, tags, attributes, valid,"
                " updated_at) SELECT :app, 'mil:' || lpad(g::text, 7, '0'), 'android',"
                " CAST('[\"million\"]' AS json), CAST('{}' AS json), true, now()"
                " FROM generate_series(0, :n - 1) AS g"
            ),
            {"app": app_key, "n": n},
        )
        db.execute(
            text(
                "INSERT INTO devicetag (app_key, tag, device_id)"
                " SELECT app_key, 'million', id FROM device WHERE app_key = :app"
            ),
            {"app": app_key},
        )
        db.execute(text("ANALYZE device; ANALYZE devicetag"))
    engine.dispose()


async def main(args: argparse.Namespace) -> None:
    n = args.devices
    began_all = time.monotonic()
    timeline: list[tuple[float, float, float, int, int]] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-million-")))
        if args.db == "postgresql":
            sys.path.insert(0, str(harness.ROOT))
            from tests.pgserver import running_postgres

            database_url = stack.enter_context(running_postgres(tmp))
        else:
            database_url = f"sqlite:///{tmp / 'ledger.db'}"
        run = harness.Run(tmp, stack)
        address = await harness.temporal(run, "wal")
        fcm = harness.fake_fcm(run)
        ours = await harness.relance(run, address, database_url, fcm, args.batch_size)
        run.sample_rss(["api", "worker"])
        async with ours.session() as http:
            began = time.monotonic()
            if args.db == "postgresql":
                await asyncio.to_thread(load_devices, database_url, ours.app_key, n)
            else:
                await harness.register(http, [f"mil:{i:07d}" for i in range(n)], ["million"])
            registered = time.monotonic() - began
            raw = await raw_loop(fcm, "raw1", min(n, 100_000))
            body = {
                "from": "push",
                "to": {"tag": ["million"]},
                "body": {
                    "platform": "android",
                    "notification": {"android": {"title": "Promotion 618", "alert": "Flash"}},
                },
                "resend": {
                    "trigger": {"condition": "not_clicked", "within": args.window},
                    "stages": [{"after": "1s", "notification": {"alert": "Last chance"}}],
                },
            }
            print(f"push to a tag of {n} devices", flush=True)
            cpu = run.cpu()
            began = time.monotonic()
            async with http.post("/v4/push", json=body) as response:
                assert response.status == 200, await response.text()
                msg_id = (await response.json())["msg_id"]
            post = time.monotonic() - began
            stage0_done: float | None = None
            deadline = began + args.timeout
            last_print = 0.0
            while True:
                got = await stages(fcm, "mil")
                s0 = got.get("0", {}).get("messages", 0)
                s1 = got.get("1", {}).get("messages", 0)
                now = time.monotonic()
                api, worker = run.rss("api"), run.rss("worker")
                timeline.append((now - began, api, worker, s0, s1))
                if stage0_done is None and s0 >= n:
                    stage0_done = now - began
                if s0 >= n and s1 >= n:
                    break
                if now > deadline:
                    raise RuntimeError(f"after {args.timeout}s: stage 0 {s0}, stage 1 {s1} of {n}")
                if now - last_print >= 30:
                    last_print = now
                    print(
                        f"  t={now - began:6.0f}s stage0 {s0:8d} stage1 {s1:8d} "
                        f"RSS api {api:.0f} MB worker {worker:.0f} MB",
                        flush=True,
                    )
                await asyncio.sleep(1)
            total = time.monotonic() - began
            used = {k: v - cpu.get(k, 0.0) for k, v in run.cpu().items()}
            await asyncio.sleep(2)  # anything sent twice would arrive now
            final = await stages(fcm, "mil")
            async with http.get(f"/v4/push/{msg_id}") as response:
                status: dict[str, Any] = await response.json()
            peaks = dict(run.peaks)
    assert stage0_done is not None
    rate = n / stage0_done
    print()
    print(f"RATIO relance/raw loop, stage 0 sends/s: {rate / raw:.2f}")
    print(
        f"a million recipients: one push to a tag of {n} devices, ledger {args.db}, "
        f"stage 0 and one resend"
    )
    print(f"machine: {harness.machine()}")
    for stage, c in sorted(final.items()):
        verdict = "exactly once" if c["devices"] == n and c["duplicates"] == 0 else "WRONG"
        print(
            f"  stage {stage}: {c['messages']} messages to {c['devices']} distinct devices, "
            f"{c['duplicates']} duplicates ({verdict})"
        )
    worst = max(peaks.values())
    print(
        "  RSS MB peak: "
        + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
        + f" (goal < {LIMIT_MB}: {'met' if worst < LIMIT_MB else 'MISSED'})"
    )
    print(
        f"  wall time: POST {post * 1000:.0f} ms; stage 0 at the fake after {stage0_done:.0f} s; "
        f"both stages after {total:.0f} s; whole bench {time.monotonic() - began_all:.0f} s"
    )
    print(f"  relance {rate:.0f} sends/s in stage 0 (POST to last arrival); raw {raw:.0f}/s")
    print(
        "  CPU ms per 1,000 sends: "
        + ", ".join(f"{k} {1e6 * v / (2 * n):.0f}" for k, v in used.items() if v >= 0.05)
    )
    print(f"  (loading {n} devices took {registered:.0f} s)")
    print(f"  journey state at the end: {status.get('state')}")
    print("  RSS timeline (s, api MB, worker MB, stage 0 sent, stage 1 sent), every ~60 s:")
    step = max(1, len(timeline) // 30)
    for t, api, worker, s0, s1 in timeline[::step] + timeline[-1:]:
        print(f"    {t:7.0f} {api:6.0f} {worker:6.0f} {s0:9d} {s1:9d}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--batch-size", type=int, default=100, help="RELANCE_SEND_BATCH_SIZE")
    parser.add_argument("--window", default="1m", help="the resend trigger's window")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    asyncio.run(main(parser.parse_args()))
