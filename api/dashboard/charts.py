"""Server-rendered inline SVG charts: no script and nothing fetched by the browser. Each
number drawn is also a `<text>` with `data-*` attributes naming what it is, so a reader (and
the browser test) can check it against the API."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

from relance.journey import StageFunnel

FUNNEL_METRICS = ("targeted", "sent", "delivered", "displayed", "clicked")
_COLOURS = {
    "targeted": "#9aa5b1",
    "sent": "#5b8def",
    "delivered": "#3fb1a0",
    "displayed": "#e0a84e",
    "clicked": "#d9534f",
}


def _attr(value: object) -> str:
    return str(escape(str(value)))


def funnel_chart(stages: Sequence[StageFunnel]) -> Markup:
    """Horizontal bars per stage: targeted, sent, delivered, displayed, clicked."""
    if not stages:
        return Markup('<p class="muted">No stage has been sent yet.</p>')
    label_w, bar_w, row_h, gap = 90, 440, 18, 14
    top = max(1, max(getattr(s, m) for s in stages for m in FUNNEL_METRICS))
    height = len(stages) * (len(FUNNEL_METRICS) * row_h + gap + 18)
    parts = [
        f'<svg class="chart funnel" role="img" viewBox="0 0 {label_w + bar_w + 70} {height}" '
        f'width="{label_w + bar_w + 70}" height="{height}" aria-label="Funnel per stage">'
    ]
    y = 0
    for s in stages:
        parts.append(f'<text class="stage" x="0" y="{y + 13}">Stage {s.stage}</text>')
        y += 18
        for metric in FUNNEL_METRICS:
            n = int(getattr(s, metric))
            w = round(bar_w * n / top, 1)
            parts.append(
                f'<text class="metric" x="{label_w - 6}" y="{y + 13}" text-anchor="end">'
                f"{metric}</text>"
                f'<rect x="{label_w}" y="{y + 2}" width="{w}" height="{row_h - 4}" '
                f'fill="{_COLOURS[metric]}"><title>stage {s.stage} {metric}: {n}</title></rect>'
                f'<text class="value" x="{label_w + w + 4}" y="{y + 13}" '
                f'data-stage="{s.stage}" data-metric="{metric}">{n}</text>'
            )
            y += row_h
        y += gap
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass
class Interval:
    label: str
    estimate: float
    low: float
    high: float


_ESTIMATES = ("difference", "diff", "absolute", "abs_diff", "lift", "estimate", "delta", "value")
_PAIRS = (("low", "high"), ("lower", "upper"), ("ci_low", "ci_high"), ("ci_lower", "ci_upper"))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _interval_of(d: dict[str, Any]) -> tuple[float, float] | None:
    for key, value in d.items():
        if (
            isinstance(value, list | tuple)
            and len(value) == 2
            and ("ci" in key or "interval" in key)
            and None not in (_number(value[0]), _number(value[1]))
        ):
            return float(value[0]), float(value[1])
        if isinstance(value, dict) and ("ci" in key or "interval" in key):
            found = _interval_of(value)
            if found is not None:
                return found
    for low, high in _PAIRS:
        lo, hi = _number(d.get(low)), _number(d.get(high))
        if lo is not None and hi is not None:
            return lo, hi
    return None


def intervals_in(report: Any, path: str = "") -> list[Interval]:
    """Every estimate that comes with a 95% interval in a report, labelled by where it is
    (its stage, variant and metric): the report's shape is read, not assumed field by field."""
    found: list[Interval] = []
    if isinstance(report, list):
        for i, item in enumerate(report):
            found += intervals_in(item, f"{path}[{i}]")
        return found
    if not isinstance(report, dict):
        return found
    label = path
    for key in ("stage", "variant", "metric", "against"):
        if key in report and not isinstance(report[key], dict | list):
            label = f"{label} {key} {report[key]}".strip()
    interval = _interval_of(report)
    estimate = next(
        (_number(report[k]) for k in _ESTIMATES if _number(report.get(k)) is not None), None
    )
    if interval is not None and estimate is not None:
        found.append(Interval(label or "estimate", estimate, *interval))
    for key, value in report.items():
        if isinstance(value, dict | list):
            found += intervals_in(value, f"{label} {key}".strip())
    return found


