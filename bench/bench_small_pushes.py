"""Small pushes end to end: N pushes of one device each, C concurrent POSTs, time until stage 0
reaches the provider; relance next to the naive peer (bench/naive_peer.py), both on the same
Temporal dev server and the same fake FCM, in the same run.

    .venv/bin/python bench/bench_small_pushes.py --pushes 1000 --concurrency 20 \\
        --temporal-pragmas default|wal [--rounds 2] [--no-send-ahead] [--profile bench/profiles/raw]

Per side: pushes/s to the provider (N / from the first POST to the last arrival at the fake),
accepted/s (N / from the first POST to the last answer), the POST's latency, and the latency
from a POST to its message's arrival. Rounds alternate which side goes first; the ratio
relance/peer is the median of the rounds' ratios. Goal: ratio >= 2, POST p99 <= 100 ms.

The closed loop above keeps C POSTs open at all times, so it runs each side at its ceiling and
its POST latency is C / accept rate by Little's law: it says how fast a side accepts, not how
long a client waits at a given load. So a paced phase follows (--paced-pushes, 0 to skip):
POSTs at a fixed rate, open loop (Poisson arrivals from one seed, the same schedule for both
sides, never waiting for an answer before the next POST), by default at twice the peer's
measured provider rate, which is goal 1's load. Its latency counts from each POST's scheduled
time, so a stalled client loop cannot hide a slow answer.

--profile DIR records the API and the worker with py-spy during relance's first measured
phase (its paced phase with --profile-paced): --idle for --profile-seconds, then without
--idle as long again, and three `py-spy dump`s; bench/profile_summary.py turns the raw files
into markdown."""

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import pct  # noqa: E402

TITLE, ALERT, RESEND = "Promotion 618", "Flash sale: best sellers almost gone", "Last chance"


@dataclass
class Side:
    name: str
    url: str
    headers: dict[str, str]
    path: str

    def workflow_id(self, answer: dict[str, str]) -> str:
        return answer["workflow_id"] if self.name == "peer" else f"push-{answer['msg_id']}"

    def body(self, token: str) -> dict[str, object]:
        if self.name == "peer":
            return {"token": token, "title": TITLE, "alert": ALERT, "resend_alert": RESEND}
        return {  # the same journey: wait 2 h for a click, resend once to whoever did not
            "from": "push",
            "to": {"registration_id": [token]},
            "body": {
                "platform": "android",
                "notification": {"android": {"title": TITLE, "alert": ALERT}},
            },
            "request_id": token,
            "resend": {
                "trigger": {"condition": "not_clicked", "within": "2h"},
                "stages": [{"after": "1s", "notification": {"alert": RESEND}}],
            },
        }


@dataclass
class Result:
    pushes: int
    provider_rate: float
    accept_rate: float
    accept: list[float]
    stage0: list[float]
    errors: int
    elapsed: float
    cpu: dict[str, float]
    workflow_id: str

    def lines(self, name: str) -> list[str]:
        ms = [x * 1000 for x in self.accept]
        s0 = self.stage0
        return [
            f"  {name:8} {self.provider_rate:6.1f} pushes/s to the provider, "
            f"{self.accept_rate:6.1f} accepted/s, errors {self.errors}",
            f"           POST p50 {pct(ms, 0.5):6.0f} ms  p99 {pct(ms, 0.99):6.0f} ms  "
            f"max {max(ms):6.0f} ms",
            f"           POST -> provider p50 {pct(s0, 0.5):5.2f} s  p99 {pct(s0, 0.99):5.2f} s  "
            f"max {max(s0):5.2f} s",
            "           CPU ms per push: "
            + ", ".join(f"{k} {1000 * v / self.pushes:.1f}" for k, v in self.cpu.items())
            + f"; cores busy {sum(self.cpu.values()) / self.elapsed:.2f} of 2",
        ]


@dataclass
class Tally:
    """A phase's POSTs: each token's (start, answer) times, the errors, the last journey id."""

    side: Side
    sent: dict[str, tuple[float, float]] = field(default_factory=dict)
    errors: int = 0
    last_id: str = ""

    async def post(self, http: aiohttp.ClientSession, token: str, began: float) -> None:
        """POST one push; its latency counts from `began`."""
        async with http.post(self.side.path, json=self.side.body(token)) as response:
            answer = await response.read()
            if response.status != 200:
                self.errors += 1
                print(f"  {self.side.name}: {response.status} {answer[:300]!r}")
            else:
                self.last_id = self.side.workflow_id(json.loads(answer))
        self.sent[token] = (began, time.monotonic())


