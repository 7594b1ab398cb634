"""Sends per second: WebPushProvider vs a raw aiohttp loop, against the same local push service.

    .venv/bin/python bench/bench_webpush.py [--n 3000] [--concurrency 50]

The fake push service runs in its own process (it verifies VAPID and decrypts every message,
which costs CPU that must not be taken from the clients being measured). The raw loop does
the work any Web Push sender must do per message (a fresh aes128gcm encryption); the
"transport only" line re-sends pre-encrypted bodies, to show what the encryption costs.
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import http_ece  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import (  # noqa: E402
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from activities.providers.base import OutboundMessage  # noqa: E402
from activities.providers.webpush import (  # noqa: E402
    VapidCredentials,
    WebPushProvider,
)
from tests.providers.fakes.webpush_fake import WebPushFake, unb64url  # noqa: E402


def serve_fake(application_server_key: str, n: int, conn) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        fake = WebPushFake(application_server_key=application_server_key)
        await fake.start()
        conn.send([fake.subscribe().to_json() for _ in range(n)])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        conn.send((sum(len(a) for a in fake.received.values()), fake.rejections))
        await fake.stop()

    asyncio.run(run())


def messages(subs: list[str], tag: str) -> list[OutboundMessage]:
    return [
        OutboundMessage(
            idempotency_key=f"{tag}-{i}",
            msg_id=f"bench-{tag}",
            stage=0,
            registration_id=sub,
            platform="web",
            title="Promotion 618",
            alert="Flash sale: best sellers almost gone",
            extras={"newsid": i},
            time_to_live=3600,
        )
        for i, sub in enumerate(subs)
    ]


async def timed(n: int, sending: Awaitable[None]) -> tuple[float, float]:
    """Sends per second, and the client's CPU microseconds per send (steadier on a busy box)."""
    wall, cpu = time.perf_counter(), time.process_time()
    await sending
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n * 1e6


async def via_provider(provider: WebPushProvider, batch: list[OutboundMessage]) -> None:
    outcomes = await provider.send(batch)
    assert all(o.ok for o in outcomes), next(o for o in outcomes if not o.ok)


def seal(m: OutboundMessage) -> tuple[str, bytes]:
    """What any Web Push sender does per message: read the subscription, encrypt to it."""
    sub = json.loads(m.registration_id)
    payload = json.dumps({"title": m.title, "body": m.alert, "data": m.extras}).encode()
    return sub["endpoint"], http_ece.encrypt(
        payload,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=unb64url(sub["keys"]["p256dh"]),
        auth_secret=unb64url(sub["keys"]["auth"]),
    )


async def via_raw_aiohttp(
    authorization: str,
    batch: list[OutboundMessage],
    concurrency: int,
    sealed: list[tuple[str, bytes]] | None = None,
) -> None:
    """The baseline: one session, a semaphore, seal (unless given sealed) and POST. No more."""
    headers = {"TTL": "3600", "Content-Encoding": "aes128gcm", "Authorization": authorization}
    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(i: int) -> None:
            endpoint, body = seal(batch[i]) if sealed is None else sealed[i]
            async with slots, session.post(endpoint, data=body, headers=headers) as r:
                await r.read()
                assert r.status == 201, r.status

        await asyncio.gather(*(post(i) for i in range(len(batch))))


async def main(n: int, concurrency: int, rounds: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    credentials = VapidCredentials(private_key=pem, subject="mailto:bench@relance.example")
    parent, child = mp.Pipe()
    server = mp.get_context("spawn").Process(
        target=serve_fake, args=(credentials.application_server_key(), n, child)
    )
    server.start()
    subs = parent.recv()
    origin = json.loads(subs[0])["endpoint"].rsplit("/push/", 1)[0]
    auth = credentials.signer().sign({"aud": origin, "sub": credentials.subject})["Authorization"]
    provider = WebPushProvider(credentials, max_in_flight=concurrency, require_https=False)
    runs: dict[str, list[tuple[float, float]]] = {"provider": [], "raw": [], "raw, pre-sealed": []}
    try:
        await via_provider(provider, messages(subs[:200], "warm-up"))
        for r in range(rounds):
            batch = messages(subs, f"r{r}")
            sealed = [seal(m) for m in batch]
            senders = {
                "provider": lambda b=batch: via_provider(provider, b),
                "raw": lambda b=batch: via_raw_aiohttp(auth, b, concurrency),
                "raw, pre-sealed": lambda b=batch, s=sealed: via_raw_aiohttp(
                    auth, b, concurrency, s
                ),
            }
            names = list(senders) if r % 2 == 0 else list(senders)[::-1]  # against drift
            for name in names:
                runs[name].append(await timed(n, senders[name]()))
    finally:
        await provider.aclose()
        parent.send("stop")
        received, rejections = parent.recv()
        server.join()
    print(
        f"web push: {n} messages x {rounds} rounds, {concurrency} in flight, {os.cpu_count()} CPUs"
    )
    for name, results in runs.items():
        rate, cpu = max(x[0] for x in results), statistics.median(x[1] for x in results)
        print(f"  {name:<16} {rate:7.0f} sends/s (best)  {cpu:5.0f} us client CPU/send (median)")
    ratios = [p[0] / q[0] for p, q in zip(runs["provider"], runs["raw"], strict=True)]
    print(f"  ratio provider/raw, per round: {' '.join(f'{x:.2f}' for x in ratios)}")
    print(f"  ratio provider/raw, median: {statistics.median(ratios):.2f}")
    print(f"  push service accepted {received}, rejections: {rejections or 'none'}")
    assert received == 200 + 3 * n * rounds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.concurrency, args.rounds))
