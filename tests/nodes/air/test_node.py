"""AirFrameSelection on a tiny real video: the frames the VLM judges are decoded by index from the file
(each grey level tells its frame), the Selection carries frames, spans and reasons, and bad scores or
bad answers are counted instead of raised."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.air.node import AirFrameSelection
from pipeline.harness import NodeHarness
from pipeline.messages import FrameScores
from pipeline.node import ParamsError
from tests.nodes.test_video_ingest import grey_index, write_clip
from tests.nodes.video_doubles import RuleVlm, frame_scores

N_FRAMES, FRAME_MS = 30, 100  # 3 s at 10 fps
QUESTION = "When does the screen turn light grey?"


@pytest.fixture
def clip(tmp_path):
    return write_clip(tmp_path / "clip.mp4", [k * FRAME_MS for k in range(N_FRAMES)])


@pytest.fixture
def selector(monkeypatch, clip):
    """A harness around the node whose `SharedVlm` hands out a RuleVlm for `rule`, reading grey frames."""
    def make(rule, **params) -> NodeHarness:
        vlm = RuleVlm(rule, decode=grey_index)
        monkeypatch.setattr("nodes.air.node.SharedVlm", lambda spec: vlm)
        harness = NodeHarness(AirFrameSelection, {"video": str(clip), "question": QUESTION, "vlm": {"hf": "models/vlm"},
                                                  "budget": 2, "air": {"candidates": 2, "i_max": 2}, **params})
        harness.vlm = vlm
        return harness
    return make


def bump_scores(frames=np.arange(N_FRAMES)) -> FrameScores:
    scores = np.where((frames >= 10) & (frames < 15), 0.3, 0.1).astype(np.float32)
    return FrameScores(frame_indices=frames.astype(np.int64), times_s=frames * FRAME_MS / 1000, scores=scores, query=QUESTION)


def test_a_selection_from_decoded_frames(selector):
    # the event is frames 10–14; the 1-frame intervals inside it rank first, so 10 and 11 are judged,
    # both Positive: B = 2 is reached in the first round
    harness = selector(frame_scores({10: 5, 11: 4}))
    (out,) = harness.send("scores", bump_scores())
    selection = out.message
    assert selection.frame_indices.tolist() == [10, 11]
    np.testing.assert_allclose(selection.spans_s, [[1.0, 1.1]])
    assert selection.reasons == ["t=1.00s score 5 (positive): frame 10 rates 5.", "t=1.10s score 4 (positive): frame 11 rates 4."]
    assert harness.vlm.calls == [[10], [11]] and QUESTION in harness.vlm.prompts[0]
    assert harness.metrics["counters"] == {"vlm_calls": 2, "selections": 1}


def test_a_moment_named_in_the_question_moves_the_selection_there(selector):
    # CLIP's bump is at 1.0–1.4 s, the question asks about 0:02; with a narrow anchor the frames
    # around 2.0 s outrank the bump, and the VLM (every frame 4) validates the first two judged
    harness = selector(frame_scores({f: 4 for f in range(N_FRAMES)}), question="What is on screen at about 0:02?",
                       air={"candidates": 2, "i_max": 2, "time_anchor_width_s": 0.2})
    selection = harness.send("scores", bump_scores())[0].message
    assert all(abs(f - 20) <= 1 for f in selection.frame_indices.tolist())


def test_malformed_answers_are_counted_and_filled_up(selector):
    harness = selector(lambda frames, prompt: "Score: 11, very relevant" if frames[0] == 10 else "dunno")
    selection = harness.send("scores", bump_scores())[0].message
    assert len(selection.frame_indices) >= 1 and all("score - (filled up)" in r for r in selection.reasons)
    counters = harness.metrics["counters"]
    assert counters["invalid_vlm_answers"] == counters["vlm_calls"] >= 2 and counters["selections"] == 1


def test_scores_of_another_video_are_counted_not_selected(selector):
    harness = selector(frame_scores({}))
    assert harness.send("scores", bump_scores(np.arange(N_FRAMES + 5))) == []
    nan_scores = bump_scores()
    nan_scores.scores = np.full(N_FRAMES, np.nan, np.float32)
    assert harness.send("scores", nan_scores) == []
    assert harness.metrics["counters"] == {"invalid_scores": 2} and harness.vlm.calls == []


def test_params_are_checked_by_name():
    base = {"video": "v.mp4", "question": QUESTION, "vlm": {"hf": "models/vlm"}}
    with pytest.raises(ParamsError, match="params.air.gama"):
        AirFrameSelection({**base, "air": {"gama": 0.5}})
    with pytest.raises(ParamsError, match="params.budget"):
        AirFrameSelection({**base, "budget": 0})
    with pytest.raises(ParamsError, match="params.vlm"):
        AirFrameSelection({**base, "vlm": {"openai": "http://127.0.0.1:8000/v1"}})
