"""CPU time of processes from /proc, with no import of relance: bench_ledger_send.py measures
another checkout's ledger in the same run, and must not import this one's."""

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process from /proc; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL process on this machine (the bench's cluster is the only
    one): the live ones, and the backends that have exited (their postmaster's reaped
    children's time)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "postgres":
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        total += int(fields[11]) + int(fields[12])
        if fields[1] == "1" or Path(f"/proc/{fields[1]}/comm").read_text().strip() != "postgres":
            total += int(fields[13]) + int(fields[14])  # the postmaster: its reaped backends
    return total / tick
