"""`relance api` and `relance worker` refuse to start on a ledger that is behind and name the
command that fixes it; `relance db upgrade` (and its old name `db-init`) can run any number of
times. Real processes, as an operator would start them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from relance import migrate
from relance.db import make_engine
from tests.relance.test_migrations import create_previous_release_ledger
from tests.stack import free_port

ROOT = Path(__file__).parent.parent


def relance(*args: str, url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RELANCE_DATABASE_URL": url,
        # Nothing listens there: a worker that got past the ledger check would hang, not exit.
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("part", [["api", "--port", "0"], ["worker"]])
def test_a_part_refuses_an_empty_ledger_and_names_the_upgrade(
    part: list[str], tmp_path: Path
) -> None:
    started = relance(*part, url=f"sqlite:///{tmp_path / 'ledger.db'}")
    assert started.returncode != 0
    assert "relance db upgrade" in started.stderr, started.stderr


def test_upgrade_twice_then_the_api_accepts_the_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    pending = migrate.pending(make_engine(url))
    first = relance("db", "upgrade", url=url)
    assert first.returncode == 0, first.stderr
    applied = f"applied {len(pending)} revision(s) ({', '.join(pending)})"
    assert applied in first.stdout and f"now at {migrate.head()}" in first.stdout
    second = relance("db", "upgrade", url=url)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout
    assert relance("db-init", url=url).returncode == 0
    assert relance("db", "status", url=url).returncode == 0
    assert migrate.is_current(make_engine(url))
    assert relance("app", "create", "--name", "shop", url=url).returncode == 0


def test_a_previous_release_ledger_is_refused_until_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = make_engine(url)
    # What the last release before migrations made at startup (frozen: the models moved on).
    create_previous_release_ledger(engine)
    engine.dispose()
    refused = relance("api", "--port", "0", url=url)
    assert refused.returncode != 0
    assert "before schema migrations" in refused.stderr
    assert "relance db upgrade" in refused.stderr
    assert relance("db", "status", url=url).returncode == 1
    upgraded = relance("db", "upgrade", url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"stamped as the baseline {migrate.BASELINE}" in upgraded.stdout
