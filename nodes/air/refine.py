"""A.I.R.'s iterative steps as pure functions on numpy arrays: interval potential ranking, candidate
picking, Positive/Neutral/Negative validation with fill-up, the early-stop cut and localized density
sampling.

`S` is the sparse score vector over all N video frames (NaN where no frame was scored); `times_s` (N,)
are the frames' presentation times. Frames are video frame indices.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np


class Verdict(str, Enum):
    """How a candidate's 1–5 score compares with θ; INVALID when the VLM gave no valid score."""

    POSITIVE = "positive"
    NEUTRAL = "neutral"
    NEGATIVE = "negative"
    INVALID = "invalid"


FILL_UP_ORDER = (Verdict.NEUTRAL, Verdict.NEGATIVE, Verdict.INVALID)
LOG_SLACK = 1e-9  # so an offset that equals the limit up to rounding is kept


def intervals_between(frames: np.ndarray, n_frames: int) -> np.ndarray:
    """(M, 2) [start, end] frame pairs: the frame set splits [0, N−1] into intervals, the first and last
    running to the video's ends (an end that is itself in the set adds no empty interval)."""
    bounds = np.unique(np.concatenate([[0], np.asarray(frames, np.int64), [n_frames - 1]]))
    return np.stack([bounds[:-1], bounds[1:]], axis=1) if len(bounds) > 1 else np.zeros((0, 2), np.int64)


def interval_potential(values: np.ndarray, length_frames: int, c_len: float) -> float:
    """Relevance × complexity × length of one interval from its scored values in time order:
    mean(S) · (1 + Σ|ΔS| / length) · (1 + c_len · log10(length))."""
    if len(values) == 0 or length_frames < 1:
        return 0.0
    relevance = float(values.mean())
    complexity = 1.0 + float(np.abs(np.diff(values)).sum()) / length_frames
    return relevance * complexity * (1.0 + c_len * math.log10(length_frames))


def interval_potentials(S: np.ndarray, intervals: np.ndarray, c_len: float) -> np.ndarray:
    """The potential of each interval, from the scored frames within it (both ends included)."""
    out = np.zeros(len(intervals))
    for i, (start, end) in enumerate(intervals):
        window = S[start:end + 1]
        out[i] = interval_potential(window[np.isfinite(window)], int(end - start), c_len)
    return out


@dataclass(frozen=True)
class Candidate:
    """A frame to analyse and the interval whose endpoint it was (LDS sizes its stride by it)."""

    frame: int
    interval: tuple[int, int]


def pick_candidates(intervals: np.ndarray, potentials: np.ndarray, frame_set: Collection[int],
                    analysed: Collection[int], count: int) -> list[Candidate]:
    """Endpoints of the highest-potential intervals (ties: the earlier interval; within one, start then
    end) that are in the frame set and not analysed yet, until `count` frames."""
    chosen: list[Candidate] = []
    seen: set[int] = set()
    for i in np.argsort(-potentials, kind="stable"):
        start, end = (int(v) for v in intervals[i])
        for frame in (start, end):
            if len(chosen) == count:
                return chosen
            if frame in frame_set and frame not in analysed and frame not in seen:
                seen.add(frame)
                chosen.append(Candidate(frame, (start, end)))
    return chosen


def classify(score: int | None, theta: int) -> Verdict:
    if score is None:
        return Verdict.INVALID
    if score > theta:
        return Verdict.POSITIVE
    return Verdict.NEUTRAL if score == theta else Verdict.NEGATIVE


def validate(verdicts: Sequence[Verdict], clip_scores: np.ndarray, quota: int) -> tuple[list[int], list[int]]:
    """Positions (into the candidates) of the Positive ones, and of the fill-up frames that bring the
    total to `quota`: Neutral first, then Negative, then invalid, each by CLIP score (ties: the earlier)."""
    positives = [i for i, verdict in enumerate(verdicts) if verdict is Verdict.POSITIVE]
    fillers: list[int] = []
    for kind in FILL_UP_ORDER:
        if len(positives) + len(fillers) >= quota:
            break
        group = [i for i, verdict in enumerate(verdicts) if verdict is kind]
        group.sort(key=lambda i: -clip_scores[i])  # sort is stable: equal scores keep candidate order
        fillers += group[:quota - len(positives) - len(fillers)]
    return positives, fillers


def keep_top(frames: Sequence[int], S: np.ndarray, budget: int) -> list[int]:
    """The early-stop cut: the `budget` frames with the highest S (ties: the earlier frame), in time order."""
    ordered = sorted(frames, key=lambda f: (-S[f], f))
    return sorted(ordered[:budget])


def density_offsets(alpha_s: float, beta: float, limit_s: float) -> np.ndarray:
    """Signed offsets +α, −α, +αβ, −αβ, +αβ², … while |offset| ≤ limit_s."""
    if not (alpha_s > 0 and beta > 1):
        raise ValueError(f"need alpha > 0 and beta > 1, got {alpha_s}, {beta}")
    if limit_s < alpha_s:
        return np.zeros(0)
    steps = alpha_s * beta ** np.arange(math.floor(math.log(limit_s / alpha_s, beta) + LOG_SLACK) + 1)
    return np.stack([steps, -steps], axis=1).ravel()


def lds_alpha(interval_s: float, fraction: float, minimum_s: float) -> float:
    """α = max(fraction · |I|, minimum)."""
    return max(fraction * interval_s, minimum_s)


def share_evenly(total: int, n: int) -> list[int]:
    """`total` split over n as evenly as possible, the remainder to the first ones."""
    if n <= 0:
        return []
    base, extra = divmod(max(total, 0), n)
    return [base + (i < extra) for i in range(n)]


def nearest(sorted_times: np.ndarray, t: float) -> int:
    """Position of the time nearest t (ties: the earlier)."""
    right = int(np.searchsorted(sorted_times, t))
    if right == 0:
        return 0
    if right == len(sorted_times):
        return right - 1
    return right - 1 if t - sorted_times[right - 1] <= sorted_times[right] - t else right


def density_frames(centers: Sequence[int], alphas_s: Sequence[float], counts: Sequence[int], times_s: np.ndarray,
                   eligible: np.ndarray, taken: Collection[int], beta: float) -> list[int]:
    """Localized density sampling: for each center, up to `count` new frames at the eligible frames
    nearest center ± α, ± αβ, … (an offset that lands on a frame already taken is skipped). `eligible`
    (N,) bool marks the frames that may be added: all frames when new ones can be scored, else only
    the scanned ones."""
    pool = np.flatnonzero(eligible)
    if len(pool) == 0:
        return []
    pool_times = times_s[pool]
    first_s, last_s = float(times_s[0]), float(times_s[-1])
    used = set(taken)
    added: list[int] = []
    for center, alpha_s, count in zip(centers, alphas_s, counts):
        placed = 0
        for offset in density_offsets(alpha_s, beta, last_s - first_s):
            if placed == count:
                break
            target = float(times_s[center]) + float(offset)
            if not first_s <= target <= last_s:
                continue
            frame = int(pool[nearest(pool_times, target)])
            if frame not in used:
                used.add(frame)
                added.append(frame)
                placed += 1
    return added
