"""The VLM's 1–5 judgement of one frame: the prompt carries the rubric and the options, and every kind of
bad answer is an invalid judgement, counted by kind, never an exception."""
from __future__ import annotations

import pytest

from nodes.air.analysis import (COUNTER_FRAME_ERRORS, COUNTER_INVALID, COUNTER_VLM_CALLS, COUNTER_VLM_ERRORS, Judgement,
                                VlmFrameAnalyser, analysis_prompt, parse_judgement)
from nodes.vlm import VlmError
from tests.nodes.video_doubles import IndexedFrames, RuleVlm

QUESTION = "What colour is the shape that appears first?"
OPTIONS = ["red", "green", "blue", "yellow"]


def test_the_prompt_holds_question_options_rubric_and_output_format():
    prompt = analysis_prompt(QUESTION, OPTIONS)
    for words in (QUESTION, "A. red", "D. yellow", "expert visual reasoner", "step by step", "1: not relevant",
                  "2: minor hints", "3: preparatory or follow-up context", "4: clear but incomplete evidence",
                  "5: fully sufficient", "Score: <1-5>", "Reasoning: <one sentence>"):
        assert words in prompt, words
    assert "(none)" in analysis_prompt(QUESTION, [])


@pytest.mark.parametrize("text, score, reason", [
    ("Score: 4\nReasoning: The red circle is entering.", 4, "The red circle is entering."),
    ("score:5 reasoning - it shows the answer\nmore", 5, "it shows the answer"),
    ("The frame is weak evidence.\nScore: 2/5\nReasoning: only 3 shapes, none red.", 2, "only 3 shapes, none red."),
    ("3", 3, "3"),
])
def test_valid_answers_give_score_and_reason(text, score, reason):
    assert parse_judgement(text) == Judgement(score, reason)


@pytest.mark.parametrize("text", ["Score: 7\nReasoning: very relevant", "I cannot tell.", "", "Score: 4.5", None, 42])
def test_malformed_answers_have_no_score(text):
    judgement = parse_judgement(text)
    assert judgement.score is None and judgement.reason


def test_the_analyser_counts_calls_and_each_kind_of_failure():
    def rule(frames, prompt):
        return {0: "Score: 4\nReasoning: yes.", 1: "no idea", 2: VlmError("HTTP 500")}[frames[0]]

    vlm = RuleVlm(rule)
    analyse = VlmFrameAnalyser(vlm, IndexedFrames(5, broken=(3,)).image, QUESTION, OPTIONS)
    results = [analyse(frame) for frame in (0, 1, 2, 3)]
    assert [r.score for r in results] == [4, None, None, None]
    assert "HTTP 500" in results[2].reason and "could not be decoded" in results[3].reason
    assert analyse.counts == {COUNTER_VLM_CALLS: 3, COUNTER_INVALID: 1, COUNTER_VLM_ERRORS: 1, COUNTER_FRAME_ERRORS: 1}
    assert vlm.calls == [[0], [1], [2]] and QUESTION in vlm.prompts[0]


def test_with_frame_times_each_prompt_says_where_its_frame_is():
    vlm = RuleVlm(lambda frames, prompt: "Score: 3\nReasoning: context.")
    analyse = VlmFrameAnalyser(vlm, IndexedFrames(3).image, QUESTION, OPTIONS, times_s=[0.0, 7.4, 72.5])
    for frame in (1, 2):
        analyse(frame)
    assert "The frame is at 0:07 of the video." in vlm.prompts[0]
    assert "The frame is at 1:12 of the video." in vlm.prompts[1]  # 72.5 s rounds to the even 72
    assert "The frame is at" not in analysis_prompt(QUESTION, OPTIONS)  # the paper's prompt, without times
