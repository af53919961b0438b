"""A.I.R.'s adaptive steps on constructed score curves, each against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from nodes.air.coarse import (Event, adaptive_budget, allocate_frames, find_events, fit_gmm_1d, gmm_threshold,
                              initial_frames, merge_events, prune_events, scan_period)
from nodes.air.config import AirConfig

STORAGE_FPS = 24  # scanned frames are every 24th frame of the video, one per second
REG = AirConfig().gmm_reg


def two_bump_curve() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 s scanned at 1 fps: background 0.09/0.11 by frame parity (mean 0.1, std 0.01), bumps of
    exactly 0.3 at seconds 10–13 and 25–30."""
    seconds = np.arange(40)
    scores = np.where(seconds % 2 == 0, 0.09, 0.11)
    scores[10:14] = scores[25:31] = 0.3
    return seconds * STORAGE_FPS, seconds.astype(np.float64), scores


@pytest.mark.parametrize("duration_s, expected", [(600, 32), (300, 32), (150, 16), (100, 10), (30, 8), (0, 8)])
def test_budget_grows_with_length_within_v_min_and_v_max(duration_s, expected):
    assert adaptive_budget(duration_s, AirConfig()) == expected


def test_budget_follows_a_smaller_v_max():
    assert adaptive_budget(600, AirConfig(v_max=16)) == 16
    assert adaptive_budget(60, AirConfig(v_max=16)) == 8


def test_gmm_finds_the_background_and_the_bumps():
    _, _, scores = two_bump_curve()
    gmm = fit_gmm_1d(scores, reg=REG)
    np.testing.assert_allclose(gmm.means, [0.1, 0.3], atol=1e-12)
    np.testing.assert_allclose(gmm.stds, [math.sqrt(0.01 ** 2 + REG), math.sqrt(REG)], rtol=1e-9)
    np.testing.assert_allclose(gmm.weights, [30 / 40, 10 / 40], atol=1e-12)
    # T = max μ − γ · max σ = 0.3 − 0.7 · sqrt(0.01² + reg)
    assert gmm_threshold(gmm, 0.7) == pytest.approx(0.3 - 0.7 * math.sqrt(1e-4 + REG), abs=1e-12)


def test_gmm_is_deterministic_and_handles_degenerate_input():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.02, 300), rng.normal(0.35, 0.02, 40)])
    first, second = fit_gmm_1d(values), fit_gmm_1d(values)
    np.testing.assert_array_equal(first.means, second.means)
    assert first.means[0] == pytest.approx(0.2, abs=0.01) and first.means[1] == pytest.approx(0.35, abs=0.01)
    flat = fit_gmm_1d(np.full(5, 0.25))
    np.testing.assert_allclose(flat.means, [0.25, 0.25])
    assert gmm_threshold(flat, 0.7) == pytest.approx(0.25 - 0.7 * math.sqrt(REG))
    assert fit_gmm_1d(np.array([0.4])).means[1] == 0.4
    with pytest.raises(ValueError, match="no scores"):
        fit_gmm_1d(np.array([]))


def test_two_bumps_give_exactly_two_events():
    indices, times, scores = two_bump_curve()
    threshold = gmm_threshold(fit_gmm_1d(scores, reg=REG), 0.7)
    events = find_events(indices, times, scores, threshold, scan_period(times))
    assert events == [Event(10 * STORAGE_FPS, 13 * STORAGE_FPS, 10.0, 14.0),
                      Event(25 * STORAGE_FPS, 30 * STORAGE_FPS, 25.0, 31.0)]
    assert [e.duration_s for e in events] == [4.0, 6.0]


def test_runs_at_the_ends_and_single_frames_are_events():
    scores = np.array([0.5, 0.5, 0.1, 0.5, 0.1, 0.1, 0.5])
    times = np.arange(7, dtype=np.float64)
    events = find_events(np.arange(7), times, scores, 0.5, 1.0)
    assert [(e.first, e.last, e.start_s, e.end_s) for e in events] == [(0, 1, 0.0, 2.0), (3, 3, 3.0, 4.0), (6, 6, 6.0, 7.0)]