async def settle(
    run: harness.Run, fcm: str, run_name: str, cpu: dict[str, float], tally: Tally
) -> Result:
    """A phase's figures once every message answered 200 has reached the fake; `cpu` holds the
    processes' CPU when the phase began."""
    sent, errors, last_id = tally.sent, tally.errors, tally.last_id
    n = len(sent)
    await harness.wait_arrivals(fcm, run_name, n - errors)
    arrived = await harness.arrivals(fcm, run_name)
    used = {k: v - cpu.get(k, 0.0) for k, v in run.cpu().items()}
    first = min(b for b, _ in sent.values())
    elapsed = max(arrived.values()) - first
    return Result(
        n,
        len(arrived) / elapsed,
        n / (max(e for _, e in sent.values()) - first),
        [e - b for b, e in sent.values()],
        [arrived[t] - sent[t][0] for t in arrived],
        errors,
        elapsed,
        {k: v for k, v in used.items() if v >= 0.05},
        last_id,
    )


async def measure(
    run: harness.Run, side: Side, fcm: str, run_name: str, n: int, concurrency: int
) -> Result:
    cpu = run.cpu()
    todo = iter([f"{run_name}:{i:06d}" for i in range(n)])
    tally = Tally(side)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        side.url, headers=side.headers, connector=connector, timeout=timeout
    ) as http:

        async def client() -> None:
            for token in todo:
                await tally.post(http, token, time.monotonic())

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return await settle(run, fcm, run_name, cpu, tally)


async def measure_paced(
    run: harness.Run, side: Side, fcm: str, run_name: str, gaps: list[float]
) -> Result:
    """POSTs at the times that `gaps` set (open loop): each is sent on schedule whether or not
    earlier ones were answered; its latency counts from its scheduled time."""
    cpu = run.cpu()
    tokens = [f"{run_name}:{i:06d}" for i in range(len(gaps))]
    tally = Tally(side)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        side.url, headers=side.headers, connector=connector, timeout=timeout
    ) as http:
        tasks = []
        due = time.monotonic()
        for token, gap in zip(tokens, gaps, strict=True):
            due += gap
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(tally.post(http, token, due)))
        await asyncio.gather(*tasks)
    return await settle(run, fcm, run_name, cpu, tally)


async def history(address: str, workflow_id: str, delayed: bool = False) -> str:
    """What one push costs Temporal up to its wait: events by type in its history so far
    (`delayed`: a journey started delayed, sent ahead, has no timer to wait for)."""
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client

    try:
        client = await Client.connect(address)
        for _ in range(100):  # until the journey has reached its wait (a timer)
            events = (await client.get_workflow_handle(workflow_id).fetch_history()).events
            if delayed or any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in events):
                break
            await asyncio.sleep(0.2)
    except Exception as exc:  # a figure on the side: never lose the run's numbers to it
        return f"unavailable ({exc!r})"
    kinds = Counter(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events)
    shown = ", ".join(f"{k.lower()} {n}" for k, n in kinds.most_common())
    return f"{len(events)} events ({shown})"


