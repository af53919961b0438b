"""VideoQuestionAnswer: a Selection's frames, decoded by index from a tiny real video, answered by a
scripted VLM; n samples are voted, and no valid answer is an Answer with choice −1, counted."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.video_qa import VideoFrames, VideoQuestionAnswer, Vote, answer_prompt, choose_by_likelihood, vote_on_answers
from nodes.vlm import VlmError
from pipeline.harness import NodeHarness
from pipeline.messages import Selection
from pipeline.node import ParamsError
from tests.nodes.test_video_ingest import grey_index, write_clip
from tests.nodes.video_doubles import ScoringVlm, ScriptedVlm

QUESTION = "Which colour appears first?"
OPTIONS = ["red", "green", "blue", "yellow"]
N_FRAMES = 24


@pytest.fixture
def clip(tmp_path):
    return write_clip(tmp_path / "clip.mp4", [k * 100 for k in range(N_FRAMES)])


@pytest.fixture
def answerer(monkeypatch, clip):
    def make(*script, scoring: bool = False, **params) -> NodeHarness:
        vlm = (ScoringVlm if scoring else ScriptedVlm)(*script)
        monkeypatch.setattr("nodes.video_qa.SharedVlm", lambda spec: vlm)
        harness = NodeHarness(VideoQuestionAnswer, {"video": str(clip), "question": QUESTION, "options": OPTIONS,
                                                    "vlm": {"hf": "models/vlm"}, **params})
        harness.vlm = vlm
        return harness
    return make


def selection(frames) -> Selection:
    return Selection(frame_indices=np.array(frames, np.int64), spans_s=np.array([[0.5, 2.0]]), reasons=[])


def test_video_frames_are_fetched_by_index_with_exact_times(clip):
    frames = VideoFrames(str(clip))
    assert frames.n_frames == N_FRAMES
    np.testing.assert_allclose(frames.times_s, np.arange(N_FRAMES) / 10)
    assert [grey_index(frames.image(i)) for i in (0, 7, 23, 7)] == [0, 7, 23, 7]
    with pytest.raises(IndexError):
        frames.image(N_FRAMES)
    with pytest.raises(FileNotFoundError):
        VideoFrames(str(clip) + ".missing")


def test_the_prompt_letters_the_options_and_may_state_frame_times():
    prompt = answer_prompt(QUESTION, OPTIONS)
    assert "(A, B, C, D)" in prompt and "A. red\nB. green\nC. blue\nD. yellow" in prompt and "[t=" not in prompt
    assert "taken at [t=1.0s], [t=12.5s]." in answer_prompt(QUESTION, OPTIONS, [1.0, 12.5])


def test_n_samples_are_voted_and_invalid_ones_lower_the_confidence():
    vlm = ScriptedVlm(["B", "(C) blue", "The answer is B.", "I am not sure", "Option 9"])
    vote = vote_on_answers(vlm, [], "prompt", 4, n_samples=5, temperature=0.8, seed=3)
    assert vote.choice == 1 and vote.votes == {1: 2, 2: 1} and vote.confidence == pytest.approx(2 / 5)
    assert vlm.calls[0]["n_samples"] == 5 and vlm.calls[0]["temperature"] == 0.8
    tie = vote_on_answers(ScriptedVlm(["C", "A", "A", "C"]), [], "p", 4, n_samples=4, temperature=1.0)
    assert tie.choice == 2  # a tie goes to the answer seen first
    failed = vote_on_answers(ScriptedVlm(VlmError("HTTP 503")), [], "p", 4)
    assert failed == Vote(None, {}, 1, "VlmError: HTTP 503") and failed.confidence == 0.0


def test_answers_naming_an_option_vote_for_it():
    vlm = ScriptedVlm(["the blue one", "blue", "C", "green or blue"])
    vote = vote_on_answers(vlm, [], "p", 4, n_samples=4, temperature=1.0, option_texts=OPTIONS)
    assert vote.choice == 2 and vote.votes == {2: 3} and vote.confidence == pytest.approx(3 / 4)  # two named: invalid
    assert vote_on_answers(ScriptedVlm(["blue"]), [], "p", 4).choice is None  # without the options: invalid


def test_the_likeliest_option_wins_and_its_softmax_share_is_the_confidence():
    vlm = ScoringVlm([-60.0, -1.0, -1.0 - np.log(3.0), -50.0])  # shares e⁻¹ : e⁻¹/3: the winner 3/4
    vote = choose_by_likelihood(vlm, [], "prompt", OPTIONS)
    assert vote.choice == 1 and vote.votes == {1: 1} and vote.confidence == pytest.approx(0.75, abs=1e-3)
    assert vlm.calls[0]["answers"] == OPTIONS and vlm.calls[0]["prompt"] == "prompt"


@pytest.mark.parametrize("scores, error", [
    (VlmError("out of memory"), "VlmError: out of memory"),
    ([-1.0, float("nan"), -2.0, -3.0], "scored 4 options"),
    ([-1.0, -2.0], "scored 4 options"),
])
def test_a_failed_or_malformed_scoring_is_no_answer(scores, error):
    vote = choose_by_likelihood(ScoringVlm(scores), [], "p", OPTIONS)
    assert vote.choice is None and error in vote.error and vote.confidence == 0.0


def test_the_node_answers_by_likelihood_when_asked(answerer):
    harness = answerer([-9.0, -8.0, -1.0, -7.0], VlmError("backend down"), scoring=True, answer_by="likelihood")
    answer = harness.send("selection", selection([9, 3]))[0].message
    assert (answer.choice, answer.answer) == (2, "blue") and answer.confidence > 0.99
    assert [grey_index(image) for image in harness.vlm.calls[0]["images"]] == [3, 9]
    failed = harness.send("selection", selection([4]))[0].message
    assert failed.choice == -1 and harness.metrics["counters"] == {"answers": 1, "invalid_answers": 1, "vlm_errors": 1}


def test_the_selected_frames_are_answered_in_time_order(answerer):
    harness = answerer(["B", "B) green", "A"], n_samples=3, temperature=0.7)
    (out,) = harness.send("selection", selection([20, 5, 10]))
    answer = out.message
    assert (answer.choice, answer.answer, answer.question) == (1, "green", QUESTION)
    assert answer.confidence == pytest.approx(2 / 3) and answer.frame_indices.tolist() == [5, 10, 20]
    np.testing.assert_allclose(answer.spans_s, [[0.5, 2.0]])
    call = harness.vlm.calls[0]
    assert [grey_index(image) for image in call["images"]] == [5, 10, 20] and call["n_samples"] == 3
    assert harness.metrics["counters"] == {"answers": 1}


def test_no_valid_answer_is_an_invalid_answer_not_an_error(answerer):
    harness = answerer(["no idea"], VlmError("timeout"))
    first = harness.send("selection", selection([1, 2]))[0].message
    second = harness.send("selection", selection([3]))[0].message
    assert (first.choice, first.answer, second.choice) == (-1, "", -1)
    assert harness.metrics["counters"] == {"invalid_answers": 2, "vlm_errors": 1}


def test_frames_that_do_not_exist_are_left_out_and_counted(answerer):
    harness = answerer(["D"])
    answer = harness.send("selection", selection([2, N_FRAMES + 3]))[0].message
    assert answer.choice == 3 and answer.frame_indices.tolist() == [2]
    assert harness.metrics["counters"] == {"answers": 1, "frame_errors": 1}
    empty = harness.send("selection", selection([N_FRAMES + 4]))[0].message
    assert empty.choice == -1 and len(harness.vlm.calls) == 1  # nothing to show: the VLM is not asked


def test_sampling_several_greedy_answers_is_refused():
    with pytest.raises(ParamsError, match="temperature"):
        VideoQuestionAnswer({"video": "v.mp4", "question": QUESTION, "options": OPTIONS, "vlm": {"hf": "m"}, "n_samples": 5})
    with pytest.raises(ParamsError, match="options"):
        VideoQuestionAnswer({"video": "v.mp4", "question": QUESTION, "options": ["only"], "vlm": {"hf": "m"}})
    with pytest.raises(ParamsError, match="answer_by: generate"):
        VideoQuestionAnswer({"video": "v.mp4", "question": QUESTION, "options": OPTIONS, "vlm": {"hf": "m"},
                             "n_samples": 3, "temperature": 1.0, "answer_by": "likelihood"})
    with pytest.raises(ParamsError, match="answer_by"):
        VideoQuestionAnswer({"video": "v.mp4", "question": QUESTION, "options": OPTIONS, "vlm": {"hf": "m"},
                             "answer_by": "telepathy"})
