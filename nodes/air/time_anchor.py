"""Time anchors: the moments a question names ("at about 2:34") lift the prescan's relevance there.

NOT IN THE PAPER. A.I.R.'s coarse stage ranks frames by CLIP's query–frame similarity, and CLIP
cannot read a clock: for "what colour was the shape that appeared at about 2:34?" the frame at 2:34
and one a minute later score alike, so the events, the initial sample and the interval ranking all
miss the moment the question is about. When the question names moments, the relevance A.I.R. works
on becomes

    S' = (1 − w) · (S − lo) / (hi − lo) + w · max_k exp(−(t − t_k)² / (2 σ²))

with lo, hi the prescan's lowest and highest score, t_k the named moments, w = `time_anchor_weight`
and σ = `time_anchor_width_s`. A question that names no moment keeps the paper's S untouched, and
w = 0 turns anchors off. The VLM analysis, θ, fill-up and density sampling are unchanged: anchors
only decide where A.I.R. looks first.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: "h:mm:ss" or "m:ss" as a clock time, not inside a longer run of digits and colons ("1:2:3:4")
CLOCK = re.compile(r"(?<![\d:])(?:(\d+):)?(\d{1,2}):([0-5]\d)(?![\d:])")
SECONDS_PER_MINUTE, SECONDS_PER_HOUR = 60, 3600


def question_moments(question: str) -> list[float]:
    """The times (seconds, in order of mention) a question names as clock times: "at about 2:34" → [154.0]."""
    moments = []
    for hours, minutes, seconds in CLOCK.findall(question):
        moments.append(float(int(hours or 0) * SECONDS_PER_HOUR + int(minutes) * SECONDS_PER_MINUTE + int(seconds)))
    return moments


def anchor_prior(times_s: np.ndarray, moments_s: Sequence[float], width_s: float) -> np.ndarray:
    """(N,) in [0, 1]: how close each frame time is to the nearest named moment (a Gaussian of σ = width_s)."""
    times_s = np.asarray(times_s, np.float64)
    if not len(moments_s):
        return np.zeros(len(times_s))
    gaps = times_s[:, None] - np.asarray(moments_s, np.float64)[None, :]  # (N, K)
    return np.exp(-0.5 * (gaps / width_s) ** 2).max(axis=1)


@dataclass(frozen=True)
class TimeAnchor:
    """The blend of CLIP scores with the prior of a question's moments; the scale (lo, hi) is fixed by
    the prescan, so frames CLIP scores later (density sampling's rescore) blend on the same scale."""

    prior: np.ndarray  # (N,) over every frame of the video
    weight: float
    lo: float
    hi: float

    @classmethod
    def fit(cls, S: np.ndarray, times_s: np.ndarray, moments_s: Sequence[float], *, weight: float,
            width_s: float) -> "TimeAnchor":
        scanned = S[np.isfinite(S)]
        return cls(anchor_prior(times_s, moments_s, width_s), weight, float(scanned.min()), float(scanned.max()))

    def blend(self, scores: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """S' of `frames` (K,) whose CLIP scores are `scores` (K,); NaN stays NaN (not scored)."""
        span = self.hi - self.lo
        scores = np.asarray(scores, np.float64)
        normalised = (scores - self.lo) / span if span > 0 else scores * 0.0
        return (1.0 - self.weight) * normalised + self.weight * self.prior[frames]
