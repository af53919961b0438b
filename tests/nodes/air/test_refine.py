"""A.I.R.'s iterative steps on constructed signals, against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nodes.air.refine import (Candidate, Verdict, classify, density_frames, density_offsets, interval_potential,
                              interval_potentials, intervals_between, keep_top, lds_alpha, nearest, pick_candidates,
                              share_evenly, validate)

NAN = np.nan
P, U, N, X = Verdict.POSITIVE, Verdict.NEUTRAL, Verdict.NEGATIVE, Verdict.INVALID


def test_the_frame_set_splits_the_video_into_intervals_reaching_its_ends():
    assert intervals_between(np.array([3, 7]), 10).tolist() == [[0, 3], [3, 7], [7, 9]]
    assert intervals_between(np.array([0, 4, 9]), 10).tolist() == [[0, 4], [4, 9]]  # ends in the set: no empty interval


def test_potential_is_relevance_times_complexity_times_length():
    # mean 0.7/3, total variation 0.2 + 0.3 over 4 frames, 1 + 0.5 · log10(4)
    expected = (0.7 / 3) * (1 + 0.5 / 4) * (1 + 0.5 * math.log10(4))
    assert interval_potential(np.array([0.2, 0.4, 0.1]), 4, 0.5) == pytest.approx(expected)
    assert interval_potential(np.array([0.3]), 1, 0.5) == pytest.approx(0.3)  # log10(1) = 0, no variation
    assert interval_potential(np.array([]), 5, 0.5) == 0.0


# frames 0–12, scored every other frame; the frame set is {4, 8}
S_RANKING = np.array([0.1, NAN, 0.1, NAN, 0.2, NAN, 0.5, NAN, 0.3, NAN, 0.2, NAN, 0.2])


def test_intervals_rank_by_potential_skipping_unscored_frames():
    intervals = intervals_between(np.array([4, 8]), 13)
    potentials = interval_potentials(S_RANKING, intervals, 0.5)
    length = 1 + 0.5 * math.log10(4)
    expected = [(0.4 / 3) * (1 + 0.1 / 4) * length,  # [0, 4]: 0.1 0.1 0.2
                (1.0 / 3) * (1 + 0.5 / 4) * length,  # [4, 8]: 0.2 0.5 0.3
                (0.7 / 3) * (1 + 0.1 / 4) * length]  # [8, 12]: 0.3 0.2 0.2
    np.testing.assert_allclose(potentials, expected)
    assert np.argsort(-potentials).tolist() == [1, 2, 0]


def test_candidates_are_unanalysed_endpoints_of_the_best_intervals():
    frame_set = {2, 4, 8, 12}
    intervals = intervals_between(np.array(sorted(frame_set)), 13)  # [0,2] [2,4] [4,8] [8,12]
    potentials = np.array([0.1, 0.4, 0.9, 0.4])
    chosen = pick_candidates(intervals, potentials, frame_set, analysed=set(), count=3)
    assert chosen == [Candidate(4, (4, 8)), Candidate(8, (4, 8)), Candidate(2, (2, 4))]  # ties: the earlier interval
    chosen = pick_candidates(intervals, potentials, frame_set, analysed={4, 2}, count=5)
    assert chosen == [Candidate(8, (4, 8)), Candidate(12, (8, 12))]  # 0 is a video end, not in the set
    assert pick_candidates(intervals, potentials, frame_set, analysed=frame_set, count=5) == []


@pytest.mark.parametrize("score, verdict", [(5, P), (4, P), (3, U), (2, N), (1, N), (None, X)])
def test_scores_compare_with_theta(score, verdict):
    assert classify(score, 3) is verdict


def test_fill_up_takes_neutral_then_negative_then_invalid_by_clip_score():
    verdicts = [N, P, U, U, X, P, N]
    clip = np.array([0.1, 0.2, 0.3, 0.5, 0.9, 0.1, 0.4])
    assert validate(verdicts, clip, quota=5) == ([1, 5], [3, 2, 6])
    assert validate(verdicts, clip, quota=2) == ([1, 5], [])
    assert validate([X, N, X], np.array([0.2, 0.1, 0.3]), quota=3) == ([], [1, 2, 0])


def test_fill_up_as_in_the_paper_three_positive_and_two_neutral():
    # B = 32, I_max = 6: floor(32 / 6) = 5 frames per round; 3 Positive, so the 2 best Neutral join
    verdicts = [P, U, N, P, U, U, P, N]
    clip = np.array([0.3, 0.2, 0.9, 0.3, 0.25, 0.1, 0.3, 0.8])
    assert validate(verdicts, clip, quota=32 // 6) == ([0, 3, 6], [4, 1])


def test_more_positive_than_the_quota_are_all_kept():
    assert validate([P] * 7, np.zeros(7), quota=5) == ([0, 1, 2, 3, 4, 5, 6], [])


def test_early_stop_keeps_the_top_b_by_clip_score_in_time_order():
    S = np.array([0.0, 0.9, 0.0, 0.5, 0.0, 0.7, 0.0, 0.0, 0.0, 0.5])
    assert keep_top([9, 1, 5, 3], S, 3) == [1, 3, 5]  # 3 and 9 tie at 0.5: the earlier wins
    assert keep_top([9, 1], S, 3) == [1, 9]


def test_density_offsets_grow_by_beta_on_both_sides():
    np.testing.assert_allclose(density_offsets(1.0, 1.5, 3.0), [1, -1, 1.5, -1.5, 2.25, -2.25])
    np.testing.assert_allclose(density_offsets(1.0, 1.5, 3.375), [1, -1, 1.5, -1.5, 2.25, -2.25, 3.375, -3.375])
    assert len(density_offsets(1.0, 2.0, 0.5)) == 0
    with pytest.raises(ValueError):
        density_offsets(1.0, 1.0, 10.0)


def test_alpha_is_a_fraction_of_the_interval_with_a_floor():
    assert lds_alpha(100.0, 0.05, 0.625) == pytest.approx(5.0)
    assert lds_alpha(10.0, 0.05, 0.625) == 0.625


def test_density_sampling_places_the_asked_number_of_frames_around_each_center():
    times = np.arange(1001) / 10  # 100 s at 10 fps, every frame can be scored
    everything = np.ones(1001, bool)
    # alpha 1 s, beta 2: offsets ±1, ±2, ±4 s → frames 510, 490, 520, 480, 540
    assert density_frames([500], [1.0], [5], times, everything, taken=set(), beta=2.0) == [510, 490, 520, 480, 540]
    # a frame already in the set is skipped; the next offset takes its place
    assert density_frames([500], [1.0], [3], times, everything, taken={510}, beta=2.0) == [490, 520, 480]
    # two centers, 2 and 1 frames; center 20 (t=2 s) has no room before −2 s
    assert density_frames([500, 20], [1.0, 1.0], [2, 1], times, everything, set(), 2.0) == [510, 490, 30]


def test_without_rescoring_density_sampling_snaps_to_scanned_frames():
    times = np.arange(1001) / 10
    scanned = np.zeros(1001, bool)
    scanned[::10] = True  # one frame a second
    # alpha 0.625 s, beta 1.5: 50.625 → 51 s, 49.375 → 49 s, then ±0.94, ±1.41 snap to the same seconds
    # (skipped), ±2.11 → 52, 48, ±3.16 → 53, 47
    added = density_frames([500], [0.625], [6], times, scanned, taken={500}, beta=1.5)
    assert added == [510, 490, 520, 480, 530, 470]


def test_density_sampling_stops_when_the_offsets_leave_the_video():
    times = np.arange(11, dtype=np.float64)
    # offsets ±1, ±1.5, ±2.25, ±3.375, ±5.06, ±7.59 around t=5: 6, 4, (6.5 → 6 taken), (3.5 → 3: ties go
    # to the earlier frame), 7.25 → 7, (2.75 → 3 taken), 8.375 → 8, 1.625 → 2; the rest fall outside [0, 10]
    added = density_frames([5], [1.0], [100], times, np.ones(11, bool), {5}, 1.5)
    assert added == [6, 4, 3, 7, 8, 2]


def test_share_evenly_and_nearest():
    assert share_evenly(7, 3) == [3, 2, 2]
    assert share_evenly(0, 2) == [0, 0]
    assert share_evenly(5, 0) == []
    times = np.array([0.0, 1.0, 2.0])
    assert [nearest(times, t) for t in (-1.0, 0.5, 0.6, 1.4, 9.0)] == [0, 0, 1, 1, 2]
