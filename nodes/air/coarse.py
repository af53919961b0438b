"""A.I.R.'s adaptive stage as pure functions on numpy arrays: the frame budget, the GMM threshold, events
(runs of frames above it, merged and pruned) and the event-wise initial sample.

"Scanned" frames are those the CLIP prescan scored: `indices` (their frame numbers in the video, rising),
`times_s` and `scores`, all of the same length and all finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nodes.air.config import AirConfig

N_COMPONENTS = 2
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def adaptive_budget(duration_s: float, config: AirConfig) -> int:
    """B: the output frame count, linear in the video's length up to `short_video_s`, within [v_min, v_max]."""
    linear = math.floor(config.v_max * max(duration_s, 0.0) / config.short_video_s)
    return max(min(linear, config.v_max), config.v_min)


@dataclass(frozen=True)
class Gmm1d:
    """A 2-component 1-D Gaussian mixture; components sorted by mean."""

    weights: np.ndarray  # (2,)
    means: np.ndarray  # (2,)
    stds: np.ndarray  # (2,)


def _two_means_split(sorted_values: np.ndarray) -> int:
    """The split k (values[:k] | values[k:]) with the least within-group squared error: exact 1-D
    2-means, so the EM start is deterministic and does not depend on a random draw."""
    n = len(sorted_values)
    k = np.arange(1, n)
    prefix = np.cumsum(sorted_values)[:-1]
    prefix_sq = np.cumsum(sorted_values ** 2)[:-1]
    total, total_sq = sorted_values.sum(), (sorted_values ** 2).sum()
    left_sse = prefix_sq - prefix ** 2 / k
    right_sse = (total_sq - prefix_sq) - (total - prefix) ** 2 / (n - k)
    return int(np.argmin(left_sse + right_sse)) + 1


def _log_densities(values: np.ndarray, gmm: Gmm1d) -> np.ndarray:
    """(n, 2) log(weight · N(value | mean, std))."""
    z = (values[:, None] - gmm.means[None, :]) / gmm.stds[None, :]
    return np.log(gmm.weights)[None, :] - np.log(gmm.stds)[None, :] - LOG_SQRT_2PI - 0.5 * z ** 2


def fit_gmm_1d(values: np.ndarray, *, reg: float = 1e-6, max_iter: int = 200, tol: float = 1e-9) -> Gmm1d:
    """Expectation-maximisation from the exact 2-means split until the mean log-likelihood gains less
    than `tol`. `reg` is added to every variance. Fewer than two distinct values: both components
    are that one group."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("cannot fit a mixture to no scores")
    ordered = np.sort(x)
    if x.size < N_COMPONENTS or ordered[0] == ordered[-1]:
        std = math.sqrt(float(x.var()) + reg)
        return Gmm1d(np.full(2, 0.5), np.full(2, float(x.mean())), np.full(2, std))
    split = _two_means_split(ordered)
    groups = (ordered[:split], ordered[split:])
    gmm = Gmm1d(np.array([len(g) / x.size for g in groups]), np.array([g.mean() for g in groups]),
                np.sqrt(np.array([g.var() for g in groups]) + reg))
    previous = -math.inf
    for _ in range(max_iter):
        log_p = _log_densities(x, gmm)
        log_total = np.logaddexp(log_p[:, 0], log_p[:, 1])
        likelihood = float(log_total.mean())
        resp = np.exp(log_p - log_total[:, None])
        mass = resp.sum(axis=0) + np.finfo(np.float64).tiny
        means = (resp * x[:, None]).sum(axis=0) / mass
        variances = (resp * (x[:, None] - means[None, :]) ** 2).sum(axis=0) / mass + reg
        gmm = Gmm1d(mass / x.size, means, np.sqrt(variances))
        if likelihood - previous < tol:
            break
        previous = likelihood
    order = np.argsort(gmm.means, kind="stable")
    return Gmm1d(gmm.weights[order], gmm.means[order], gmm.stds[order])


def gmm_threshold(gmm: Gmm1d, gamma: float) -> float:
    """Eq. 1: T = max(μ1, μ2) − γ · max(σ1, σ2)."""
    return float(gmm.means.max() - gamma * gmm.stds.max())


@dataclass(frozen=True)
class Event:
    """A stretch of relevant video: its first and last scanned frame and the time it covers."""

    first: int  # video frame index
    last: int
    start_s: float
    end_s: float  # the last frame's time plus one scan period

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def scan_period(times_s: np.ndarray) -> float:
    """The prescan's sampling period (the median spacing of scanned frames); 0 for a single frame."""
    return float(np.median(np.diff(times_s))) if len(times_s) > 1 else 0.0


