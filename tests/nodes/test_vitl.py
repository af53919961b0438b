"""Video-in-the-Loop: span parsing on many formats and on garbage, stage 2 within the frame budget and
inside the spans, the majority vote, and the node as a one-shot source on a tiny real video."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.vitl import (VideoInTheLoop, VitlParams, clean_spans, frames_in_spans, parse_spans, parse_time, uniform_subset,
                        video_in_the_loop)
from nodes.vlm import VlmError
from pipeline.harness import NodeHarness
from tests.nodes.test_video_ingest import grey_index, write_clip
from tests.nodes.video_doubles import IndexedFrames, ScoringVlm, ScriptedVlm, image_index

QUESTION = "What colour is the shape that appears at about 12 s?"
OPTIONS = ["red", "green", "blue", "yellow"]


def params(**changes) -> VitlParams:
    return VitlParams(video="unused.mp4", question=QUESTION, options=OPTIONS, vlm={"hf": "models/vlm"}, **changes)


@pytest.mark.parametrize("text, spans", [
    ('{"spans": [[12.0, 31.5]]}', [(12.0, 31.5)]),
    ('Here you go:\n```json\n{"spans": [[1, 2], [3.5, 4]]}\n```', [(1.0, 2.0), (3.5, 4.0)]),
    ('{"segments": [{"start": "0:12", "end": "0:20"}]}', [(12.0, 20.0)]),
    ('{"start": 5, "end": 9.5}', [(5.0, 9.5)]),
    ("[12.0, 31.5]", [(12.0, 31.5)]),
    ("The relevant parts are [[10, 15], [40, 45]].", [(10.0, 15.0), (40.0, 45.0)]),
    ('[{"start_s": 3, "end_s": 4}, "junk", [7, 8]]', [(3.0, 4.0), (7.0, 8.0)]),
    ('[["1:00", "1:05.5"]]', [(60.0, 65.5)]),
    ("12.5-20s", [(12.5, 20.0)]),
    ("12.5 s – 20.0 s", [(12.5, 20.0)]),
    ("The moment is from 0:12 to 0:20.", [(12.0, 20.0)]),
    ("between 3 and 7 seconds", [(3.0, 7.0)]),
    ("00:01:05-00:01:10 and 2:00 until 2:30", [(65.0, 70.0), (120.0, 150.0)]),
    ("frames [t=12.0s] to [t=20.0s] show it", [(12.0, 20.0)]),
    ("20-12.5", [(20.0, 12.5)]),  # read as given; clean_spans drops it
])
def test_spans_are_read_from_json_and_prose(text, spans):
    assert parse_spans(text) == spans


@pytest.mark.parametrize("garbage", [
    "", "I don't know.", "The answer is B.", "Score: 4", "{}", "[]", '{"spans": "soon"}', "[1, 2, 3]", "at 12 s",
    '{"spans": [["a", "b"]]}', "1:75-2:00", None, 42, ["12-20"],
])
def test_garbage_has_no_spans(garbage):
    assert parse_spans(garbage) is None


@pytest.mark.parametrize("value, seconds", [
    (12, 12.0), (12.5, 12.5), ("75", 75.0), ("75.5s", 75.5), ("75 seconds", 75.0), ("1:15", 75.0), ("0:01:15.5", 75.5),
    (-3, None), (True, None), (float("nan"), None), ("1:60", None), ("soon", None), (None, None),
])
def test_times(value, seconds):
    assert parse_time(value) == seconds


def test_spans_are_clipped_merged_and_sorted():
    spans = [(50.0, 70.0), (20.0, 12.0), (5.0, 10.0), (8.0, 12.0), (-4.0, 1.0), (80.0, 90.0), (3.0, 3.0)]
    assert clean_spans(spans, 0.0, 60.0) == [(0.0, 1.0), (5.0, 12.0), (50.0, 60.0)]
    assert clean_spans([(70.0, 80.0)], 0.0, 60.0) == []


def test_uniform_subset_keeps_the_ends_and_the_budget():
    assert uniform_subset(np.arange(100, 200), 5).tolist() == [100, 125, 150, 174, 199]
    assert uniform_subset(np.arange(3), 5).tolist() == [0, 1, 2]
    assert len(np.unique(uniform_subset(np.arange(17), 16))) == 16


def test_frames_in_spans_follow_the_rate_and_a_short_span_gets_its_middle_frame():
    times = np.arange(600) / 10
    assert frames_in_spans(times, [(12.5, 14.0)], 2.0).tolist() == [125, 130, 135]
    assert frames_in_spans(times, [(1.0, 2.0), (1.5, 3.0)], 1.0).tolist() == [10, 15, 25]
    assert frames_in_spans(times, [(20.01, 20.04)], 2.0).tolist() == [200]  # no frame inside: the nearest to 20.025


def test_stage_two_reads_only_the_spans_within_the_budget():
    frames = IndexedFrames(600, fps=10)  # 60 s
    vlm = ScriptedVlm(['{"spans": [[10, 40]]}'], ["B"])
    result = video_in_the_loop(vlm, frames, params(budget=16))
    ground_call, answer_call = vlm.calls
    assert len(ground_call["images"]) == 16 and "[t=0.0s]" in ground_call["prompt"] and "60.0-second" in ground_call["prompt"]
    assert result.spans == [(10.0, 40.0)]
    assert len(result.answer_frames) == 16 and all(100 <= f < 400 for f in result.answer_frames)
    assert result.answer_frames[0] == 100 and result.answer_frames[-1] >= 395  # spread over the whole span
    assert [image_index(image) for image in answer_call["images"]] == result.answer_frames
    assert "[t=10.0s]" in answer_call["prompt"] and "(A, B, C, D)" in answer_call["prompt"]
    assert result.vote.choice == 1


def test_short_spans_are_read_at_the_answer_rate():
    vlm = ScriptedVlm(["The answer is visible 12.5-14s."], ["C"])
    result = video_in_the_loop(vlm, IndexedFrames(600, fps=10), params(answer_fps=2.0))
    assert result.answer_frames == [125, 130, 135] and result.vote.choice == 2


def test_no_usable_span_means_the_whole_video_uniformly():
    for grounding in (["I am not sure where."], ["[[70, 90]]"], VlmError("HTTP 500")):  # nothing, outside, failure
        vlm = ScriptedVlm(grounding, ["A"])
        result = video_in_the_loop(vlm, IndexedFrames(600, fps=10), params(budget=8))
        assert result.spans == [] and len(result.answer_frames) == 8
        assert result.answer_frames[0] == 0 and result.answer_frames[-1] >= 590
        assert result.grounding.failed == isinstance(grounding, Exception) and result.vote.choice == 0


def test_answers_are_sampled_and_voted():
    vlm = ScriptedVlm(["[2, 5]"], ["D", "answer: B", "(D) yellow", "no idea", "B"])
    result = video_in_the_loop(vlm, IndexedFrames(100), params(n_samples=5, temperature=0.7, seed=11))
    assert result.vote.choice == 3 and result.vote.votes == {3: 2, 1: 2} and result.vote.confidence == pytest.approx(0.4)
    assert vlm.calls[1]["n_samples"] == 5 and vlm.calls[1]["temperature"] == 0.7


def test_stage_two_may_answer_by_likelihood():
    vlm = ScoringVlm(["[[10, 20]]"], [-5.0, -4.0, -0.5, -6.0])
    result = video_in_the_loop(vlm, IndexedFrames(600, fps=10), params(budget=4, answer_by="likelihood"))
    assert result.spans == [(10.0, 20.0)] and result.vote.choice == 2
    answer_call = vlm.calls[1]
    assert answer_call["answers"] == OPTIONS and "[t=10.0s]" in answer_call["prompt"]


def test_undecodable_frames_are_left_out():
    frames = IndexedFrames(20, broken=(3, 4))
    result = video_in_the_loop(ScriptedVlm(["[2, 6]"], ["A"]), frames, params())
    assert 3 not in result.grounding.frames and result.answer_frames == [2, 5]  # 2–6 at 4 fps on a 1 fps video
    assert len(result.grounding.frame_errors) == 2 and len(result.frame_errors) == 2


@pytest.fixture
def vitl_node(monkeypatch, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", [k * 250 for k in range(24)])  # 6 s at 4 fps

    def make(*script, **changes) -> NodeHarness:
        vlm = ScriptedVlm(*script)
        monkeypatch.setattr("nodes.vitl.SharedVlm", lambda spec: vlm)
        harness = NodeHarness(VideoInTheLoop, {**params(**changes).model_dump(), "video": str(clip)})
        harness.vlm = vlm
        return harness
    return make


def test_the_node_answers_once_from_the_grounded_frames(vitl_node):
    harness = vitl_node(["The shape shows up from 0:02 to 0:03."], ["B"], answer_fps=2.0)
    outputs = harness.tick()
    spans, answer = (o.message for o in outputs)
    assert [o.port for o in outputs] == ["spans", "answer"]
    assert [grey_index(image) for image in harness.vlm.calls[0]["images"]] == [0, 4, 8, 12, 16, 20]  # 1 fps skim
    assert spans.frame_indices.tolist() == [8, 10] and spans.spans_s.tolist() == [[2.0, 3.0]]
    assert [grey_index(image) for image in harness.vlm.calls[1]["images"]] == [8, 10]
    assert (answer.choice, answer.answer) == (1, "green") and answer.frame_indices.tolist() == [8, 10]
    assert harness.tick() == [] and harness.runner.finished
    assert harness.metrics["counters"] == {"answers": 1}


def test_the_node_counts_bad_grounding_and_bad_answers(vitl_node):
    harness = vitl_node(VlmError("timeout"), ["garbage"], budget=4)
    spans, answer = (o.message for o in harness.tick())
    assert spans.spans_s.shape == (0, 2) and len(spans.frame_indices) == 4 and answer.choice == -1
    assert harness.metrics["counters"] == {"vlm_errors": 1, "invalid_spans": 1, "invalid_answers": 1}
