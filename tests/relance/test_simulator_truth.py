"""The simulator's truth: its devices' own clicks decay as configured, each stage and variant
causes what it is told to, and `true_click_lift` is what a perfect holdout comparison of the
simulator's own draws measures (in-process, no Temporal)."""

import math

import pytest

from relance.simulator import Behaviour, Fleet, true_click_lift

N = 20_000


async def _no_report(_: object) -> None:
    return None


def fleet(b: Behaviour) -> Fleet:
    return Fleet(b, _no_report)


def test_own_clicks_follow_the_decaying_baseline() -> None:
    b = Behaviour(baseline=0.3, baseline_half_life_s=60)
    f = fleet(b)
    times = [f.organic_after("m", f"d{i}") for i in range(N)]
    for t in (30.0, 60.0, 240.0):
        share = sum(1 for x in times if x is not None and x <= t) / N
        assert abs(share - b.organic_by(t)) < 0.015, t
    assert b.organic_by(60) == pytest.approx(0.15)  # half the baseline by one half-life
    assert fleet(Behaviour()).organic_after("m", "d0") is None  # no baseline: never


@pytest.mark.parametrize(("effects", "variant"), [({"1": 0.05}, None), ({"1:B": 0.12}, "B")])
def test_true_lift_is_what_a_perfect_holdout_comparison_of_the_draws_measures(
    effects: dict[str, float], variant: str | None
) -> None:
    # Stage 0 causes nothing (so eligibility at stage 1 is about own clicks only); stage 1 at
    # 30 s, its clicks counted to 50 s.
    b = Behaviour(p_fail=0.02, baseline=0.2, baseline_half_life_s=40, effects={"0": 0.0, **effects})
    f = fleet(b)
    start, end = 30.0, 50.0
    treated = control = eligible = 0
    for i in range(N):
        rid = f"d{i}"
        own = f.organic_after("m", rid)
        if own is not None and own < start:
            continue  # clicked before stage 1: not eligible
        eligible += 1
        own_in_window = own is not None and own <= end
        caused = "clicked" in f.fate("m", 1, rid, variant)
        treated += own_in_window or caused
        control += own_in_window
    lift = (treated - control) / eligible
    truth = true_click_lift(b, 1, variant, start, end)
    se = math.sqrt(truth * (1 - truth) / eligible)
    assert abs(lift - truth) < 4 * se, (lift, truth)
    assert truth < b.caused(1, variant)  # some would have clicked anyway


def test_the_truth_is_served_for_the_demo() -> None:
    from fastapi.testclient import TestClient

    from relance.simulator import create_simulator_app

    b = Behaviour(baseline=0.1, effects={"1": 0.05})
    app = create_simulator_app(b, _no_report)
    got = TestClient(app).get("/v1/truth").json()
    assert Behaviour.model_validate(got) == b
