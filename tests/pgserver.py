"""Throwaway PostgreSQL clusters for the tests.

``running_postgres(base_dir)`` runs initdb in a fresh directory, starts the server on a free
127.0.0.1 port (trust auth, fsync off, its unix socket in that directory), creates the database
``relance`` and yields an SQLAlchemy URL for it; on exit the server is stopped with
``pg_ctl stop -m immediate`` and the directory removed. initdb refuses to run as root, so as root
the cluster belongs to Debian's ``postgres`` system user and the server commands run through
``runuser`` (or ``setpriv``). ``postgres_available()`` says why none can start here, if so.
The server binaries are installed by ``scripts/ensure-postgres.sh``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "postgres"
DATABASE = "relance"
_TOOLS = ("initdb", "pg_ctl", "postgres")
_INITDB_FLAGS = ("-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
_SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def _bin_dir() -> Path | None:
    """The bin directory of the highest /usr/lib/postgresql/<version>, else the one on PATH."""

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in d.parent.name.split(".") if p.isdigit())

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    return next((d for d in candidates if all(os.access(d / t, os.X_OK) for t in _TOOLS)), None)


def _as_owner() -> list[str]:
    """Command prefix that runs a server command as the cluster owner."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", SUPERUSER, "--"]
    return ["setpriv", f"--reuid={SUPERUSER}", f"--regid={SUPERUSER}", "--init-groups", "--"]


def postgres_available() -> str | None:
    """None if a throwaway cluster can be started here, else the reason why not."""
    if _bin_dir() is None:
        return "no PostgreSQL server (initdb, pg_ctl, postgres): run scripts/ensure-postgres.sh"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return f"running as root but there is no {SUPERUSER!r} user to own the cluster"
        if not (shutil.which("runuser") or shutil.which("setpriv")):
            return "running as root but neither runuser nor setpriv is available"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_dir(base_dir: Path) -> Path:
    """A fresh directory the cluster owner can write, short enough for a unix socket path."""
    base_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="pg-", dir=base_dir))
    if len(str(root)) > 80:  # the socket path (root + "/.s.PGSQL.NNNNN") must fit in 107 bytes
        root.rmdir()
        root = Path(tempfile.mkdtemp(prefix="relance-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SUPERUSER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
        # base_dir may be below a directory the owner cannot traverse (pytest's tmp is 0700).
        if subprocess.run([*_as_owner(), "test", "-w", str(root)], cwd="/").returncode:
            root.rmdir()
            root = Path(tempfile.mkdtemp(prefix="relance-pg-"))
            os.chown(root, owner.pw_uid, owner.pw_gid)
    return root


class Cluster:
    """A throwaway cluster that a fault test can stop (as a crash does: ``-m immediate``) and
    start again on the same port and data directory."""

    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root, self.bin_dir = root, bin_dir
        self.data, self.log = root / "data", root / "postgres.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.port = 0
        self.running = False

    def run(self, tool: str, *args: str) -> None:
        cmd = [*_as_owner(), str(self.bin_dir / tool), *args]
        proc = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True)
        if proc.returncode:
            log = self.log
            server_log = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed:\n{proc.stdout}{proc.stderr}{server_log}")

    def start(self) -> None:
        self.run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log))
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        self.run("pg_ctl", "stop", "-m", mode, "-w", "-D", str(self.data))
        self.running = False


@contextlib.contextmanager
def postgres_cluster(base_dir: Path, durable: bool = False) -> Iterator[tuple[str, Cluster]]:
    """Start a throwaway cluster under ``base_dir``; yield its SQLAlchemy (psycopg 3) URL and
    the cluster (to stop and start it again).

    `durable`: commit as production PostgreSQL does (fsync, synchronous_commit on). A test
    that crashes the server needs it: with synchronous_commit off, an immediate stop loses the
    last acknowledged commits (e.g. deliveries marked `sending`), which no real deployment
    does, and relance would then rightly send those again."""
    if reason := postgres_available():
        raise RuntimeError(reason)
    bin_dir = _bin_dir()
    assert bin_dir is not None
    cluster = Cluster(_make_dir(Path(base_dir)), bin_dir)
    try:
        cluster.run("initdb", "-D", str(cluster.data), "-U", SUPERUSER, *_INITDB_FLAGS)
        cluster.port = _free_port()
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(
                _SETTINGS.format(port=cluster.port, sockets=str(cluster.root).replace("'", "''"))
            )
            if durable:  # the last setting wins
                conf.write("fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n")
        cluster.start()
        import psycopg  # the project's driver; imported here so importing this module is cheap

        with psycopg.connect(
            host="127.0.0.1", port=cluster.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        yield f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{cluster.port}/{DATABASE}", cluster
    finally:
        if cluster.running:
            with contextlib.suppress(Exception):
                cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(base_dir: Path) -> Iterator[str]:
    """Start a throwaway cluster under ``base_dir``; yield its SQLAlchemy (psycopg 3) URL."""
    with postgres_cluster(base_dir) as (url, _):
        yield url
