"""Holdout and variant assignment: deterministic (the same recipient, the same group, on every
call, retry and replay), sticky across stages, and in the configured shares."""

from collections import Counter

import pytest

from relance.assignment import Split, draw, held_out, sticky_splits, variant

RECIPIENTS = [f"device-{i:05d}" for i in range(20_000)]


def test_the_same_recipient_lands_in_the_same_group_on_every_call() -> None:
    split = Split(("A", "B", "C"), (50, 30, 20))
    first = [(held_out("m1", r, 1, 0.1), variant("m1", r, split)) for r in RECIPIENTS[:500]]
    again = [(held_out("m1", r, 1, 0.1), variant("m1", r, split)) for r in RECIPIENTS[:500]]
    assert first == again
    # A fixed value: the draw is sha256, not Python's per-process salted hash().
    assert draw("m1", "device-00000", "holdout:1") == pytest.approx(0.633565, abs=1e-6)


def test_the_holdout_holds_out_its_share_independently_per_stage_and_push() -> None:
    for share in (0.1, 0.25, 0.5):
        out = sum(held_out("m1", r, 1, share) for r in RECIPIENTS)
        assert abs(out / len(RECIPIENTS) - share) < 0.02, share
    assert not any(held_out("m1", r, 1, 0.0) for r in RECIPIENTS)
    stage1 = {r for r in RECIPIENTS if held_out("m1", r, 1, 0.2)}
    stage2 = {r for r in RECIPIENTS if held_out("m1", r, 2, 0.2)}
    other_push = {r for r in RECIPIENTS if held_out("m2", r, 1, 0.2)}
    # Independent draws: about 0.2 * 0.2 of everyone is in both, not 0.2 (the same people).
    for other in (stage2, other_push):
        assert abs(len(stage1 & other) / len(RECIPIENTS) - 0.04) < 0.01


@pytest.mark.parametrize(
    "weights", [(50, 50), (70, 30), (60, 30, 10), (1, 1, 2)], ids=lambda w: ":".join(map(str, w))
)
def test_variants_get_their_weighted_share(weights: tuple[int, ...]) -> None:
    names = tuple("ABC"[: len(weights)])
    split = Split(names, tuple(float(w) for w in weights))
    counts = Counter(variant("m1", r, split) for r in RECIPIENTS)
    for name, weight in zip(names, weights, strict=True):
        assert abs(counts[name] / len(RECIPIENTS) - weight / sum(weights)) < 0.02, (name, counts)


def test_variants_are_sticky_across_stages_with_the_same_names() -> None:
    # Stage 0: A/B 50:50; stage 1 none; stage 2: the same names (other weights, other order);
    # stage 3: other names, its own split.
    splits = sticky_splits(
        [[("A", 50), ("B", 50)], None, [("B", 90), ("A", 10)], [("X", 1), ("Y", 1)]]
    )
    assert splits[1] is None
    assert splits[2] == splits[0]
    assert splits[3] == Split(("X", "Y"), (1.0, 1.0))
    s0, s2, s3 = splits[0], splits[2], splits[3]
    assert s0 is not None and s2 is not None and s3 is not None
    assert all(variant("m1", r, s0) == variant("m1", r, s2) for r in RECIPIENTS[:2000])
    counts = Counter(variant("m1", r, s3) for r in RECIPIENTS)
    assert abs(counts["X"] / len(RECIPIENTS) - 0.5) < 0.02
