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


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.1f}%"


def _lift(c: dict[str, Any] | None) -> str:
    """A comparison in words: the difference in points with its interval and p, or why not."""
    if not c:
        return "–"
    if not c.get("enough_data"):
        return str(c.get("note") or "not enough data")
    d = c["difference"]
    mark = " *" if c.get("significant") else ""
    return (
        f"{100 * d['estimate']:+.1f} pts [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}], "
        f"p={c['p_value']:.3f}{mark}"
    )


def report_table(report: dict[str, Any]) -> Group:
    """`GET /v4/push/{msg_id}/report` as tables: per stage (and holdout, and variant) the
    funnel with its rates, then each resend's lift over its holdout and each variant against
    the first, with their 95% intervals (* where significant)."""
    head = (
        f"push {report.get('msg_id')} · {report.get('state')} · attribution window "
        f"{report.get('attribution_window')} · confidence {report.get('confidence')}"
    )
    funnel = Table(
        "stage", "group", "targeted", "sent", "held out", "delivered", "clicked", "click rate",
        "converted", "conv. rate", "value", "unsubscribed", title="funnel per stage",
    )  # fmt: skip
    lifts = Table("stage", "against", "clicks", "conversions", title="what the resend caused")

    def row(stage: int, group: str, g: dict[str, Any]) -> None:
        funnel.add_row(
            str(stage), group, str(g.get("targeted", 0)), str(g.get("sent", 0)),
            str(g.get("held_out", 0)), str(g.get("delivered", 0)), str(g.get("clicked", 0)),
            _pct(g.get("clicked_rate")), str(g.get("converted", 0)),
            _pct(g.get("converted_rate")), f"{g.get('conversion_value', 0):.2f}",
            str(g.get("unsubscribed", 0)),
        )  # fmt: skip

    for stage in report.get("stages", []):
        n = stage["stage"]
        row(n, "all", stage)
        if stage.get("holdout"):
            row(n, "holdout", stage["holdout"])
        for v in stage.get("variants", []):
            row(n, f"variant {v['variant']}", v)
        lift = stage.get("lift") or {}
        if lift:
            lifts.add_row(
                str(n), "its holdout", _lift(lift.get("clicked")), _lift(lift.get("converted"))
            )
        for c in stage.get("comparisons", []):
            against = f"{c['variant']} vs {c['against']}"
            lifts.add_row(str(n), against, _lift(c["clicked"]), _lift(c["converted"]))
    parts: list[Any] = [head, funnel]
    if lifts.row_count:
        parts.append(lifts)
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
