"""`AirFrameSelection`: a CLIP prescan's FrameScores in, the A.I.R. Selection out (frames in time order,
evidence spans, and per frame the VLM's score and one-sentence reason).

The frames the VLM judges are decoded from `video` by index (exact presentation times); the scores'
frame indices must be indices of that video. Malformed VLM answers, failed calls and undecodable
frames are judged invalid and counted (`invalid_vlm_answers`, `vlm_errors`, `frame_errors`) next to
`vlm_calls`; they never stop a selection. Scores that do not fit the video are counted
(`invalid_scores`) and produce no selection.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nodes.air.analysis import ANALYSIS_TOKENS, Judgement, VlmFrameAnalyser
from nodes.air.config import AirConfig
from nodes.air.selector import SelectedFrame, evidence_spans, select_frames_air
from nodes.air.time_anchor import question_moments
from nodes.video_qa import DEFAULT_MAX_SIDE, OPTION_LETTERS, VideoFrames
from nodes.vlm import SharedVlm, VlmAdapter
from nodes.vlm.adapter import parse_vlm_spec
from pipeline.messages import FrameScores, Selection
from pipeline.node import Node

COUNTER_SELECTIONS = "selections"
COUNTER_INVALID_SCORES = "invalid_scores"
NO_SCORE = "-"
PROGRESS_UNIT = "frames judged"


class AirParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    video: str = Field(min_length=1, description="the local video file the scores were computed on")
    question: str = Field(min_length=1)
    options: list[str] = Field(default_factory=list, max_length=len(OPTION_LETTERS),
                               description="the multiple-choice options, shown to the VLM with the question")
    vlm: dict[str, Any] = Field(description="the model: {hf: PATH} or {openai: URL, model: NAME} (see nodes.vlm.adapter)")
    budget: int | None = Field(None, ge=1, description="B, the most frames selected; None: A.I.R.'s adaptive budget")
    air: AirConfig = Field(default_factory=AirConfig, description="A.I.R. hyper-parameters (see nodes.air.config)")
    max_side: int | None = Field(DEFAULT_MAX_SIDE, ge=8, description="shrink frames so the longer side is at most this")
    analysis_tokens: int = Field(ANALYSIS_TOKENS, ge=8, description="max new tokens of one frame's judgement")

    @field_validator("vlm")
    @classmethod
    def _valid_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        parse_vlm_spec(spec)  # checks the spec only: validating a graph loads no model
        return spec


def describe(frame: SelectedFrame) -> str:
    """One line per selected frame: when, the VLM's score, how it was validated, and why."""
    score = NO_SCORE if frame.vlm_score is None else str(frame.vlm_score)
    how = "filled up" if frame.filled else "positive"
    return f"t={frame.time_s:.2f}s score {score} ({how}): {frame.reason}"


def score_vector(msg: FrameScores, n_frames: int) -> np.ndarray:
    """The sparse S over all frames (NaN where unscored); ValueError if the scores do not fit the video."""
    indices = np.asarray(msg.frame_indices, np.int64)
    scores = np.asarray(msg.scores, np.float64)
    if indices.ndim != 1 or indices.shape != scores.shape:
        raise ValueError(f"frame_indices {indices.shape} and scores {scores.shape} do not pair up")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_frames):
        raise ValueError(f"frame indices {indices.min()}..{indices.max()} fall outside the video's {n_frames} frames")
    S = np.full(n_frames, np.nan)
    S[indices] = scores
    if not np.any(np.isfinite(S)):
        raise ValueError("no finite score")
    return S


class AirFrameSelection(Node):
    Params = AirParams
    inputs = {"scores": FrameScores}
    outputs = {"selection": Selection}

    def setup(self) -> None:
        self.frames = VideoFrames(self.params.video, self.params.max_side)
        self.vlm: VlmAdapter = SharedVlm(self.params.vlm)  # one copy per process, shared by the graph's nodes

    def close(self) -> None:
        vlm = getattr(self, "vlm", None)
        if vlm is not None:
            vlm.close()

    def on_scores(self, msg: FrameScores) -> None:
        p = self.params
        try:
            S = score_vector(msg, self.frames.n_frames)
        except ValueError as exc:
            self.count(COUNTER_INVALID_SCORES)
            self.log.error("%s: scores not usable: %s", p.video, exc)
            return
        analyser = VlmFrameAnalyser(self.vlm, self.frames.image, p.question, p.options, max_new_tokens=p.analysis_tokens,
                                    times_s=self.frames.times_s if p.air.frame_time else None)
        bound = p.air.candidates * p.air.i_max  # the most frames A.I.R. asks the VLM about
        judged: list[int] = []

        def analyse(frame: int) -> Judgement:
            judged.append(frame)
            self.report_progress(len(judged), bound, PROGRESS_UNIT)
            return analyser(frame)

        result = select_frames_air(S, self.frames.times_s, analyse, p.air, budget=p.budget,
                                   moments_s=question_moments(p.question))
        self.report_progress(len(judged), len(judged), PROGRESS_UNIT)  # done: it may stop below the bound
        for name, n in analyser.counts.items():
            self.count(name, n)
        self.count(COUNTER_SELECTIONS)
        trace = result.trace
        self.log.info("%s: %d of B=%d frames after %d iterations (%s), %d frames analysed, %d events over T=%.4f, "
                      "time anchors at %s s", p.video, len(result.frames), trace.budget, len(trace.iterations),
                      trace.stop_reason, trace.analysed, len(trace.events), trace.threshold, trace.moments_s or "none")
        self.emit("selection", Selection(stamp_ns=msg.stamp_ns, frame_indices=result.frame_indices,
                                         spans_s=evidence_spans([f.time_s for f in result.frames], p.air.d_min_s),
                                         reasons=[describe(f) for f in result.frames]))