def lift_chart(intervals: Iterable[Interval]) -> Markup:
    """Each estimate as a dot with its 95% interval as a whisker, around a zero line."""
    items = list(intervals)
    if not items:
        return Markup("")
    label_w, plot_w, row_h = 260, 360, 26
    span = max(max(abs(i.low), abs(i.high), abs(i.estimate)) for i in items) or 1.0
    height = len(items) * row_h + 24

    def x(v: float) -> float:
        return round(label_w + plot_w / 2 + v / span * (plot_w / 2 - 10), 1)

    parts = [
        f'<svg class="chart lift" role="img" viewBox="0 0 {label_w + plot_w + 150} {height}" '
        f'width="{label_w + plot_w + 150}" height="{height}" aria-label="Lift with 95% intervals">'
        f'<line x1="{x(0)}" y1="0" x2="{x(0)}" y2="{height - 18}" class="zero"/>'
        f'<text x="{x(0)}" y="{height - 4}" text-anchor="middle" class="muted">0</text>'
    ]
    for n, item in enumerate(items):
        y = n * row_h + 14
        significant = item.low > 0 or item.high < 0
        cls = "sig" if significant else "nosig"
        parts.append(
            f'<text x="0" y="{y + 4}" class="metric">{escape(item.label)}</text>'
            f'<line x1="{x(item.low)}" y1="{y}" x2="{x(item.high)}" y2="{y}" class="ci {cls}"/>'
            f'<circle cx="{x(item.estimate)}" cy="{y}" r="4" class="{cls}"/>'
            f'<text x="{label_w + plot_w + 6}" y="{y + 4}" class="value" '
            f'data-label="{_attr(item.label)}" data-estimate="{item.estimate}" '
            f'data-low="{item.low}" data-high="{item.high}">'
            f"{item.estimate:+.4g} [{item.low:+.4g}, {item.high:+.4g}]</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass
class Mark:
    """One point or span on the timeline: a planned stage time or an actual send."""

    stage: int
    kind: str  # planned | sent | held
    start: datetime
    end: datetime
    label: str


def timeline_chart(marks: Sequence[Mark], now: datetime) -> Markup:
    """Planned stage times as hollow diamonds, actual sends as bars (from the first to the
    last send of a slot), held slots in amber, on one time axis per stage row."""
    if not marks:
        return Markup("")
    start = min(m.start for m in marks)
    end = max(max(m.end for m in marks), start)
    seconds = max((end - start).total_seconds(), 1.0)
    label_w, plot_w, row_h = 80, 560, 30
    stages = sorted({m.stage for m in marks})
    height = len(stages) * row_h + 30

    def x(t: datetime) -> float:
        return round(label_w + 10 + (t - start).total_seconds() / seconds * (plot_w - 20), 1)

    parts = [
        f'<svg class="chart timeline" role="img" viewBox="0 0 {label_w + plot_w} {height}" '
        f'width="{label_w + plot_w}" height="{height}" aria-label="Stage timeline">'
    ]
    for row, stage in enumerate(stages):
        y = row * row_h + 15
        parts.append(
            f'<text x="0" y="{y + 4}" class="stage">Stage {stage}</text>'
            f'<line x1="{label_w}" y1="{y}" x2="{label_w + plot_w}" y2="{y}" class="axis"/>'
        )
        for m in (m for m in marks if m.stage == stage):
            title = f"<title>{escape(m.label)}</title>"
            if m.kind == "planned":
                cx = x(m.start)
                parts.append(
                    f'<path d="M{cx} {y - 7} L{cx + 7} {y} L{cx} {y + 7} L{cx - 7} {y} Z" '
                    f'class="planned">{title}</path>'
                )
            else:
                x0, x1 = x(m.start), x(m.end)
                parts.append(
                    f'<rect x="{x0 - 2}" y="{y - 5}" width="{max(x1 - x0, 0) + 4}" height="10" '
                    f'class="{m.kind}">{title}</rect>'
                )
    if start <= now <= end:
        parts.append(
            f'<line x1="{x(now)}" y1="0" x2="{x(now)}" y2="{height - 18}" class="now"/>'
            f'<text x="{x(now)}" y="{height - 4}" text-anchor="middle" class="muted">now</text>'
        )
    parts.append(
        f'<text x="{label_w}" y="{height - 4}" class="muted">{start:%Y-%m-%d %H:%M:%S}Z</text>'
        f'<text x="{label_w + plot_w}" y="{height - 4}" text-anchor="end" class="muted">'
        f"{end:%Y-%m-%d %H:%M:%S}Z</text></svg>"
    )
    return Markup("".join(parts))
