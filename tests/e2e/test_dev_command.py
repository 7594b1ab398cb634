"""`relance dev` (what `make dev` runs) starts the whole embedded stack, `relance demo` runs
the news case on it, Ctrl-C stops everything, and a second start finds the first's journeys."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from temporalio.client import Client

from tests.scrape import parse, value
from tests.stack import free_port

KEY, SECRET = "devtestapp", "dev-test-master-secret-0123456789"


def start_dev(cwd: Path, env: dict[str, str], ports: dict[str, int]) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "cli", "dev"]
    for name, port in ports.items():
        args += [f"--{name}-port", str(port)]
    # A file, not a pipe: nobody reads a pipe after start-up, and a full one blocks every part.
    log = cwd / "dev.log"
    starts = log.read_text().count("relance is up") if log.exists() else 0
    with log.open("a") as out:
        proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    deadline = time.monotonic() + 90
    while log.read_text().count("relance is up") == starts:
        assert proc.poll() is None, f"relance dev exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    return proc


def stop_dev(proc: subprocess.Popen[str], ports: dict[str, int], log: Path) -> None:
    """Ctrl-C: exit 0 within 10 s, the API and worker stopped before Temporal (so no gRPC
    "connection refused" from the worker), and nothing but quiet lines on the way out."""
    before = log.read_text()
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0, log.read_text()[len(before) :]
    assert time.monotonic() - started < 10
    tail = log.read_text()[len(before) :]
    noisy = [
        line
        for line in tail.splitlines()
        if re.search(r"WARNING|ERROR|Traceback|refused|Exception", line, re.I)
    ]
    assert noisy == [], tail
    stops = re.findall(r"relance dev: stopped (.+)", tail)
    assert stops == ["api, worker", "simulator", "temporal"], tail  # in this order, none killed
    for port in ports.values():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"


async def test_dev_demo_ctrl_c_and_restart_keeps_journeys(tmp_path: Path) -> None:
    ports = {
        "api": free_port(),
        "temporal": free_port(),
        "ui": free_port(),
        "simulator": free_port(),
        "worker-metrics": free_port(),
    }
    env = {
        **os.environ,
        "RELANCE_DEV_APP_KEY": KEY,
        "RELANCE_DEV_MASTER_SECRET": SECRET,
        "RELANCE_API_URL": f"http://127.0.0.1:{ports['api']}",
    }
    env.pop("RELANCE_DATABASE_URL", None)
    env.pop("RELANCE_SECRET_KEYS", None)  # relance dev makes its own on first start
    proc = start_dev(tmp_path, env, ports)
    up = (tmp_path / "dev.log").read_text()
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "cli", "demo", "--devices", "40"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert re.search(r"^\s+2\s+\d+", demo.stdout, re.M), demo.stdout  # stage 2 was sent
        msg_id = re.search(r"msg_id (\d+)", demo.stdout).group(1)  # type: ignore[union-attr]
        assert f"/workflows/push-{msg_id}" in demo.stdout
        # Quiet by default: a line per push and per stage, none per request or event batch.
        time.sleep(1)
        during = (tmp_path / "dev.log").read_text()[len(up) :]
        assert re.search(rf"push {msg_id} accepted: Push \d+… · 40 devices", during), during
        assert f"push {msg_id} stage 0 sent: 40 of 40" in during, during
        for stage in (1, 2):  # to whoever had not clicked
            assert re.search(rf"push {msg_id} stage {stage} sent: \d+ of \d+", during), during
        assert f"push {msg_id} completed: " in during, during
        assert "HTTP Request" not in during and "/v4/events" not in during, during
        assert len(during.splitlines()) < 15, during
        # The worker's metrics port: relance's sends and the Temporal SDK's own series.
        scrape = parse(httpx.get(f"http://127.0.0.1:{ports['worker-metrics']}/metrics").text)
        assert value(scrape, "relance_sends_total", provider="simulator", outcome="ok") >= 40
        assert value(scrape, "temporal_workflow_task_execution_latency_count") > 0
    finally:
        stop_dev(proc, ports, tmp_path / "dev.log")
    assert (tmp_path / ".relance" / "temporal.db").exists()
    keys = tmp_path / ".relance" / "secret-keys"
    assert keys.stat().st_mode & 0o777 == 0o600
    ledger_bytes = b"".join(p.read_bytes() for p in (tmp_path / ".relance").glob("relance.db*"))
    assert b"fernet:" in ledger_bytes and b"clear:" not in ledger_bytes

    proc = start_dev(tmp_path, env, ports)
    try:
        status = httpx.get(
            f"http://127.0.0.1:{ports['api']}/v4/push/{msg_id}", auth=(KEY, SECRET)
        ).json()
        assert status["state"] == "completed"
        client = await Client.connect(f"127.0.0.1:{ports['temporal']}")
        found = [w async for w in client.list_workflows(f'RelanceMsgId="{msg_id}"')]
        assert [w.id for w in found] == [f"push-{msg_id}"]
    finally:
        stop_dev(proc, ports, tmp_path / "dev.log")