def test_events_closer_than_d_min_merge():
    events = [Event(0, 2, 0.0, 3.0), Event(5, 6, 5.0, 7.0), Event(9, 9, 9.5, 10.5), Event(14, 15, 14.0, 16.0)]
    # gaps: 5 − 3 = 2 (≤ 2: merge), 9.5 − 7 = 2.5 (keep apart), 14 − 10.5 = 3.5
    assert merge_events(events, 2.0) == [Event(0, 6, 0.0, 7.0), Event(9, 9, 9.5, 10.5), Event(14, 15, 14.0, 16.0)]
    assert merge_events(events, 2.5) == [Event(0, 9, 0.0, 10.5), Event(14, 15, 14.0, 16.0)]
    assert merge_events([], 2.0) == []


def test_a_one_frame_dip_inside_an_event_is_merged_over():
    scores = np.array([0.1, 0.5, 0.5, 0.2, 0.5, 0.5, 0.1, 0.1, 0.1, 0.5])
    times = np.arange(10, dtype=np.float64)
    events = merge_events(find_events(np.arange(10), times, scores, 0.5, 1.0), 2.0)
    assert events == [Event(1, 5, 1.0, 6.0), Event(9, 9, 9.0, 10.0)]  # 9 − 6 = 3 s apart: separate


def test_short_events_are_pruned_but_never_all():
    events = [Event(0, 2, 0.0, 3.0), Event(10, 13, 10.0, 13.5), Event(20, 20, 20.0, 21.0)]
    assert prune_events(events, 3.0) == [Event(10, 13, 10.0, 13.5)]  # 3.0 s is not longer than l_min
    short = [Event(0, 0, 0.0, 1.0), Event(5, 6, 5.0, 7.0), Event(9, 10, 9.0, 11.0)]
    assert prune_events(short, 3.0) == [Event(5, 6, 5.0, 7.0)]  # the longest; the earlier of equals
    assert prune_events([], 3.0) == []


@pytest.mark.parametrize("durations, capacities, total, expected", [
    ([10, 30], [100, 100], 8, [2, 6]),  # floor+1 gives 3, 7: one back from each, the earlier first
    ([1, 1, 8], [100, 100, 100], 5, [1, 1, 3]),  # every event keeps one
    ([10, 30], [1, 100], 8, [1, 7]),  # capped by the frames an event has
    ([1, 2, 3], [100, 100, 100], 2, [0, 1, 1]),  # more events than frames: the shortest gets none
    ([1, 1], [2, 20], 10, [2, 8]),  # short of frames in one event: the other takes them
    ([5, 5], [1, 1], 10, [1, 1]),  # all frames of all events, fewer than asked
])
def test_frames_are_shared_over_events_by_duration(durations, capacities, total, expected):
    k = allocate_frames(np.array(durations, float), np.array(capacities), total)
    assert k.tolist() == expected


def test_initial_sample_takes_each_events_best_frames():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.6, 0.2, 0.1, 0.4, 0.8, 0.9])
    indices = np.arange(10) * 2
    events = [Event(4, 10, 2.0, 6.0), Event(14, 16, 7.0, 9.0)]  # scanned frames 2–5 and 7–8
    # durations 4 and 2 of total 3: shares 2 and 1, floor+1 = 3, 2, trimmed to 2, 1
    assert initial_frames(events, indices, scores, 3).tolist() == [6, 8, 16]
    assert initial_frames(events, indices, scores, 100).tolist() == [4, 6, 8, 10, 14, 16]


def test_config_refuses_bad_values_by_name():
    class Holder(BaseModel):
        air: AirConfig = AirConfig()

    assert Holder.model_validate({"air": {"gamma": 0.5}}).air.gamma == 0.5
    for bad, words in (({"beta": 1.0}, "beta"), ({"v_min": 40}, "v_min"), ({"theta": 6}, "theta"), ({"gama": 1}, "gama")):
        with pytest.raises(ValidationError, match=words):
            Holder.model_validate({"air": bad})
