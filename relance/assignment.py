"""Random but deterministic groups: who is held out of a resend stage, who gets which A/B
variant. Each draw is sha256 of the push, the recipient and a salt, read as a uniform number in
[0, 1): the same recipient lands in the same group on every retry, replay and worker.

- Holdout: the draw is salted with the stage, so each resend stage holds out its own random
  share (independently of the others and of the variants).
- Variants: the draw is salted with "variant" only, not the stage: it is the recipient's one
  number for the whole push. "Sticky" means: at every stage whose variants have the same names,
  the recipient gets the variant of the same name. The split of the first stage that used those
  names is the one laid over [0, 1) (in the order given), so a later stage with the same names
  keeps everybody where they were, whatever weights it repeats.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

_SCALE = float(1 << 64)


def draw(msg_id: str, registration_id: str, salt: str) -> float:
    """sha256(msg_id, registration_id, salt) as a uniform number in [0, 1)."""
    key = "\x1f".join((msg_id, registration_id, salt)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / _SCALE


def held_out(msg_id: str, registration_id: str, stage: int, share: float) -> bool:
    """Whether the recipient is in stage `stage`'s holdout of `share` (0 <= share < 1)."""
    return share > 0 and draw(msg_id, registration_id, f"holdout:{stage}") < share


@dataclass(frozen=True)
class Split:
    """Variants laid over [0, 1) by weight, in the order given."""

    names: tuple[str, ...]
    weights: tuple[float, ...]

    def pick(self, u: float) -> str:
        total = sum(self.weights)
        edge = 0.0
        for name, weight in zip(self.names, self.weights, strict=True):
            edge += weight / total
            if u < edge:
                return name
        return self.names[-1]  # rounding at the very top


def variant(msg_id: str, registration_id: str, split: Split) -> str:
    """The recipient's variant under `split`: the same draw at every stage (sticky)."""
    return split.pick(draw(msg_id, registration_id, "variant"))


def sticky_splits(stages: Sequence[Sequence[tuple[str, float]] | None]) -> list[Split | None]:
    """Each stage's split (None: no variants): a stage whose variant names were used by an
    earlier stage reuses that stage's split, so its recipients keep their variant."""
    first: dict[frozenset[str], Split] = {}
    splits: list[Split | None] = []
    for variants in stages:
        if not variants:
            splits.append(None)
            continue
        split = Split(tuple(n for n, _ in variants), tuple(float(w) for _, w in variants))
        splits.append(first.setdefault(frozenset(split.names), split))
    return splits
