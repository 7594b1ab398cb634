"""Sends per second through ApnsProvider against the local fake APNs, next to a raw aiohttp loop
(HTTP/1.1, the baseline) and a raw HTTP/2 loop against the same fake, in the same run.

Run: .venv/bin/python bench/bench_apns.py [N] [IN_FLIGHT]
The fake runs in its own process, so that client and server each have a core."""

import asyncio
import json
import multiprocessing
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import jwt  # noqa: E402
from hpack import NeverIndexedHeaderTuple  # noqa: E402

from activities.providers.apns import ApnsCredentials, ApnsProvider  # noqa: E402
from activities.providers.apns_http2 import Http2Connection  # noqa: E402
from activities.providers.base import OutboundMessage  # noqa: E402
from tests.providers.fakes.apns_fake import FakeApns, new_p8_key, serving  # noqa: E402

TEAM, KEY_ID, TOPIC = "TEAM123456", "KEY1234567", "com.example.shop"
ROUNDS = 3


def run_fake(public_key: str, ready: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    async def serve_until_stopped() -> None:
        fake = FakeApns(TEAM, KEY_ID, public_key, TOPIC, http2_only=False)
        async with serving(fake) as (url, ca):
            ready.put((url, ca.cert_pem.bytes()))
            while not stop.is_set():
                await asyncio.sleep(0.1)

    asyncio.run(serve_until_stopped())


async def measure(n: int, run: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(sends per second, microseconds of this process's CPU per send)."""
    start, cpu = time.perf_counter(), time.process_time()
    await run()
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e6


async def bounded(n: int, in_flight: int, one: Callable[[int], Awaitable[int]]) -> None:
    gate = asyncio.Semaphore(in_flight)

    async def guarded(i: int) -> None:
        async with gate:
            assert await one(i) == 200

    await asyncio.gather(*(guarded(i) for i in range(n)))


async def bench(url: str, ca_file: str, private_key: str, n: int, in_flight: int) -> None:
    credentials = ApnsCredentials(team_id=TEAM, key_id=KEY_ID, private_key=private_key, topic=TOPIC)
    messages = [
        OutboundMessage(
            idempotency_key=f"bench:{i}",
            msg_id="bench",
            stage=0,
            registration_id=f"{i:064x}",
            platform="ios",
            title="Promotion 618",
            alert="Flash sale: best sellers almost gone",
            extras={"newsid": 321},
            time_to_live=3600,
        )  # fmt: skip
        for i in range(n)
    ]
    provider = ApnsProvider(credentials, url, verify=ca_file, max_in_flight=in_flight)

    async def through_provider() -> None:
        assert all(o.ok for o in await provider.send(messages))

    claims = {"iss": TEAM, "iat": int(time.time())}
    provider_token = jwt.encode(claims, private_key, "ES256", headers={"kid": KEY_ID})
    alert = {"title": "Promotion 618", "body": "Flash sale: best sellers almost gone"}
    body = json.dumps({"aps": {"alert": alert}, "newsid": 321}).encode()
    headers = {
        "authorization": f"bearer {provider_token}", "apns-topic": TOPIC,
        "apns-push-type": "alert", "apns-priority": "10",
    }  # fmt: skip
    tls = ssl.create_default_context(cafile=ca_file)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls, limit=in_flight))

    async def aiohttp_one(i: int) -> int:
        request_headers = {**headers, "apns-id": str(uuid.uuid4())}
        async with session.post(
            f"{url}/3/device/{i:064x}", data=body, headers=request_headers
        ) as r:
            await r.read()
            return r.status

    # The provider's HTTP/2 transport on a connection of its own, used bare.
    tls_h2 = ssl.create_default_context(cafile=ca_file)
    tls_h2.set_alpn_protocols(["h2"])
    address = urlsplit(url)
    _, h2_connection = await asyncio.get_running_loop().create_connection(
        lambda: Http2Connection(address.netloc), address.hostname, address.port, ssl=tls_h2
    )
    await h2_connection.settled

    async def h2_one(i: int) -> int:
        request_headers = [*headers.items(), NeverIndexedHeaderTuple("apns-id", str(uuid.uuid4()))]
        status, _, _ = await h2_connection.request(f"/3/device/{i:064x}", request_headers, body)
        return status

    runs: dict[str, list[tuple[float, float]]] = {"aiohttp": [], "h2": [], "provider": []}
    try:
        await bounded(200, in_flight, aiohttp_one)  # warm up: connections open, code paths hot
        await bounded(200, in_flight, h2_one)
        for _ in range(ROUNDS):  # interleaved, so a busy moment on the machine hits all three
            runs["aiohttp"].append(await measure(n, lambda: bounded(n, in_flight, aiohttp_one)))
            runs["h2"].append(await measure(n, lambda: bounded(n, in_flight, h2_one)))
            runs["provider"].append(await measure(n, through_provider))
    finally:
        await session.close()
        h2_connection.close()
        await provider.aclose()
    rate = {k: statistics.median(r for r, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    print(f"{n} sends, {in_flight} in flight, median of {ROUNDS} rounds, fake in its own process")
    labels = {"aiohttp": "raw aiohttp (HTTP/1.1)", "h2": "raw h2 loop (HTTP/2)"}
    for key, label in {**labels, "provider": "ApnsProvider (HTTP/2)"}.items():
        print(f"{label:23} {rate[key]:6.0f} sends/s, {cpu[key]:4.0f} us client CPU/send")
    print(
        f"provider/raw aiohttp = {rate['provider'] / rate['aiohttp']:.2f}   "
        f"provider/raw h2 = {rate['provider'] / rate['h2']:.2f}   "
        f"client CPU per send, aiohttp/provider = {cpu['aiohttp'] / cpu['provider']:.2f}"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    in_flight = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    private_key, public_key = new_p8_key()
    spawn = multiprocessing.get_context("spawn")
    ready, stop = spawn.Queue(), spawn.Event()
    server = spawn.Process(target=run_fake, args=(public_key, ready, stop), daemon=True)
    server.start()
    try:
        url, ca_pem = ready.get(timeout=60)
        with tempfile.NamedTemporaryFile(suffix=".pem") as ca_file:
            ca_file.write(ca_pem)
            ca_file.flush()
            asyncio.run(bench(url, ca_file.name, private_key, n, in_flight))
    finally:
        stop.set()
        server.join(10)


if __name__ == "__main__":
    main()
