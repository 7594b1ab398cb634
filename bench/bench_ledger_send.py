"""The ledger's CPU per send, alone: claim a page, record its outcomes, as a stage does.

    .venv/bin/python bench/bench_ledger_send.py [--recipients 20000] [--batch 100]
        [--db sqlite|postgresql] [--against /path/to/another/checkout] [--rounds 3]

No HTTP and no Temporal: one push to a tag of N devices is recorded and materialised, then
`ledger.claim_batch` and `ledger.record_outcomes` (every send a success) run page after page,
as `send_stage` calls them. The figure is this process's CPU per send; on PostgreSQL, the
server's own CPU per recipient is given beside it (every postgres process on the machine: run
it where no other cluster is busy), to claim and record and to materialise.

`--against DIR` runs the same measure on another checkout of relance (e.g. `git worktree add
/tmp/before <commit>`) in the same run, alternating the two, and prints the ratio first: how
a change to the ledger moved its cost per send.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def measure(recipients: int, batch: int, database_url: str) -> dict[str, float]:
    """In this process (whose sys.path holds the checkout to measure): µs of CPU per send."""
    from procstat import postgres_cpu_seconds

    from relance import ledger
    from relance.db import make_engine
    from relance.migrate import upgrade
    from relance.models import DeviceIn, PushRequest

    engine = make_engine(database_url)
    upgrade(engine)
    server = postgres_cpu_seconds if engine.dialect.name == "postgresql" else lambda: 0.0
    key, _ = ledger.create_app(engine, "bench")
    # As long as FCM's registration tokens (about 160 characters): the indexes carry them.
    ids = [f"{'f' * 150}:{i:08d}" for i in range(recipients)]
    for i in range(0, recipients, 1000):
        devices = [
            DeviceIn(registration_id=r, platform="android", tags=["all"]) for r in ids[i : i + 1000]
        ]
        ledger.upsert_devices(engine, key, devices)
    request = PushRequest.model_validate(
        {
            "from": "push",
            "to": {"tag": ["all"]},
            "body": {
                "platform": "android",
                "notification": {"android": {"title": "T", "alert": "A"}},
            },
        }
    )
    msg_id = ledger.accept_push(engine, key, request).push.msg_id
    pg0, cpu0 = server(), time.process_time()
    cursor = 0
    ledger.refresh_statistics(engine)  # as materialise_audience does
    while (last := ledger.materialise_page(engine, msg_id, cursor, 5000)[0]) is not None:
        cursor = last
        ledger.refresh_statistics(engine, ledger.GROWN_BY_AUDIENCE)
    ledger.finish_materialise(engine, msg_id)
    pg1, cpu1 = server(), time.process_time()

    claim = record = 0.0
    sent, cursor = 0, 0
    while True:
        t0 = time.process_time()
        page = ledger.claim_batch(engine, msg_id, 0, cursor, batch)
        t1 = time.process_time()
        if page.last_id is None:
            break
        cursor = page.last_id
        rows = [
            ledger.SendOutcomeRow(
                delivery_id=item.delivery_id,
                registration_id=item.registration_id,
                ok=True,
                title="T",
                alert="A",
            )
            for item in page.items
        ]
        ledger.record_outcomes(engine, msg_id, 0, rows)
        record += time.process_time() - t1
        claim += t1 - t0
        sent += len(page.items)
        if page.exhausted:
            break
    pg2 = server()
    size = {"table": 0.0, "indexes": 0.0}
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            table, indexes = conn.exec_driver_sql(
                "SELECT pg_table_size('delivery'), pg_indexes_size('delivery')"
            ).one()
        size = {"table": table / sent, "indexes": indexes / sent}
    engine.dispose()
    assert sent == recipients, f"{sent} sent of {recipients}"
    return {
        "claim": 1e6 * claim / sent,
        "record": 1e6 * record / sent,
        "materialise": 1e6 * (cpu1 - cpu0) / sent,
        "server_materialise": 1e6 * (pg1 - pg0) / sent,
        "server_send": 1e6 * (pg2 - pg1) / sent,
        "delivery_table_bytes": size["table"],
        "delivery_index_bytes": size["indexes"],
    }


SERVER = (
    "server_send",
    "server_materialise",
    "materialise",
    "delivery_table_bytes",
    "delivery_index_bytes",
)


def run_in(checkout: Path, args: argparse.Namespace, database_url: str) -> dict[str, float]:
    """`measure` in a fresh interpreter on `checkout`'s code (the venv's packages)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[2]);"
        "import bench_ledger_send as b;"
        "print(json.dumps(b.measure(int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(checkout),
            str(HERE / "bench"),
            str(args.recipients),
            str(args.batch),
            database_url,
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def postgres_database(base_url: str, n: int) -> str:
    """A new database `bench_n` on the running cluster of `base_url`."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE bench_{n}"))
    admin.dispose()
    return make_url(base_url).set(database=f"bench_{n}").render_as_string(hide_password=False)


def main(args: argparse.Namespace) -> None:
    sides = {"this": HERE}
    if args.against:
        sides["against"] = Path(args.against).resolve()
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ledger-")))
        base = None
        if args.db == "postgresql":
            sys.path.insert(0, str(HERE))
            from tests.pgserver import running_postgres

            base = stack.enter_context(running_postgres(tmp))
        n = 0
        for r in range(args.rounds):
            for name in sides if r % 2 == 0 else list(reversed(sides)):
                n += 1
                url = postgres_database(base, n) if base else f"sqlite:///{tmp / f'ledger-{n}.db'}"
                figures[name].append(run_in(sides[name], args, url))

    def total(name: str) -> list[float]:
        return [f["claim"] + f["record"] for f in figures[name]]

    if args.against:
        ratios = [a / t for a, t in zip(total("against"), total("this"), strict=True)]
        print(
            f"RATIO ledger CPU per send, {args.against} ÷ this checkout: "
            f"{statistics.median(ratios):.2f} (rounds {[round(x, 2) for x in ratios]})"
        )
    print(
        f"ledger per send: {args.recipients} recipients, pages of {args.batch}, {args.db}, "
        f"{args.rounds} round(s); machine: {os.cpu_count()} cores"
    )
    for name, rounds in figures.items():
        claim = statistics.median(f["claim"] for f in rounds)
        record = statistics.median(f["record"] for f in rounds)
        print(
            f"  {name:8s} {statistics.median(total(name)):6.0f} µs of CPU per send "
            f"(claim {claim:.0f}, record {record:.0f}; rounds {[round(t) for t in total(name)]})"
        )
        if args.db == "postgresql":
            server = {k: statistics.median(f[k] for f in rounds) for k in SERVER}
            print(
                f"           PostgreSQL's CPU per recipient: {server['server_send']:.0f} µs to "
                f"claim and record, {server['server_materialise']:.0f} µs to materialise "
                f"(this process: {server['materialise']:.0f} µs); `delivery` after the send, "
                f"per recipient: {server['delivery_table_bytes']:.0f} bytes of table, "
                f"{server['delivery_index_bytes']:.0f} of indexes"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--against", help="another checkout of relance, measured in the same run")
    parser.add_argument("--rounds", type=int, default=3)
    main(parser.parse_args())