async def main(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-small-")))
        run = harness.Run(tmp, stack)
        address = await harness.temporal(run, args.temporal_pragmas)
        fcm = harness.fake_fcm(run)
        ours = await harness.relance(
            run,
            address,
            f"sqlite:///{tmp / 'ledger.db'}",
            fcm,
            extra_env={"RELANCE_SEND_AHEAD": "1" if args.send_ahead else "0"},
        )
        peer_url = await harness.naive_peer(run, address, fcm)
        run.sample_rss(["api", "worker", "peer_api", "peer_worker"])
        auth = harness.basic_auth(ours.app_key, ours.master_secret)
        sides = {
            "peer": Side("peer", peer_url, {}, "/push"),
            "relance": Side("relance", ours.url, auth, "/v4/push"),
        }
        names = [f"r{r}{s}" for r in range(args.rounds) for s in ("relance",)] + ["warmrelance"]
        names += ["pacedrelance"] if args.paced_pushes else []
        async with ours.session() as http:
            ids = [
                f"{name}:{i:06d}"
                for name in names
                for i in range(args.paced_pushes if name == "pacedrelance" else args.pushes)
            ]
            await harness.register(http, ids, [])
        for name, side in sides.items():
            await measure(run, side, fcm, f"warm{name}", args.warmup, args.concurrency)
        results: dict[str, list[Result]] = {"peer": [], "relance": []}
        for r in range(args.rounds):
            order = ["peer", "relance"] if r % 2 == 0 else ["relance", "peer"]
            for name in order:
                spying = None
                if name == "relance" and args.profile and r == 0 and not args.profile_paced:
                    spying = asyncio.create_task(
                        harness.py_spy(run, args.profile, args.profile_seconds)
                    )
                print(f"round {r}: {name}, {args.pushes} pushes", flush=True)
                results[name].append(
                    await measure(
                        run, sides[name], fcm, f"r{r}{name}", args.pushes, args.concurrency
                    )
                )
                if spying:
                    await spying
        paced: dict[str, Result] = {}
        rate = args.paced_rate or 2 * statistics.median(p.provider_rate for p in results["peer"])
        if args.paced_pushes:
            rng = random.Random(618)
            gaps = [rng.expovariate(rate) for _ in range(args.paced_pushes)]
            for name in ("relance", "peer"):
                print(f"paced: {name}, {args.paced_pushes} pushes at {rate:.1f}/s", flush=True)
                spying = None
                if name == "relance" and args.profile and args.profile_paced:
                    spying = asyncio.create_task(
                        harness.py_spy(run, args.profile, args.profile_seconds)
                    )
                paced[name] = await measure_paced(run, sides[name], fcm, f"paced{name}", gaps)
                if spying:
                    await spying
        peaks = dict(run.peaks)
        journeys = {
            name: await history(
                address, results[name][0].workflow_id, name == "relance" and args.send_ahead
            )
            for name in sides
        }
    ratios = [
        o.provider_rate / p.provider_rate
        for o, p in zip(results["relance"], results["peer"], strict=True)
    ]
    print()
    print(
        f"RATIO relance/peer, pushes/s to the provider: {statistics.median(ratios):.2f} "
        f"(per round {[round(x, 2) for x in ratios]}; goal >= 2)"
    )
    print(
        f"small pushes, send ahead {'on' if args.send_ahead else 'off (RELANCE_SEND_AHEAD=0)'}: "
        f"{args.pushes} pushes of one device, {args.concurrency} concurrent POSTs, "
        f"temporal pragmas {args.temporal_pragmas}, {args.rounds} round(s)"
    )
    print(f"machine: {harness.machine()}")
    for name in ("relance", "peer"):
        for r, res in enumerate(results[name]):
            for line in res.lines(f"{name}#{r}"):
                print(line)
    if paced:
        print(
            f"paced, open loop: {args.paced_pushes} pushes at {rate:.1f}/s "
            "(Poisson arrivals, the same schedule for both; latency from each scheduled time)"
        )
        for name, res in paced.items():
            for line in res.lines(f"{name}"):
                print(line)
    for name, text in journeys.items():
        print(f"history of one {name} push, as it waits for a click: {text}")
    print("peak RSS MB: " + ", ".join(f"{n} {v:.0f}" for n, v in peaks.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--temporal-pragmas", choices=sorted(harness.PRAGMAS), default="wal")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument(
        "--send-ahead",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="relance with send ahead (the default; --no-send-ahead: RELANCE_SEND_AHEAD=0, the "
        "journey sends stage 0 itself)",
    )
    parser.add_argument(
        "--paced-pushes",
        type=int,
        default=600,
        help="pushes in the paced (open-loop) phase after the rounds; 0 skips it",
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=0.0,
        help="POSTs per second in the paced phase (default: twice the peer's provider rate)",
    )
    parser.add_argument("--profile", type=Path, help="record py-spy raw profiles into this dir")
    parser.add_argument("--profile-seconds", type=int, default=20)
    parser.add_argument(
        "--profile-paced",
        action="store_true",
        help="with --profile: record relance's paced phase instead of its first round",
    )
    asyncio.run(main(parser.parse_args()))
