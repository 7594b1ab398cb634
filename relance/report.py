"""The report of a push (`GET /v4/push/{msg_id}/report`): per stage and per variant what was
targeted, sent, delivered, displayed, clicked, converted and unsubscribed; per resend stage the
lift of the resend over its holdout; per stage with variants each variant against the first.

Pure: built from the ledger's counts per (stage, variant, delivery status) (`GroupRow`), so the
calibration test runs simulated pushes through this same code without a database."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from relance import lift
from relance.states import DeliveryStatus

Metric = Literal["clicked", "converted"]
METRICS: tuple[Metric, ...] = ("clicked", "converted")


@dataclass(frozen=True)
class GroupRow:
    """The deliveries of one stage with one variant and one status, and what they did."""

    stage: int
    variant: str | None
    status: str
    targeted: int
    failed: int = 0
    delivered: int = 0
    displayed: int = 0
    clicked: int = 0
    converted: int = 0  # conversions attributed to this stage
    conversion_value: float = 0.0
    unsubscribed: int = 0  # unsubscribes at this stage


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


class Group(BaseModel):
    """Counts of a group of recipients at one stage, and their rates over those sent (over
    those held out, for a holdout)."""

    targeted: int = Field(description="Deliveries queued at the stage, held out included.")
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    held_out: int = 0
    delivered: int = 0
    displayed: int = 0
    clicked: int = 0
    converted: int = 0
    conversion_value: float = 0.0
    unsubscribed: int = 0
    delivered_rate: float = 0.0
    displayed_rate: float = 0.0
    clicked_rate: float = 0.0
    converted_rate: float = 0.0
    unsubscribed_rate: float = 0.0


class Estimate(BaseModel):
    estimate: float
    low: float = Field(description="Lower end of the 95% confidence interval.")
    high: float = Field(description="Upper end of the 95% confidence interval.")


class Arm(BaseModel):
    n: int
    successes: int
    rate: float


class Comparison(BaseModel):
    """One rate of a treatment against a control: the absolute difference (points, as a
    fraction) and the relative lift, each with its 95% interval, and a two-sided p-value.
    Where the samples are too small, `enough_data` is false, `note` says why, and no number
    is given."""

    treatment: Arm
    control: Arm
    enough_data: bool
    note: str | None = None
    difference: Estimate | None = None
    relative_lift: Estimate | None = None
    p_value: float | None = None
    significant: bool = False


class VariantGroup(Group):
    variant: str


class VariantComparison(BaseModel):
    variant: str
    against: str = Field(description="The stage's first variant.")
    clicked: Comparison
    converted: Comparison


class StageReport(Group):
    stage: int
    holdout: Group | None = Field(
        None, description="The recipients held out of this resend stage: never sent, observed."
    )
    lift: dict[Metric, Comparison] | None = Field(
        None, description="What the resend caused: those sent against the holdout."
    )
    variants: list[VariantGroup] = Field(default_factory=list)
    comparisons: list[VariantComparison] = Field(default_factory=list)
    winner: dict[Metric, str | None] | None = Field(
        None, description="Per metric, the variant that is significantly best, else null."
    )


def _example(schema: dict[str, Any]) -> None:
    """The OpenAPI example: a resend that looks like it worked (15% of those sent clicked)
    and what its holdout says (9.4% of those held out clicked anyway)."""
    rows = [
        GroupRow(0, None, "sent", 2000, delivered=1960, displayed=1700, clicked=400, converted=120,
                 conversion_value=3588.0, unsubscribed=12),
        GroupRow(1, None, "sent", 1440, delivered=1410, displayed=1200, clicked=216, converted=58,
                 conversion_value=1740.0, unsubscribed=9),
        GroupRow(1, None, "held_out", 160, delivered=150, displayed=140, clicked=15, converted=4,
                 conversion_value=120.0),
    ]  # fmt: skip
    report = build_report("1795429543454486250", "completed", {}, rows, "24h", ["EUR"])
    schema["examples"] = [report.model_dump(mode="json")]


class Report(BaseModel):
    model_config = ConfigDict(json_schema_extra=_example)

    msg_id: str
    state: str
    confidence: float = lift.CONFIDENCE
    attribution_window: str
    currencies: list[str] = Field(
        default_factory=list, description="Currencies of the attributed conversion values."
    )
    stages: list[StageReport]


_SENT = DeliveryStatus.sent.value
_HELD_OUT = DeliveryStatus.held_out.value
_SKIPPED = DeliveryStatus.skipped.value


def group_of(rows: Iterable[GroupRow], holdout: bool = False) -> dict[str, Any]:
    """The counts and rates of these rows (all of one group), as `Group`'s fields."""
    c: dict[str, Any] = dict.fromkeys(
        (
            "targeted",
            "sent",
            "failed",
            "skipped",
            "held_out",
            "delivered",
            "displayed",
            "clicked",
            "converted",
            "unsubscribed",
        ),
        0,
    )
    c["conversion_value"] = 0.0
    for r in rows:
        c["targeted"] += r.targeted
        c["sent"] += r.targeted if r.status == _SENT else 0
        c["skipped"] += r.targeted if r.status == _SKIPPED else 0
        c["held_out"] += r.targeted if r.status == _HELD_OUT else 0
        for name in ("failed", "delivered", "displayed", "clicked", "converted", "unsubscribed"):
            c[name] += getattr(r, name)
        c["conversion_value"] += r.conversion_value
    c["conversion_value"] = round(c["conversion_value"], 2)
    base = c["held_out"] if holdout else c["sent"]
    for name in ("delivered", "displayed", "clicked", "converted", "unsubscribed"):
        c[f"{name}_rate"] = _rate(c[name], base)
    return c


