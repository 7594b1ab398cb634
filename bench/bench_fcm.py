"""Sends per second through FcmProvider next to a raw aiohttp loop, against the same local FCM
(its own process), at the same concurrency, and the CPU each used per send (this process's
CPU time over the timed part). FcmProvider sends through activities/providers/http1.py; the
raw loop is what the same requests cost through aiohttp.
Run: .venv/bin/python bench/bench_fcm.py [N]"""

import asyncio
import multiprocessing
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.providers.base import OutboundMessage  # noqa: E402
from activities.providers.fcm import (  # noqa: E402
    JWT_BEARER,
    SCOPE,
    FcmCredentials,
    FcmProvider,
    fcm_message,
)
from tests.providers.fakes.fcm_fake import FakeFcm, new_service_account, running_fcm  # noqa: E402

PROJECT = "relance-bench"
CONCURRENCY = 50
ROUNDS = 7


def serve(email: str, public_key: str, conn: Connection) -> None:
    """The fake, in a process of its own so that it does not share the clients' event loop."""

    async def main() -> None:
        async with running_fcm(FakeFcm(PROJECT, email, public_key)) as fake:
            conn.send(fake.url)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(main())


def messages(n: int, run: str) -> list[OutboundMessage]:
    return [
        OutboundMessage(
            idempotency_key=f"{run}-{i}",
            msg_id=f"bench-{run}",
            stage=0,
            registration_id=f"{run}-device-{i}",
            platform="android",
            title="Promotion 618",
            alert="Flash sale: best sellers almost gone",
            extras={"newsid": i},
            time_to_live=60,
        )
        for i in range(n)
    ]


async def through_provider(
    creds: FcmCredentials, url: str, n: int, run: str
) -> tuple[float, float]:
    provider = FcmProvider(creds, url, max_in_flight=CONCURRENCY)
    try:
        await provider.send(messages(CONCURRENCY, f"warm-{run}"))  # token and connections
        batch = messages(n, run)
        started, cpu = time.perf_counter(), time.process_time()
        outcomes = await provider.send(batch)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await provider.aclose()
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]
    return n / elapsed, 1e6 * cpu / n


async def raw_aiohttp(info: dict[str, str], url: str, n: int, run: str) -> tuple[float, float]:
    send_url = f"{url}/v1/projects/{PROJECT}/messages:send"
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        now = int(time.time())
        claims = {"iss": info["client_email"], "scope": SCOPE, "aud": info["token_uri"]}
        assertion = jwt.encode(
            {**claims, "iat": now, "exp": now + 3600}, info["private_key"], "RS256"
        )
        form = {"grant_type": JWT_BEARER, "assertion": assertion}
        async with session.post(info["token_uri"], data=form) as response:
            token = (await response.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(m: OutboundMessage) -> None:
            body = {"message": fcm_message(m)}  # the same bytes on the wire as the provider
            async with slots, session.post(send_url, json=body, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status

        await asyncio.gather(*(one(m) for m in messages(CONCURRENCY, f"warm-raw-{run}")))
        batch = messages(n, f"raw-{run}")
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(m) for m in batch))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return n / elapsed, 1e6 * cpu / n


async def main(n: int) -> None:
    info, public_key = new_service_account(PROJECT)
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(info["client_email"], public_key, theirs), daemon=True
    )
    server.start()
    url = ours.recv()
    info["token_uri"] = f"{url}/token"
    creds = FcmCredentials.model_validate(info)
    provider_rates, raw_rates, provider_cpu, raw_cpu = [], [], [], []
    try:
        for r in range(ROUNDS):
            rate, cpu = await raw_aiohttp(info, url, n, f"r{r}")
            raw_rates.append(rate)
            raw_cpu.append(cpu)
            rate, cpu = await through_provider(creds, url, n, f"p{r}")
            provider_rates.append(rate)
            provider_cpu.append(cpu)
    finally:
        ours.send("stop")
        server.join(timeout=10)
    provider, raw = statistics.median(provider_rates), statistics.median(raw_rates)
    # Each round pairs the two loops back to back, so that load from elsewhere cancels out.
    ratio = statistics.median(p / r for p, r in zip(provider_rates, raw_rates, strict=True))
    cpu_ratio = statistics.median(p / r for p, r in zip(provider_cpu, raw_cpu, strict=True))
    print(f"RATIO FcmProvider/raw aiohttp loop, sends/s: {ratio:.2f} (median of per-round ratios)")
    print(f"  CPU per send, FcmProvider/raw loop: {cpu_ratio:.2f}")
    print(f"FCM, {n} messages per round, {CONCURRENCY} in flight, median of {ROUNDS} rounds")
    for name, rate, cpu in (
        ("FcmProvider", provider, provider_cpu),
        ("raw aiohttp loop", raw, raw_cpu),
    ):
        print(f"  {name:16} {rate:6.0f} sends/s, {statistics.median(cpu):4.0f} µs CPU/send")
    print(f"  rounds: provider {[round(x) for x in provider_rates]}")
    print(f"          raw      {[round(x) for x in raw_rates]}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
