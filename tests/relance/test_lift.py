"""The statistics of the report, checked against statsmodels (a test-only reference: relance
computes them itself, with no runtime dependency) on a table of cases that includes no
successes and all successes; and their calibration over simulated pushes."""

import math
import random

import pytest
from statsmodels.stats import proportion as sm

from relance import lift, report

# (x1, n1, x2, n2): treatment successes of size, control successes of size.
CASES = [
    (0, 10, 0, 10),
    (0, 50, 3, 40),
    (5, 5, 2, 9),
    (10, 10, 10, 10),
    (0, 200, 200, 200),
    (56, 70, 48, 80),
    (9, 10, 3, 10),
    (1, 1000, 0, 50),
    (120, 1600, 8, 180),
    (330, 1620, 18, 180),
    (7, 31, 7, 31),
    (999, 1000, 1, 1000),
]


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), CASES)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # statsmodels dividing by zero at the edges
def test_the_statistics_match_statsmodels(x1: int, n1: int, x2: int, n2: int) -> None:
    for x, n in ((x1, n1), (x2, n2)):
        assert lift.wilson(x, n) == pytest.approx(
            sm.proportion_confint(x, n, alpha=0.05, method="wilson"), abs=1e-6
        )
    diff = lift.newcombe_difference(x1, n1, x2, n2)
    low, high = sm.confint_proportions_2indep(x1, n1, x2, n2, method="newcomb", compare="diff")
    assert (diff.low, diff.high) == pytest.approx((low, high), abs=1e-6)
    assert diff.estimate == pytest.approx(x1 / n1 - x2 / n2, abs=1e-12)

    relative = lift.relative_lift(x1, n1, x2, n2)
    if x2 == 0:
        assert relative is None
    else:
        assert relative is not None
        low, high = sm.confint_proportions_2indep(
            x1, n1, x2, n2, method="log-adjusted", compare="ratio"
        )
        assert (relative.low, relative.high) == pytest.approx((low - 1, high - 1), abs=1e-6)
        assert relative.estimate == pytest.approx((x1 / n1) / (x2 / n2) - 1, abs=1e-12)

    reference = sm.test_proportions_2indep(
        x1, n1, x2, n2, method="score", compare="diff", correction=False
    ).pvalue
    if x1 + x2 in (0, n1 + n2):  # no variance: statsmodels says nan, relance "no difference"
        assert math.isnan(reference) and lift.p_value(x1, n1, x2, n2) == 1.0
    else:
        assert lift.p_value(x1, n1, x2, n2) == pytest.approx(reference, abs=1e-6)


def test_too_little_data_gives_no_number() -> None:
    small = lift.compare(3, 20, 1, 20)  # fewer than 30 recipients in each group
    rare = lift.compare(2, 500, 0, 60)  # under 5 expected successes in the smaller group
    assert not small.enough_data and small.reason and "30 recipients" in small.reason
    assert not rare.enough_data and rare.reason and "expected successes" in rare.reason
    for c in (small, rare):
        assert c.difference is None and c.relative_lift is None and c.p_value is None
        assert not c.significant
    enough = lift.compare(60, 200, 10, 60)
    assert enough.enough_data and enough.difference and enough.p_value is not None


def test_a_clear_difference_is_significant_and_none_is_not() -> None:
    assert lift.compare(330, 1620, 18, 180).significant
    assert not lift.compare(50, 500, 50, 500).significant
    with pytest.raises(ValueError):
        lift.compare(11, 10, 0, 10)


def _simulated_stage_1(rng: random.Random, effect: float) -> report.StageReport:
    """One push of 2,000 devices: a fifth click at stage 0; of the others, 10% are held out of
    stage 1 and click with a baseline 10%, those sent click with 10% + `effect`."""
    clicked_first = sum(rng.random() < 0.2 for _ in range(2000))
    sent = held = clicks_sent = clicks_held = 0
    for _ in range(2000 - clicked_first):
        if rng.random() < 0.1:
            held += 1
            clicks_held += rng.random() < 0.10
        else:
            sent += 1
            clicks_sent += rng.random() < 0.10 + effect
    rows = [
        report.GroupRow(1, None, "sent", sent, delivered=sent, clicked=clicks_sent),
        report.GroupRow(1, None, "held_out", held, clicked=clicks_held),
    ]
    return report.stage_report(1, rows, [])


@pytest.mark.parametrize(("effect", "seed"), [(0.05, 11), (0.0, 12)])
def test_the_interval_is_calibrated_against_a_known_truth(effect: float, seed: int) -> None:
    """Over 200 simulated pushes, through the report's own code: with a true +5 points click
    lift the 95% interval covers it 92-98% of the time; with none, it excludes zero in at most
    8%."""
    rng = random.Random(seed)
    intervals = []
    for _ in range(200):
        lift_ = _simulated_stage_1(rng, effect).lift
        assert lift_ is not None and lift_["clicked"].difference is not None
        intervals.append(lift_["clicked"].difference)
    covered = sum(d.low <= effect <= d.high for d in intervals) / len(intervals)
    if effect:
        assert 0.92 <= covered <= 0.98
    else:
        assert 1 - covered <= 0.08  # excludes zero


def test_each_variant_is_compared_with_the_first_and_wins_only_when_significant() -> None:
    def rows(clicks_b: int) -> list[report.GroupRow]:
        return [
            report.GroupRow(0, "A", "sent", 1000, clicked=100),
            report.GroupRow(0, "B", "sent", 1000, clicked=clicks_b),
            report.GroupRow(0, "C", "sent", 20, clicked=2),
        ]

    request = {"variants": [{"name": "B"}, {"name": "A"}, {"name": "C"}]}
    clear = report.build_report("m", "completed", request, rows(160), "24h", []).stages[0]
    assert [v.variant for v in clear.variants] == ["B", "A", "C"]  # the request's order
    assert [(c.variant, c.against) for c in clear.comparisons] == [("A", "B"), ("C", "B")]
    a_vs_b = clear.comparisons[0].clicked
    assert a_vs_b.significant and a_vs_b.difference and a_vs_b.difference.estimate == -0.06
    assert not clear.comparisons[1].clicked.enough_data  # C: 20 recipients, no number
    assert clear.winner == {"clicked": None, "converted": None}  # C is not significant

    two = [r for r in rows(160) if r.variant != "C"]
    assert report.stage_report(0, two, ["A", "B"]).winner == {"clicked": "B", "converted": None}
    assert report.stage_report(0, two, ["B", "A"]).winner == {"clicked": "B", "converted": None}
    close = [r for r in rows(108) if r.variant != "C"]
    assert report.stage_report(0, close, ["A", "B"]).winner == {
        "clicked": None,
        "converted": None,
    }
