"""schemathesis fuzzes every operation of the published OpenAPI document (routes added later
included) against the real API over HTTP, with the real worker, simulator and Temporal dev
server behind it: no 5xx, every status code documented, every answer (errors in EngageLab's
shape included) conforming to its schema, 405 with `Allow`, and the stateful links between
operations (a push, then its status). Checks and their documented exceptions are in
schemathesis.toml. Bounded here; `make fuzz` runs it longer (RELANCE_FUZZ_EXAMPLES)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.e2e.conftest import relance_stack

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("RELANCE_FUZZ_EXAMPLES", "4"))


def test_schemathesis_finds_no_failure_on_any_operation(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    with relance_stack(
        dev_server.client,
        tmp_path,
        ["--p-fail", "0"],
        extra_env={"RELANCE_RATE_LIMIT_PER_SECOND": "0"},
    ) as stack:
        spec = httpx.get(f"{stack.api_url}/openapi.json").json()
        operations = sum(
            m in ("get", "put", "post", "delete", "patch")
            for item in spec["paths"].values()
            for m in item
        )
        st = Path(sys.executable).parent / "st"
        run = subprocess.run(
            [
                str(st),
                "run",
                f"{stack.api_url}/openapi.json",
                "--auth",
                f"{stack.app_key}:{stack.master_secret}",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                os.environ.get("RELANCE_FUZZ_SEED", "1"),
                "--request-timeout",
                "30",
                "--no-color",
            ],
            cwd=ROOT,  # schemathesis.toml
            capture_output=True,
            text=True,
            timeout=1800,
        )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert f"Selected: {operations}/{operations}" in out and f"Tested: {operations}" in out, out
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅ {phase}", out), out[-3000:]
    print(out[out.find("SUMMARY") :])  # shown with -s: `make fuzz` prints it
