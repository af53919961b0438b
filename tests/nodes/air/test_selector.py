"""The A.I.R. loop with a VLM double that scores frames by a known rule: the selection, the trace and the
stop reason equal the ones worked out by hand, and the VLM never sees more than C · I_max frames."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.air.analysis import COUNTER_INVALID, COUNTER_VLM_CALLS, COUNTER_VLM_ERRORS, VlmFrameAnalyser
from nodes.air.config import AirConfig
from nodes.air.selector import (STOP_BUDGET, STOP_MAX_ITERATIONS, STOP_NO_CANDIDATES, evidence_spans, select_frames_air)
from nodes.vlm import VlmError
from tests.nodes.video_doubles import IndexedFrames, RuleVlm, frame_scores

QUESTION, OPTIONS = "When does the red square appear?", ["0 s", "22 s", "40 s", "never"]
SMALL = AirConfig(candidates=4, i_max=3)


def one_bump(n: int = 60, bump: slice = slice(20, 26)) -> np.ndarray:
    """1 fps, every frame scored: 0.1 everywhere, 0.3 on the bump."""
    S = np.full(n, 0.1)
    S[bump] = 0.3
    return S


def run(S, rule, config=SMALL, fps=1.0, **kwargs):
    frames = IndexedFrames(len(S), fps)
    vlm = RuleVlm(frame_scores(rule))
    analyse = VlmFrameAnalyser(vlm, frames.image, QUESTION, OPTIONS)
    return select_frames_air(S, frames.times_s, analyse, config, **kwargs), vlm, analyse


def test_the_loop_follows_the_hand_derived_trace_and_stops_early():
    """B = 4, C = 4, I_max = 3, so 1 frame per round at least (floor(4 / 3)).

    Coarse: one event, frames 20–25 (6 s > l_min), K = 2 · max(4, 4) = 8 > 6 frames: F = {20, …, 25}.
    Round 1: the 1-frame intervals inside the bump (P = 0.3) beat the long flanks (P ≈ 0.18), so the
      candidates are 20, 21, 22, 23; the rule scores 22 → 5 and 23 → 4: both Positive. 2 frames still
      missing, so LDS adds 1 around each (α = 0.625 s): around 22 every offset up to ±2.1 s lands on
      F, −3.16 s lands on 19; around 23, +3.16 s lands on 26.
    Round 2: unanalysed endpoints by potential: 24, 25 (P = 0.3), then 19 and 26 (P = 0.24); scores
      3, 1, 2, 2: no Positive, so the best Neutral (24) fills the quota of 1. LDS adds 1 frame around
      24: every offset up to ±2.1 s hits F, +3.16 s lands on 27.
    Round 3: the only unanalysed frame is 27, scored 4: |F*| = 4 = B, early stop; all four are kept.
    """
    rule = {22: 5, 23: 4, 24: 3, 25: 1, 19: 2, 26: 2, 27: 4}
    result, vlm, analyse = run(one_bump(), rule, budget=4)
    trace = result.trace
    assert trace.budget == 4 and [(e.first, e.last) for e in trace.events] == [(20, 25)]
    assert trace.initial == [20, 21, 22, 23, 24, 25]
    steps = [(it.candidates, it.positives, it.filled, it.added) for it in trace.iterations]
    assert steps == [([20, 21, 22, 23], [22, 23], [], [19, 26]),
                     ([24, 25, 19, 26], [], [24], [27]),
                     ([27], [27], [], [])]
    assert trace.stop_reason == STOP_BUDGET
    assert result.frame_indices.tolist() == [22, 23, 24, 27]
    assert [(f.vlm_score, f.filled) for f in result.frames] == [(5, False), (4, False), (3, True), (4, False)]
    assert result.frames[0].reason == "frame 22 rates 5." and result.frames[3].time_s == 27.0
    assert [call[0] for call in vlm.calls] == [20, 21, 22, 23, 24, 25, 19, 26, 27]
    assert analyse.counts[COUNTER_VLM_CALLS] == trace.analysed == 9 <= SMALL.candidates * SMALL.i_max


def test_early_stop_keeps_the_top_b_by_clip_score():
    S = one_bump()
    S[22] = 0.35  # the best-scored frame in the bump
    result, _, _ = run(S, {f: 5 for f in range(60)}, budget=3)
    # round 1 analyses 20, 21, 22, 23 (22's intervals first), all Positive: 4 ≥ 3, so the top 3 by S:
    # 22, then of the frames tied at 0.3 the earlier ones
    assert result.trace.stop_reason == STOP_BUDGET and len(result.trace.iterations) == 1
    assert result.trace.iterations[0].candidates == [21, 22, 23, 20]
    assert result.frame_indices.tolist() == [20, 21, 22]


def test_without_positive_frames_each_round_fills_up_and_the_loop_runs_out_of_rounds():
    result, vlm, _ = run(one_bump(), {}, budget=4)  # every frame scores 1
    assert result.trace.stop_reason == STOP_MAX_ITERATIONS and len(result.trace.iterations) == SMALL.i_max
    assert len(result.frames) == SMALL.i_max and all(f.filled and f.vlm_score == 1 for f in result.frames)
    assert len(vlm.calls) <= SMALL.candidates * SMALL.i_max


def test_the_loop_stops_when_every_frame_in_the_pool_was_analysed():
    """The event 1–3 is the pool; round 1 judges 1, 2, 3 (all score 1) and fills up with 1 (best CLIP
    score); LDS around 1 s reaches 0 s, but its farthest offset (+3.16 s) passes the video's end
    before reaching 4. Round 2 judges 0; its LDS finds nothing new, so round 3 has no candidate."""
    S = np.array([0.1, 0.3, 0.1, 0.3, 0.1])
    result, vlm, _ = run(S, {}, AirConfig(candidates=12, i_max=6), budget=5)
    assert result.trace.stop_reason == STOP_NO_CANDIDATES and len(result.trace.iterations) == 2
    assert [call[0] for call in vlm.calls] == [1, 2, 3, 0]
    assert result.frame_indices.tolist() == [0, 1]


def test_the_vlm_sees_at_most_c_times_i_max_frames_with_the_paper_defaults():
    rng = np.random.default_rng(3)
    S = np.full(24 * 900, np.nan)  # 15 min at 24 fps, scored at 1 fps
    seconds = np.arange(900)
    S[seconds * 24] = 0.2 + 0.02 * rng.standard_normal(900) + 0.1 * ((seconds > 300) & (seconds < 340))
    rule = {int(f): 1 + int(f) % 5 for f in seconds * 24}
    result, vlm, _ = run(S, rule, AirConfig(), fps=24.0)
    config = AirConfig()
    assert result.trace.budget == 32 and len(vlm.calls) <= config.candidates * config.i_max
    frames = result.frame_indices
    assert len(frames) <= 32 and np.all(np.diff(frames) > 0) and np.all(np.isfinite(S[frames]))
    assert all(len(it.candidates) <= config.candidates for it in result.trace.iterations)


def test_rescoring_lets_density_sampling_add_unscanned_frames():
    S = np.full(240, np.nan)  # 60 s at 4 fps, scanned at 1 fps
    S[::4] = 0.1
    S[80:104:4] = 0.3
    rescored: list[int] = []

    def rescore(frames: np.ndarray) -> np.ndarray:
        rescored.extend(frames.tolist())
        return np.full(len(frames), 0.2)

    result, _, _ = run(S, {88: 5, 92: 5}, fps=4.0, budget=4, rescore=rescore)
    added = result.trace.iterations[0].added
    assert added and added == rescored[:len(added)] and any(f % 4 for f in added)  # frames between the scanned ones


def test_malformed_answers_are_counted_and_the_selection_goes_on():
    def rule(frames, prompt):
        return {20: "Score: 9", 21: "no idea", 22: VlmError("timeout"), 23: "Score: 4\nReasoning: ok"}.get(frames[0], "Score: 1")

    frames = IndexedFrames(60)
    analyse = VlmFrameAnalyser(RuleVlm(rule), frames.image, QUESTION, OPTIONS)
    result = select_frames_air(one_bump(), frames.times_s, analyse, SMALL, budget=4)
    assert analyse.counts[COUNTER_INVALID] == 2 and analyse.counts[COUNTER_VLM_ERRORS] == 1
    assert 23 in result.frame_indices.tolist()
    assert result.trace.iterations[0].scores == [None, None, None, 4]


def test_bad_inputs_are_refused():
    times = np.arange(4, dtype=np.float64)
    with pytest.raises(ValueError, match="no frame has a score"):
        select_frames_air(np.full(4, np.nan), times, lambda f: None)
    with pytest.raises(ValueError, match="same length"):
        select_frames_air(np.zeros(3), times, lambda f: None)
    with pytest.raises(ValueError, match="budget"):
        select_frames_air(np.zeros(4), times, lambda f: None, budget=0)


def test_evidence_spans_group_frames_within_d_min():
    spans = evidence_spans([22.0, 23.0, 24.0, 27.0, 40.0], 2.0)
    assert spans.tolist() == [[22.0, 24.0], [27.0, 27.0], [40.0, 40.0]]
    assert evidence_spans([], 2.0).shape == (0, 2)