def comparison(x1: int, n1: int, x2: int, n2: int) -> Comparison:
    result = lift.compare(x1, n1, x2, n2)

    def estimate(i: lift.Interval | None) -> Estimate | None:
        if i is None:
            return None
        return Estimate(estimate=round(i.estimate, 6), low=round(i.low, 6), high=round(i.high, 6))

    return Comparison(
        treatment=Arm(n=n1, successes=x1, rate=_rate(x1, n1)),
        control=Arm(n=n2, successes=x2, rate=_rate(x2, n2)),
        enough_data=result.enough_data,
        note=result.reason,
        difference=estimate(result.difference),
        relative_lift=estimate(result.relative_lift),
        p_value=None if result.p_value is None else round(result.p_value, 6),
        significant=result.significant,
    )


def _sent_outcomes(rows: Iterable[GroupRow]) -> tuple[int, dict[Metric, int]]:
    """Those sent among the rows, and how many of them clicked and converted."""
    sent = [r for r in rows if r.status == _SENT]
    n = sum(r.targeted for r in sent)
    return n, {"clicked": sum(r.clicked for r in sent), "converted": sum(r.converted for r in sent)}


def _winner(first: str, comparisons: list[VariantComparison], metric: Metric) -> str | None:
    """The best variant when the difference is significant: the best of those significantly
    better than the first, else the first if every other is significantly worse; else none."""
    better = [
        c
        for c in comparisons
        if getattr(c, metric).significant and (getattr(c, metric).difference.estimate > 0)
    ]
    if better:
        return max(better, key=lambda c: getattr(c, metric).treatment.rate).variant
    if comparisons and all(getattr(c, metric).significant for c in comparisons):
        return first
    return None


def stage_report(stage: int, rows: list[GroupRow], variant_order: list[str]) -> StageReport:
    """One stage's report from its rows (every variant and status of the stage)."""
    treated = [r for r in rows if r.status != _HELD_OUT]
    held = [r for r in rows if r.status == _HELD_OUT]
    totals = group_of(treated)
    totals["targeted"] += sum(r.targeted for r in held)
    totals["held_out"] = sum(r.targeted for r in held)
    report = StageReport(stage=stage, **totals)
    if held:
        report.holdout = Group(**group_of(held, holdout=True))
        n1, x1 = _sent_outcomes(treated)
        n2 = report.holdout.held_out
        report.lift = {
            "clicked": comparison(x1["clicked"], n1, report.holdout.clicked, n2),
            "converted": comparison(x1["converted"], n1, report.holdout.converted, n2),
        }
    seen = {r.variant for r in treated if r.variant is not None}
    names = [v for v in variant_order if v in seen] + sorted(seen - set(variant_order))
    if names:
        report.variants = [
            VariantGroup(variant=v, **group_of(r for r in treated if r.variant == v)) for v in names
        ]
        first = names[0]
        n2, x2 = _sent_outcomes(r for r in treated if r.variant == first)
        for v in names[1:]:
            n1, x1 = _sent_outcomes(r for r in treated if r.variant == v)
            report.comparisons.append(
                VariantComparison(
                    variant=v,
                    against=first,
                    clicked=comparison(x1["clicked"], n1, x2["clicked"], n2),
                    converted=comparison(x1["converted"], n1, x2["converted"], n2),
                )
            )
        report.winner = {m: _winner(first, report.comparisons, m) for m in METRICS}
    return report


def variant_order(request: dict[str, Any], stage: int) -> list[str]:
    """The variant names a stage of the push request declares, in their order: stage 0's at
    the top level of the body, a resend stage's inside that stage."""
    if stage == 0:
        variants = request.get("variants") or (request.get("body") or {}).get("variants")
    else:
        stages = (request.get("resend") or {}).get("stages") or []
        variants = stages[stage - 1].get("variants") if stage <= len(stages) else None
    return [str(v.get("name")) for v in variants or [] if isinstance(v, dict)]


def build_report(
    msg_id: str,
    state: str,
    request: dict[str, Any],
    rows: list[GroupRow],
    attribution_window: str,
    currencies: list[str],
) -> Report:
    stages = sorted({r.stage for r in rows})
    return Report(
        msg_id=msg_id,
        state=state,
        attribution_window=attribution_window,
        currencies=currencies,
        stages=[
            stage_report(s, [r for r in rows if r.stage == s], variant_order(request, s))
            for s in stages
        ],
    )