def find_events(indices: np.ndarray, times_s: np.ndarray, scores: np.ndarray, threshold: float,
                period_s: float) -> list[Event]:
    """Maximal runs of consecutive scanned frames with score ≥ threshold."""
    above = np.concatenate([[False], np.asarray(scores) >= threshold, [False]])
    edges = np.flatnonzero(above[1:] != above[:-1])
    return [Event(int(indices[a]), int(indices[b - 1]), float(times_s[a]), float(times_s[b - 1]) + period_s)
            for a, b in zip(edges[::2], edges[1::2])]


def merge_events(events: list[Event], max_gap_s: float) -> list[Event]:
    """Consecutive events at most `max_gap_s` apart become one (the frames between join it)."""
    merged: list[Event] = []
    for event in events:
        if merged and event.start_s - merged[-1].end_s <= max_gap_s:
            last = merged[-1]
            merged[-1] = Event(last.first, event.last, last.start_s, max(last.end_s, event.end_s))
        else:
            merged.append(event)
    return merged


def prune_events(events: list[Event], min_length_s: float) -> list[Event]:
    """Events longer than `min_length_s`; if none is, the longest (see AirConfig on l_min)."""
    kept = [event for event in events if event.duration_s > min_length_s]
    if kept or not events:
        return kept
    return [max(events, key=lambda event: event.duration_s)]  # max keeps the first of equal durations


def allocate_frames(durations_s: np.ndarray, capacities: np.ndarray, total: int) -> np.ndarray:
    """k_j per event: floor(total · L_j / ΣL) + 1, at most the event's frame count, then adjusted one
    frame at a time until Σk = min(total, Σcapacity): a frame is taken from the event most above its
    proportional share (keeping one per event while there are frames enough), or given to the one
    most below it that has room. Ties go to the earlier event."""
    durations = np.asarray(durations_s, dtype=np.float64)
    capacities = np.asarray(capacities, dtype=np.int64)
    n = len(durations)
    if n == 0:
        return np.zeros(0, np.int64)
    weights = durations / durations.sum() if durations.sum() > 0 else np.full(n, 1.0 / n)
    share = total * weights
    k = np.minimum(np.floor(share).astype(np.int64) + 1, capacities)
    target = min(total, int(capacities.sum()))
    while k.sum() > target:
        spare = k > 1 if np.any(k > 1) else k > 0
        k[int(np.argmax(np.where(spare, k - share, -np.inf)))] -= 1
    while k.sum() < target:
        room = k < capacities
        k[int(np.argmax(np.where(room, share - k, -np.inf)))] += 1
    return k


def initial_frames(events: list[Event], indices: np.ndarray, scores: np.ndarray, total: int) -> np.ndarray:
    """F_initial: in each event, its k_j highest-scoring scanned frames (ties: the earlier), k from
    `allocate_frames`; the union, as rising frame indices."""
    members = [np.flatnonzero((indices >= event.first) & (indices <= event.last)) for event in events]
    counts = allocate_frames(np.array([event.duration_s for event in events]), np.array([len(m) for m in members]), total)
    chosen = [m[np.argsort(-scores[m], kind="stable")[:k]] for m, k in zip(members, counts)]
    picked = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    return np.sort(indices[picked]).astype(np.int64)
