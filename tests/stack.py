"""An in-process relance for workflow tests: the real API and the real simulator served over
HTTP by uvicorn on loopback, and a worker, all against a given Temporal client."""

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from temporalio.client import Client

import worker as worker_module
from api.main import create_app
from relance import ledger, migrate
from relance.db import make_engine
from relance.settings import Settings
from relance.simulator import Behaviour, Fleet, create_simulator_app, http_reporter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve(app: FastAPI, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@dataclass
class Stack:
    api: httpx.AsyncClient
    simulator: httpx.AsyncClient
    fleet: Fleet
    engine: Engine
    settings: Settings
    app_key: str
    master_secret: str = ""


@asynccontextmanager
async def inprocess_stack(
    client: Client,
    tmp_path: Path,
    task_queue: str,
    behaviour: Behaviour,
    provider_options: dict[str, dict[str, Any]] | None = None,
    **settings: Any,
) -> AsyncIterator[Stack]:
    """The API, worker and simulator in this process; `settings` override the Settings'."""
    api_port, sim_port = free_port(), free_port()
    overrides = settings
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        task_queue=task_queue,
        api_url=f"http://127.0.0.1:{api_port}",
        simulator_url=f"http://127.0.0.1:{sim_port}",
        signal_interval_seconds=0.05,
        # Send ahead only where a test asks for it: the time-skipping server does not hold a
        # delayed start's signals as the real one does (README "Send ahead").
        **({"send_batch_size": 4, "send_ahead": False} | overrides),
    )
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)  # as a deployment does: the API and worker refuse a bare ledger
    key, secret = ledger.create_app(engine, "test")
    sim_app = create_simulator_app(behaviour, http_reporter(settings.api_url, key, secret))
    async with (
        serve(create_app(settings, client=client), api_port),
        serve(sim_app, sim_port),
        worker_module.build_worker(client, settings, provider_options=provider_options),
        httpx.AsyncClient(base_url=settings.api_url, auth=(key, secret)) as api,
        httpx.AsyncClient(base_url=settings.simulator_url) as sim,
    ):
        yield Stack(api, sim, sim_app.state.fleet, engine, settings, key, secret)


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `check` (sync or async) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)
