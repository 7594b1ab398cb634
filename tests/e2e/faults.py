"""Helpers of the fault tests (tests/e2e/test_faults_*.py): a fresh ledger database on the
session's PostgreSQL, counts at the simulated devices, and polling the API."""

import asyncio
import uuid

import httpx
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from relance.db import Push
from tests.e2e.conftest import Stack


def fresh_database(postgres_url: str) -> str:
    """A new, empty database in the session's PostgreSQL cluster: each test its own ledger."""
    import psycopg

    url = make_url(postgres_url)
    name = f"faults_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.set(database=name).render_as_string(hide_password=False)


async def register(stack: Stack, devices: list[str], tag: str) -> None:
    async with stack.api() as api:
        for i in range(0, len(devices), 5000):
            chunk = [{"registration_id": r, "tags": [tag]} for r in devices[i : i + 5000]]
            response = await api.post("/v4/devices", json={"devices": chunk})
            assert response.status_code == 200, response.text


async def received(stack: Stack, msg_id: str, stage: int = 0) -> dict[str, int]:
    """What the simulated devices counted for one stage: `received` and `repeats`."""
    async with stack.simulator() as sim:
        stages = (await sim.get(f"/v1/stats/{msg_id}")).json()["stages"]
    found = stages.get(str(stage), {})
    return {"received": int(found.get("received", 0)), "repeats": int(found.get("repeats", 0))}


async def per_device(stack: Stack, msg_id: str, stage: int = 0) -> dict[str, int]:
    """registration_id -> how many times it got the stage."""
    async with stack.simulator() as sim:
        rows = (await sim.get(f"/v1/messages/{msg_id}/{stage}")).json()
    return {m["registration_id"]: int(m["received"]) for m in rows}


async def state(stack: Stack, msg_id: str) -> str | None:
    try:
        async with stack.api() as api:
            response = await api.get(f"/v4/push/{msg_id}")
    except httpx.HTTPError:
        return None
    return str(response.json()["state"]) if response.status_code == 200 else None


def ledger_pushes(stack: Stack) -> dict[str, str]:
    """msg_id -> the journey state the ledger holds."""
    with Session(stack.engine) as session:
        return {p.msg_id: p.state for p in session.exec(select(Push))}


async def post_until_answered(
    stack: Stack, body: dict[str, object], path: str = "/v4/push"
) -> httpx.Response:
    """A well-behaved client: retries the same request until it gets an answer that is not a
    connection error or a 503."""
    while True:
        try:
            async with stack.api() as api:
                response = await api.post(path, json=body)
            if response.status_code != 503:
                return response
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
