"""The ledger's disk full (SQLite on a 4 MB tmpfs mounted by the test, which needs root and
mount rights): writes are answered 503 in EngageLab's shape, never 500; what was acknowledged
before stays readable; once space is freed the same request succeeds."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from relance.simulator import Behaviour
from tests.stack import inprocess_stack


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)])
    if done.returncode:
        pytest.skip("this machine refuses to mount a tmpfs (no CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def fill(path: Path) -> None:
    with path.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


async def test_disk_full_answers_503_and_keeps_what_was_acknowledged(
    dev_server: WorkflowEnvironment, small_disk: Path, task_queue: str
) -> None:
    async with inprocess_stack(dev_server.client, small_disk, task_queue, Behaviour()) as stack:
        kept = [{"registration_id": f"kept-{i}", "tags": ["kept"]} for i in range(50)]
        assert (await stack.api.post("/v4/devices", json={"devices": kept})).status_code == 200
        fill(small_disk / "filler")
        refused = 0
        for i in range(20):  # SQLite's WAL may hold a few pages of room: write until it is out
            devices = [
                {"registration_id": f"late-{i}-{j}-{'x' * 100}", "tags": ["late"]}
                for j in range(1000)
            ]
            response = await stack.api.post("/v4/devices", json={"devices": devices})
            assert response.status_code in (200, 503), response.text
            if response.status_code == 503:
                refused += 1
                body = response.json()
                assert body["error"]["code"] == 21503
                assert body["error"]["message"].startswith("ledger: unavailable")
                break
        assert refused, "the disk never filled"
        for device in kept:
            got = await stack.api.get(f"/v4/devices/{device['registration_id']}")
            assert got.status_code == 200, got.text
        (small_disk / "filler").unlink()
        again = await stack.api.post("/v4/devices", json={"devices": devices})
        assert again.status_code == 200, again.text
