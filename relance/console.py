"""What `relance push` shows in a terminal, with rich (tables, progress bars that redraw in
place, and plain text when the output is not a terminal): rendered from the API's JSON."""

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

TERMINAL = ("completed", "cancelled", "failed")


def terminal() -> Console:
    return Console(highlight=False)


def accepted(body: dict[str, Any]) -> str:
    times = ", ".join(str(t) for t in body.get("schedule", []))
    return f"msg_id [bold]{body['msg_id']}[/bold]; schedule: {times}"


def status_table(status: dict[str, Any]) -> Group:
    funnel = status["funnel"]
    head = f"push [bold]{status['msg_id']}[/bold]: {status['state']}"
    if status.get("next_stage") is not None:
        head += f", next stage {status['next_stage']} at {status.get('next_stage_at')}"
    if status.get("error"):
        head += f"\n[red]{status['error']}[/red]"
    table = Table("stage", "targeted", "sent", "failed", "skipped", "deferred", "delivered")
    table.add_column("clicked")
    table.add_column("click rate")
    for s in funnel["stages"]:
        table.add_row(
            str(s["stage"]),
            *(str(s.get(k, 0)) for k in ("targeted", "sent", "failed", "skipped", "deferred")),
            str(s["delivered"]),
            str(s["clicked"]),
            f"{s['clicked_rate']:.1%}",
        )
    foot = (
        f"{funnel['recipients']} recipients · {funnel['delivered']} delivered · "
        f"{funnel['clicked']} clicked ({funnel['clicked_after_resend']} after a resend)"
    )
    return Group(head, table, foot, f"Temporal UI: {status.get('temporal_ui', '')}")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:.3g}, {value[1]:.3g}]"  # an interval
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    return "–" if value is None else str(value)


def report_table(report: dict[str, Any]) -> Group:
    """One row per entry of each list in the report (stages, variants...), its fields as
    columns; the report's other fields above."""
    parts: list[Any] = []
    for name, value in report.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(k for row in value for k in row))
            table = Table(*columns, title=name)
            for row in value:
                table.add_row(*(_cell(row.get(c)) for c in columns))
            parts.append(table)
        else:
            parts.insert(0, f"{name}: {_cell(value)}")
    return Group(*parts)


class StageBars:
    """Per stage: sent of targeted, delivered of sent, clicked of sent."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            TextColumn("{task.completed:>6.0f}/{task.total:<6.0f}"),
        )
        self.tasks: dict[tuple[int, str], TaskID] = {}

    def update(self, status: dict[str, Any]) -> None:
        for s in status["funnel"]["stages"]:
            sent = s["sent"]
            for what, done, total in (
                ("sent", sent, s["targeted"]),
                ("delivered", s["delivered"], sent),
                ("clicked", s["clicked"], sent),
            ):
                key = (s["stage"], what)
                if key not in self.tasks:
                    self.tasks[key] = self.progress.add_task(f"stage {s['stage']} {what}")
                self.progress.update(self.tasks[key], completed=done, total=max(total, 1))


def follow(
    out: Console, look: Callable[[], dict[str, Any]], interval: float = 1.0
) -> dict[str, Any]:
    """Redraw the bars and the journey's state until it ends; returns the last status."""
    bars = StageBars()
    status = look()
    with Live(Group("", bars.progress), console=out, refresh_per_second=4) as live:
        while True:
            bars.update(status)
            nxt = ""
            if status.get("next_stage") is not None:
                nxt = f", stage {status['next_stage']} at {status.get('next_stage_at')}"
            live.update(Group(f"journey: [bold]{status['state']}[/bold]{nxt}", bars.progress))
            if status["state"] in TERMINAL:
                return status
            time.sleep(interval)
            status = look()
