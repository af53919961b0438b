"""UGround samples from the grounded-picking task's camera stills (`groundloop sim grounded-stills`).

The shapes-world referring set teaches UGround what [SEG] and a similarity map are; these stills teach it
the scene it has to ground in when a sentence chooses what the robot picks: ManiSkill renders of
GroundedPickCube-v1 (table, arm, three cubes of palette colours), cropped to the workspace, with the
simulator's per-cube masks. Every still gives one expression per palette colour — "the green cube",
the cube's pixels when it is in the scene and visible, [REJ] (an empty mask) when it is not — and "all
cubes", the union. `MixedSource` draws a training batch's samples from several sources by share.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nodes.uground.data import ReferringSample
from sim.shapes_world.referring import ALL_OF, ATTRIBUTE, EMPTY, MULTI, THE

CUBE, CUBES = "cube", "cubes"
#: the words these expressions add to the shapes-world vocabulary (model.vocabulary appends them)
STILLS_WORDS = (CUBE, CUBES)
MIN_VISIBLE_PIXELS = 4  # a drawn cube with fewer visible pixels is neither a target nor an absent one


def cube_expression(colour: str) -> str:
    return f"{THE} {colour} {CUBE}"


ALL_CUBES = f"{ALL_OF} {CUBES}"


class GroundedStillsSource:
    """The samples of one `grounded_stills` directory: random ones for training, all for evaluation."""

    def __init__(self, directory: str | Path):
        from sim.grounded_stills import load_grounded_stills

        self.stills = load_grounded_stills(directory)
        self.palette = list(self.stills.palette)

    def __len__(self) -> int:
        return len(self.stills.images)

    def expressions(self, index: int) -> list[tuple[str, np.ndarray, str]]:
        """(expression, target mask, kind) of still `index`: one per palette colour, then "all cubes"."""
        labels = self.stills.labels[index]  # (S, S) uint8: 1 + palette index, 0 elsewhere
        present = self.stills.present[index]  # (len(palette),) bool
        out: list[tuple[str, np.ndarray, str]] = []
        for k, colour in enumerate(self.palette):
            mask = labels == k + 1
            if not present[k]:
                out.append((cube_expression(colour), np.zeros_like(mask), EMPTY))
            elif mask.sum() >= MIN_VISIBLE_PIXELS:
                out.append((cube_expression(colour), mask, ATTRIBUTE))
        union = labels > 0
        if union.sum() >= MIN_VISIBLE_PIXELS:
            out.append((ALL_CUBES, union, MULTI))
        return out

    def sample_at(self, index: int, expression: tuple[str, np.ndarray, str]) -> ReferringSample:
        text, mask, kind = expression
        return ReferringSample(self.stills.images[index], text, mask, kind, int(self.stills.seeds[index]))

    def sample(self, rng: np.random.Generator) -> ReferringSample:
        while True:  # a still whose cubes are all hidden by the arm still has its absent colours
            index = int(rng.integers(len(self)))
            expressions = self.expressions(index)
            if expressions:
                return self.sample_at(index, expressions[rng.integers(len(expressions))])

    def all_samples(self, limit: int | None = None) -> list[ReferringSample]:
        """Every expression of every still, in file order; the first `limit` of them."""
        out: list[ReferringSample] = []
        for index in range(len(self)):
            out += [self.sample_at(index, e) for e in self.expressions(index)]
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out


class MixedSource:
    """Each sample from one of `sources`, chosen with probability `shares` (normalised)."""

    def __init__(self, sources: Sequence[object], shares: Sequence[float]):
        if len(sources) != len(shares) or not sources:
            raise ValueError(f"MixedSource needs one share per source, got {len(sources)} sources, {len(shares)} shares")
        weights = np.asarray(shares, np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"MixedSource shares must be >= 0 and not all 0, got {list(shares)}")
        self.sources, self.weights = list(sources), weights / weights.sum()

    def sample(self, rng: np.random.Generator) -> ReferringSample:
        return self.sources[int(rng.choice(len(self.sources), p=self.weights))].sample(rng)
