"""Markdown tables from py-spy's raw (collapsed) stacks, as bench_small_pushes.py --profile
records them (`--threads`, one file with `--idle` and one without).

    .venv/bin/python bench/profile_summary.py /tmp/prof/api-idle.txt /tmp/prof/api-busy.txt

For each file: samples per thread, where the samples end (by library and by function), and
the project's own frames by inclusive share (a frame counts once per sample)."""

import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
OWN = ("relance/", "api/", "activities/", "workflows/", "worker.py")
WAITS = (  # leaf functions that mean "this thread waits" rather than "this thread computes"
    "EpollSelector.select",
    "select",
    "Condition.wait",
    "_worker",
    "Event.wait",
    "Thread.join",
    "Queue.get",
)


def parse(path: Path) -> list[tuple[str, list[tuple[str, str]], int]]:
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        thread, *frames = stack.split(";")
        parsed = []
        for f in frames:
            m = FRAME.match(f)
            parsed.append((m["func"], m["file"]) if m else (f, ""))
        name = thread.split(": ", 1)[-1]
        samples.append((re.sub(r"\d+$", "N", name), parsed, int(count)))
    return samples


def library(file: str) -> str:
    if file.startswith(OWN):
        return "relance (own code)"
    if "/" not in file:
        return file.removesuffix(".py") or "?"
    head = file.split("/", 1)[0]
    return head if head not in {"<frozen runpy>"} else "runpy"


def table(rows: list[tuple[str, int]], total: int, title: str, limit: int) -> list[str]:
    out = [f"| {title} | samples | share |", "|---|---:|---:|"]
    for name, n in rows[:limit]:
        out.append(f"| `{name}` | {n} | {100 * n / total:.1f}% |")
    return out


def summarise(path: Path, limit: int = 15) -> str:
    samples = parse(path)
    total = sum(n for _, _, n in samples) or 1
    threads: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for thread, frames, n in samples:
        threads[thread] += n
        if not frames:
            continue
        func, file = frames[-1]
        if func in WAITS:
            waiting[thread] += n
        libs[library(file)] += n
        leaves[f"{func} ({file})"] += n
        for f in {f"{fn} ({fl})" for fn, fl in frames if fl.startswith(OWN)}:
            own[f] += n
    out = [f"### {path.name}: {total} samples", ""]
    out.append("| thread | samples | share | of which waiting (leaf is a wait) |")
    out.append("|---|---:|---:|---:|")
    for t, n in threads.most_common(8):
        out.append(f"| {t} | {n} | {100 * n / total:.1f}% | {waiting[t]} |")
    out += ["", *table(libs.most_common(), total, "leaf in library", limit), ""]
    out += [*table(leaves.most_common(), total, "leaf function", limit), ""]
    out += [*table(own.most_common(), total, "own frame (inclusive)", limit), ""]
    return "\n".join(out)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summarise(Path(arg)))
