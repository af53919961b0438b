"""A.I.R.'s reasoning-based analysis: the VLM judges one frame at a time against the question on a 1–5
rubric and justifies it in one sentence (paper A.2.5).

The paper's prompt is summarised, not quoted, in reference/papers.md §1; `ANALYSIS_PROMPT` follows
that summary item by item: the expert-reasoner role, step-by-step reasoning about one image, the
question with its options, the five rubric levels in the paper's words, a quick judgement, two
examples, and the `Score: <1-5>` / `Reasoning: <one sentence>` output. An answer without a valid
score, a failed VLM call or a frame that cannot be decoded is an INVALID judgement, counted by kind,
never an exception.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nodes.video_decode import VideoDecodeError
from nodes.video_qa import format_options
from nodes.vlm import VlmAdapter
from nodes.vlm.parsing import parse_score

SCORE_LOW, SCORE_HIGH = 1, 5
ANALYSIS_TOKENS = 128  # a score line and one sentence, with room for a short preamble
REASON_CHARS = 240  # the longest reason kept
ANALYSIS_PROMPT = """You are an expert visual reasoner. Reason step by step, but quickly, about how well this image \
(one frame of a video) matches the query below, considering the answer options.

Query: {question}
{frame_time}Options:
{options}

Rate the frame on this scale:
1: not relevant to the query.
2: minor hints: something related is visible, but it does not help to answer.
3: preparatory or follow-up context: what happens just before or after the moment the query asks about.
4: clear but incomplete evidence for the answer.
5: fully sufficient: the frame alone answers the query.

Examples:
Query: "What does the man put into the box?" A frame showing the man dropping a red ball into the box:
Score: 5
Reasoning: The man is seen putting the red ball into the box, which answers the query.
Query: "What does the man put into the box?" A frame of an empty kitchen:
Score: 1
Reasoning: Neither the man nor the box is visible.

Answer in exactly this format:
Score: <1-5>
Reasoning: <one sentence>"""
FRAME_TIME = "The frame is at {clock} of the video.\n"
REASONING = re.compile(r"\breason(?:ing)?\s*[:\-]\s*(.+)", re.IGNORECASE)

COUNTER_VLM_CALLS = "vlm_calls"
COUNTER_INVALID = "invalid_vlm_answers"
COUNTER_VLM_ERRORS = "vlm_errors"
COUNTER_FRAME_ERRORS = "frame_errors"

FrameFetcher = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class Judgement:
    """The VLM's verdict on one frame: a 1–5 score (None: no valid one) and why."""

    score: int | None
    reason: str


FrameAnalyser = Callable[[int], Judgement]


def video_clock(t_s: float) -> str:
    """A time in the video as the shapes-world questions write it: "m:ss" ("0:07", "12:30")."""
    seconds = int(round(t_s))
    return f"{seconds // 60}:{seconds % 60:02d}"


def analysis_prompt(question: str, options: list[str], time_s: float | None = None) -> str:
    """The paper's analysis prompt; with `time_s`, also where the frame is in the video."""
    frame_time = FRAME_TIME.format(clock=video_clock(time_s)) if time_s is not None else ""
    return ANALYSIS_PROMPT.format(question=question, frame_time=frame_time,
                                  options=format_options(options) if options else "(none)")


def parse_judgement(text: object) -> Judgement:
    """Score and one-sentence reason from an answer; score None when it holds no valid 1–5 score."""
    if not isinstance(text, str):
        return Judgement(None, f"not a text answer: {text!r}"[:REASON_CHARS])
    score = parse_score(text, SCORE_LOW, SCORE_HIGH)
    if score is None:
        return Judgement(None, f"no 1-5 score in the VLM's answer: {text.strip()[:REASON_CHARS]!r}")
    match = REASONING.search(text)
    reason = (match.group(1) if match else text).strip()
    return Judgement(score, reason.splitlines()[0][:REASON_CHARS] if reason else "")


class VlmFrameAnalyser:
    """Judges frames one VLM call each (one image, greedy), counting calls and each kind of failure
    in `counts` (COUNTER_* keys). With `times_s` (every frame's time), each prompt says where its
    frame is in the video."""

    def __init__(self, vlm: VlmAdapter, fetch: FrameFetcher, question: str, options: list[str], *,
                 max_new_tokens: int = ANALYSIS_TOKENS, times_s: Sequence[float] | None = None):
        self.vlm, self.fetch = vlm, fetch
        self.question, self.options, self.times_s = question, options, times_s
        self.max_new_tokens = max_new_tokens
        self.counts: Counter[str] = Counter()

    def __call__(self, frame: int) -> Judgement:
        try:
            image = self.fetch(frame)
        except (VideoDecodeError, IndexError) as exc:
            self.counts[COUNTER_FRAME_ERRORS] += 1
            return Judgement(None, f"the frame could not be decoded: {exc}"[:REASON_CHARS])
        self.counts[COUNTER_VLM_CALLS] += 1
        try:
            prompt = analysis_prompt(self.question, self.options,
                                     float(self.times_s[frame]) if self.times_s is not None else None)
            texts = self.vlm.generate([image], prompt, max_new_tokens=self.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 — whatever the backend raised, this frame has no judgement
            self.counts[COUNTER_VLM_ERRORS] += 1
            return Judgement(None, f"the VLM call failed: {type(exc).__name__}: {exc}"[:REASON_CHARS])
        judgement = parse_judgement(texts[0] if texts else None)
        if judgement.score is None:
            self.counts[COUNTER_INVALID] += 1
        return judgement
