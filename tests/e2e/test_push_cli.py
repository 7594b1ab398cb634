"""`relance push send body.json --follow` in a terminal (a pseudo-terminal: rich draws its
progress bars as for a person) against the real API, worker, simulator and dev server: it shows
each stage's progress and exits 0 when the journey completes. `status` and `report` print
tables of the same push."""

import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.e2e.conftest import relance_stack

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run `python -m cli ...` with a pseudo-terminal as stdout and stderr; (exit code, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env={**env, "TERM": "xterm-256color", "COLUMNS": "100"},
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    out = b""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, out.decode(errors="replace")[-3000:]
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return proc.wait(timeout=10), out.decode(errors="replace")


def test_push_send_follow_shows_progress_and_exits_0_when_the_journey_completes(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    sim = ["--seed", "3", "--p-click", "0.5,0.5,0.5", "--min-delay-ms", "5", "--max-delay-ms", "50"]
    with relance_stack(dev_server.client, tmp_path, sim) as stack:
        env = {
            **os.environ,
            "RELANCE_API_URL": stack.api_url,
            "RELANCE_APP_KEY": stack.app_key,
            "RELANCE_MASTER_SECRET": stack.master_secret,
        }
        ids = [f"cli-{i:02d}" for i in range(20)]
        with httpx.Client(base_url=stack.api_url, auth=(stack.app_key, stack.master_secret)) as api:
            devices = {"devices": [{"registration_id": r, "platform": "android"} for r in ids]}
            api.post("/v4/devices", json=devices).raise_for_status()
        body = tmp_path / "body.json"
        body.write_text(
            json.dumps(
                {
                    "to": {"registration_id": ids},
                    "body": {"platform": "android", "notification": {"alert": "Top stories"}},
                    "resend": {
                        "trigger": {"condition": "not_clicked", "within": "2s"},
                        "stages": [{"after": "1s", "notification": {"title": "Still on"}}],
                    },
                }
            )
        )
        code, out = run_in_terminal(
            ["push", "send", str(body), "--follow", "--interval", "0.3"], env, 90
        )
        text = ANSI.sub("", out)
        assert code == 0, text
        msg_id = re.search(r"msg_id (\d+)", text).group(1)  # type: ignore[union-attr]
        assert "\x1b[" in out  # drawn for a terminal: colours and cursor moves
        assert "━" in text  # the progress bars
        assert re.search(r"stage 0 sent\s+━+\s+20/20", text), text
        assert re.search(r"stage 1 sent\s+━+\s+\d+/\d+", text), text
        assert "journey: waiting" in text and "journey: completed" in text, text

        with httpx.Client(base_url=stack.api_url, auth=(stack.app_key, stack.master_secret)) as api:
            funnel = api.get(f"/v4/push/{msg_id}").json()["funnel"]
        code, out = run_in_terminal(["push", "status", msg_id], env, 30)
        text = ANSI.sub("", out)
        assert code == 0, text
        assert f"push {msg_id}: completed" in text
        stage0 = funnel["stages"][0]
        assert re.search(rf"│ 0\s+│ 20\s+│ 20\s+│.*│ {stage0['clicked']}\s+│", text), text

        code, out = run_in_terminal(["push", "report", msg_id], env, 30)
        text = ANSI.sub("", out)
        assert code == 0, text
        # The report's tables: the funnel per stage with its rates.
        assert "funnel per stage" in text and f"push {msg_id}" in text, text
        assert re.search(r"│ 0\s+│", text), text

        code, out = run_in_terminal(["push", "status", "404404"], env, 30)
        assert code == 1 and "HTTP 404" in out
