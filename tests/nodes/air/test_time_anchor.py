"""Time anchors (not in the paper): the moments a question names are parsed exactly, their prior and
its blend with CLIP scores equal hand-computed values, and A.I.R. looks where the question points
while a question without a moment keeps the paper's behaviour."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nodes.air.analysis import VlmFrameAnalyser
from nodes.air.config import AirConfig
from nodes.air.selector import select_frames_air
from nodes.air.time_anchor import TimeAnchor, anchor_prior, question_moments
from tests.nodes.video_doubles import IndexedFrames, RuleVlm, frame_scores


@pytest.mark.parametrize("question, moments", [
    ("What colour was the shape that appeared at about 2:34?", [154.0]),
    ("What happens at 1:02:03 of the recording?", [3723.0]),
    ("Which came first, the one at 0:07 or the one at 12:30?", [7.0, 750.0]),
    ("Which shape vanished last?", []),
    ("Is 3:75 a time? Is 1:2:3:4?", []),  # 75 is no seconds value; four fields are no clock time
])
def test_question_moments(question, moments):
    assert question_moments(question) == moments


def test_the_prior_is_a_gaussian_around_the_nearest_moment():
    times = np.array([0.0, 8.0, 10.0, 12.0, 30.0, 40.0])
    prior = anchor_prior(times, [10.0, 40.0], width_s=2.0)
    np.testing.assert_allclose(prior, [math.exp(-12.5), math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-12.5), 1.0])
    assert not anchor_prior(times, [], width_s=2.0).any()


def test_the_blend_scales_clip_by_the_prescan_and_keeps_unscored_frames_unscored():
    S = np.array([0.2, np.nan, 0.3, 0.4])
    anchor = TimeAnchor.fit(S, np.array([0.0, 1.0, 2.0, 3.0]), [3.0], weight=0.5, width_s=1.0)
    assert (anchor.lo, anchor.hi) == (0.2, 0.4)
    blended = anchor.blend(S, np.arange(4))
    np.testing.assert_allclose(blended[[0, 2, 3]], [0.5 * math.exp(-4.5), 0.25 + 0.5 * math.exp(-0.5), 1.0])
    assert np.isnan(blended[1])
    # a later CLIP score blends on the prescan's scale, even outside it
    np.testing.assert_allclose(anchor.blend(np.array([0.5]), np.array([1])), [0.75 + 0.5 * math.exp(-2.0)])


def select(question: str, config: AirConfig = AirConfig(candidates=4, i_max=3)):
    """60 s at 1 fps; CLIP's bump is at 40–45 s; the VLM rates every frame 4 (all Positive)."""
    S = np.full(60, 0.1)
    S[40:46] = 0.3
    frames = IndexedFrames(60, 1.0)
    analyse = VlmFrameAnalyser(RuleVlm(frame_scores({f: 4 for f in range(60)})), frames.image, question, [])
    return select_frames_air(S, frames.times_s, analyse, config, budget=4, moments_s=question_moments(question)), S


def test_a_named_moment_draws_the_selection_to_it():
    result, S = select("What appeared at about 0:12?")
    assert all(abs(t - 12.0) <= 2.0 for t in (f.time_s for f in result.frames))
    assert [f.clip_score for f in result.frames] == [S[f.frame] for f in result.frames]  # CLIP's own score reported
    assert result.trace.moments_s == [12.0]


def test_without_a_moment_or_with_weight_zero_the_paper_selection_stands():
    plain, _ = select("What appeared?")
    off, _ = select("What appeared at about 0:12?", AirConfig(candidates=4, i_max=3, time_anchor_weight=0.0))
    assert plain.frame_indices.tolist() == off.frame_indices.tolist()
    assert plain.trace.moments_s == off.trace.moments_s == []  # nothing anchored either run
    assert all(40 <= f <= 45 for f in plain.frame_indices)


@pytest.mark.parametrize("field, value", [("time_anchor_weight", 1.5), ("time_anchor_weight", -0.1),
                                          ("time_anchor_width_s", 0.0)])
def test_bad_anchor_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        AirConfig(**{field: value})


def test_frames_rescored_by_density_sampling_blend_on_the_prescan_scale():
    S = np.full(240, np.nan)  # 60 s at 4 fps, scanned at 1 fps; CLIP's bump at 40–45 s
    S[::4] = 0.1
    S[160:184:4] = 0.3
    frames = IndexedFrames(240, 4.0)
    analyse = VlmFrameAnalyser(RuleVlm(frame_scores({f: 4 for f in range(240)})), frames.image, "at about 0:12?", [])
    result = select_frames_air(S, frames.times_s, analyse, AirConfig(candidates=4, i_max=3), budget=8,
                               rescore=lambda f: np.full(len(f), 0.2), moments_s=[12.0])
    rescored = [f for f in result.frames if f.frame % 4]
    assert rescored and all(f.clip_score == 0.2 for f in rescored)
    assert all(abs(f.time_s - 12.0) <= 3.0 for f in result.frames)
