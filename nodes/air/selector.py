"""The A.I.R. loop (paper Alg. 1): adaptive initial sampling, then up to I_max rounds of interval
potential ranking → VLM analysis of C candidates → validation with fill-up → early stop → localized
density sampling. The VLM therefore judges at most C · I_max frames per video.

The loop works on the sparse score vector S over all N frames (NaN: not scored). The paper scores the
frames that density sampling adds with CLIP; pass `rescore` to do that. Without it, density sampling
draws only from frames the prescan already scored (so a denser prescan lets it look closer). With
`moments_s`, the times the question names, S is blended with their prior first (nodes/air/time_anchor.py,
NOT IN THE PAPER); each selected frame still reports its own CLIP score.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nodes.air.analysis import FrameAnalyser, Judgement
from nodes.air.coarse import (Event, Gmm1d, adaptive_budget, find_events, fit_gmm_1d, gmm_threshold, initial_frames,
                              merge_events, prune_events, scan_period)
from nodes.air.config import AirConfig
from nodes.air.refine import (Candidate, classify, density_frames, intervals_between, interval_potentials,
                              keep_top, lds_alpha, pick_candidates, share_evenly, validate)
from nodes.air.time_anchor import TimeAnchor

STOP_BUDGET = "budget_reached"  # early stop: |F*| ≥ B
STOP_MAX_ITERATIONS = "max_iterations"
STOP_NO_CANDIDATES = "no_candidates"  # every frame in the pool was analysed

Rescorer = Callable[[np.ndarray], np.ndarray]  # frame indices -> their CLIP scores


@dataclass
class IterationTrace:
    candidates: list[int]
    scores: list[int | None]  # the VLM's, per candidate
    positives: list[int]
    filled: list[int]  # validated by the fill-up rule
    added: list[int] = field(default_factory=list)  # new frames from localized density sampling


@dataclass
class AirTrace:
    """How a selection came about."""

    budget: int
    gmm: Gmm1d
    threshold: float
    events: list[Event]
    initial: list[int]
    iterations: list[IterationTrace] = field(default_factory=list)
    stop_reason: str = STOP_MAX_ITERATIONS
    moments_s: list[float] = field(default_factory=list)  # the question's moments that anchored S (none: the paper's S)

    @property
    def analysed(self) -> int:
        """Frames the VLM was asked about (one call each): at most C · I_max."""
        return sum(len(it.candidates) for it in self.iterations)


@dataclass(frozen=True)
class SelectedFrame:
    frame: int
    time_s: float
    clip_score: float
    vlm_score: int | None
    filled: bool  # validated by the fill-up rule, not as Positive
    reason: str


@dataclass
class AirResult:
    frames: list[SelectedFrame]  # in time order
    trace: AirTrace

    @property
    def frame_indices(self) -> np.ndarray:
        return np.array([f.frame for f in self.frames], np.int64)


def evidence_spans(times_s: list[float], max_gap_s: float) -> np.ndarray:
    """(S, 2) spans of the selected frames: times at most `max_gap_s` apart share one span."""
    spans: list[list[float]] = []
    for t in sorted(times_s):
        if spans and t - spans[-1][1] <= max_gap_s:
            spans[-1][1] = t
        else:
            spans.append([t, t])
    return np.array(spans, np.float64).reshape(-1, 2)


def _coarse(S: np.ndarray, times_s: np.ndarray, budget: int, config: AirConfig) -> AirTrace:
    """GMM threshold → events → event-wise initial sample."""
    scanned = np.flatnonzero(np.isfinite(S))
    values, scanned_times = S[scanned], times_s[scanned]
    gmm = fit_gmm_1d(values, reg=config.gmm_reg, max_iter=config.gmm_max_iter, tol=config.gmm_tol)
    threshold = gmm_threshold(gmm, config.gamma)
    events = find_events(scanned, scanned_times, values, threshold, scan_period(scanned_times))
    events = prune_events(merge_events(events, config.d_min_s), config.l_min_s)
    total = config.initial_factor * max(budget, config.candidates)
    initial = initial_frames(events, scanned, values, total)
    return AirTrace(budget, gmm, threshold, events, initial.tolist())


def _density_sample(validated: list[Candidate], S: np.ndarray, times_s: np.ndarray, eligible: np.ndarray,
                    pool: set[int], remaining: int, config: AirConfig) -> list[int]:
    """New frames around the newly validated ones, ceil(lds_ratio · remaining) in all, shared evenly
    (the remainder to the higher CLIP scores)."""
    ordered = sorted(validated, key=lambda c: (-S[c.frame], c.frame))
    counts = share_evenly(math.ceil(config.lds_ratio * remaining), len(ordered))
    alphas = [lds_alpha(float(times_s[c.interval[1]] - times_s[c.interval[0]]), config.alpha_fraction, config.alpha_min_s)
              for c in ordered]
    return density_frames([c.frame for c in ordered], alphas, counts, times_s, eligible, pool, config.beta)


def select_frames_air(S: np.ndarray, times_s: np.ndarray, analyse: FrameAnalyser, config: AirConfig = AirConfig(), *,
                      budget: int | None = None, rescore: Rescorer | None = None,
                      moments_s: Sequence[float] = ()) -> AirResult:
    """Run A.I.R. on the scores `S` (N,) of a video whose frames are at `times_s` (N,), rising.

    `analyse(frame)` judges one frame (one VLM call); `budget` fixes B instead of the adaptive rule;
    `moments_s` are the times the question names (`time_anchor.question_moments`).
    """
    S = np.array(S, dtype=np.float64)
    times_s = np.asarray(times_s, dtype=np.float64)
    if S.shape != times_s.shape or S.ndim != 1:
        raise ValueError(f"scores {S.shape} and times {times_s.shape} must be two vectors of the same length")
    if not np.any(np.isfinite(S)):
        raise ValueError("no frame has a score: A.I.R. needs the prescan's scores")
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    n_frames = len(S)
    clip_scores = S.copy()
    anchor = None
    if len(moments_s) and config.time_anchor_weight > 0:
        anchor = TimeAnchor.fit(S, times_s, moments_s, weight=config.time_anchor_weight, width_s=config.time_anchor_width_s)
        S = anchor.blend(S, np.arange(n_frames))
    eligible = np.ones(n_frames, bool) if rescore is not None else np.isfinite(S)
    chosen_budget = budget if budget is not None else adaptive_budget(float(times_s[-1] - times_s[0]), config)
    trace = _coarse(S, times_s, min(chosen_budget, int(eligible.sum())), config)
    trace.moments_s = list(moments_s) if anchor is not None else []
    B = trace.budget
    quota = max(1, B // config.i_max)
    pool = set(trace.initial)
    judged: dict[int, Judgement] = {}
    final: list[int] = []
    filled: set[int] = set()
    for iteration in range(config.i_max):
        intervals = intervals_between(np.array(sorted(pool), np.int64), n_frames)
        candidates = pick_candidates(intervals, interval_potentials(S, intervals, config.c_len), pool, judged,
                                     config.candidates)
        if not candidates:
            trace.stop_reason = STOP_NO_CANDIDATES
            break
        for candidate in candidates:
            judged[candidate.frame] = analyse(candidate.frame)
        verdicts = [classify(judged[c.frame].score, config.theta) for c in candidates]
        positives, fillers = validate(verdicts, S[[c.frame for c in candidates]], quota)
        step = IterationTrace([c.frame for c in candidates], [judged[c.frame].score for c in candidates],
                              [candidates[i].frame for i in positives], [candidates[i].frame for i in fillers])
        trace.iterations.append(step)
        final += step.positives + step.filled
        filled.update(step.filled)
        if len(final) >= B:
            final = keep_top(final, S, B)
            trace.stop_reason = STOP_BUDGET
            break
        if iteration + 1 == config.i_max:
            break  # frames sampled now would never be analysed
        added = _density_sample([candidates[i] for i in positives + fillers], S, times_s, eligible, pool,
                                B - len(final), config)
        if rescore is not None and added:
            frames_added = np.array(added, np.int64)
            clip_scores[frames_added] = rescore(frames_added)
            S[frames_added] = anchor.blend(clip_scores[frames_added], frames_added) if anchor else clip_scores[frames_added]
            added = [frame for frame in added if np.isfinite(S[frame])]
        step.added = added
        pool.update(added)
    frames = [SelectedFrame(f, float(times_s[f]), float(clip_scores[f]), judged[f].score, f in filled, judged[f].reason)
              for f in sorted(final)]
    return AirResult(frames, trace)

