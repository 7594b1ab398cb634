"""Sends per second through EngageLabProvider against the local EngageLab fake, next to a raw
aiohttp loop at the same concurrency against the same fake, in one run.

    .venv/bin/python bench/bench_engagelab.py [--n 3000] [--concurrency 50] [--rounds 3]
"""

import argparse
import asyncio
import base64
import json
import multiprocessing
import sys
import time
from pathlib import Path

import aiohttp
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.providers.base import OutboundMessage  # noqa: E402
from activities.providers.engagelab import (  # noqa: E402
    EngageLabCredentials,
    EngageLabProvider,
    push_body,
)
from tests.providers.fakes.engagelab_fake import FakeEngageLab  # noqa: E402

APP_KEY, SECRET = "bench-app-key", "bench-master-secret"


def serve(pipe: "multiprocessing.connection.Connection") -> None:
    """The fake in its own process, so that it does not share the client's core."""

    async def main() -> None:
        fake = FakeEngageLab(APP_KEY, SECRET)
        pipe.send(await fake.start())
        await asyncio.Event().wait()

    asyncio.run(main())


def messages(n: int, run: str) -> list[OutboundMessage]:
    return [
        OutboundMessage(
            idempotency_key=f"{run}-{i}",
            msg_id="1732300000000123456",
            stage=0,
            registration_id=f"reg-{i}",
            platform="android",
            title="Promotion 618",
            alert="Flash sale: best sellers almost gone",
            extras={"newsid": i},
            time_to_live=60,
        )
        for i in range(n)
    ]


async def through_provider(url: str, batch: list[OutboundMessage], concurrency: int) -> float:
    credentials = EngageLabCredentials(app_key=APP_KEY, master_secret=SecretStr(SECRET))
    provider = EngageLabProvider(credentials, base_url=url, concurrency=concurrency)
    await provider.send(batch[:concurrency])  # warm the connections
    start = time.perf_counter()
    outcomes = await provider.send(batch[concurrency:])
    elapsed = time.perf_counter() - start
    await provider.aclose()
    assert all(o.ok for o in outcomes), "the fake refused a send"
    return len(outcomes) / elapsed


async def raw_aiohttp(url: str, batch: list[OutboundMessage], concurrency: int) -> float:
    credentials = EngageLabCredentials(app_key=APP_KEY, master_secret=SecretStr(SECRET))
    token = base64.b64encode(f"{APP_KEY}:{SECRET}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(m: OutboundMessage) -> int:
            async with slots:
                body = json.dumps(push_body(m, credentials)).encode()
                async with session.post(f"{url}/v4/push", data=body, headers=headers) as r:
                    await r.read()
                    return r.status

        await asyncio.gather(*(post(m) for m in batch[:concurrency]))
        start = time.perf_counter()
        statuses = await asyncio.gather(*(post(m) for m in batch[concurrency:]))
        elapsed = time.perf_counter() - start
    assert set(statuses) == {200}, "the fake refused a send"
    return len(statuses) / elapsed


async def bench(url: str, n: int, concurrency: int, rounds: int) -> None:
    """Alternate the two loops and keep each one's best round: neighbours on a shared machine
    slow single rounds down, never speed them up."""
    total = n + concurrency
    provider = raw = 0.0
    for r in range(rounds):
        provider = max(provider, await through_provider(url, messages(total, f"p{r}"), concurrency))
        raw = max(raw, await raw_aiohttp(url, messages(total, f"r{r}"), concurrency))
    print(f"engagelab: {n} sends, {concurrency} in flight, best of {rounds} rounds")
    print(f"  provider  {provider:8.0f} sends/s")
    print(f"  raw       {raw:8.0f} sends/s (aiohttp)")
    print(f"  ratio     {provider / raw:8.2f} (goal >= 0.8)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(theirs,))
    server.start()
    try:
        asyncio.run(bench(ours.recv(), args.n, args.concurrency, args.rounds))
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
