"""Answering a multiple-choice question about a video from a few of its frames: `VideoQuestionAnswer`
takes a `Selection` (e.g. from A.I.R.) and emits an `Answer`; the pieces (frames by index, the
answering prompt, sampling n answers and voting) serve Video-in-the-Loop and A.I.R.'s analysis too.

Two ways to answer (`answer_by`):
- generate (the default, any backend): the VLM writes its answer, which is parsed for a letter or one
  option's text. Test-time scaling: n sampled answers, the majority choice wins (ties: the first seen);
  confidence is the winner's share of all n samples, so invalid answers lower it.
- likelihood (backends that see the logits: local checkpoints): every option's text is scored as the
  reply and the likeliest wins, as multiple-choice benchmarks score small language models; there is
  no invalid answer, and confidence is the winner's softmax share over the options' log-likelihoods.
  A small VLM trained to answer with an option's text (`groundloop train vlm --qa-target text`) often
  names, unconstrained, a shape that is no option: 37–69 % invalid on the benchmark's 300 s videos.
  configs/video_qa_air.yaml and video_qa_vitl.yaml answer the shipped VLM's way, by likelihood.
No valid answer at all is an Answer with choice −1, counted, never an exception.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nodes.video_decode import VideoDecodeError, iter_frames, read_index
from nodes.vlm import SharedVlm, VlmAdapter
from nodes.vlm.adapter import parse_vlm_spec
from nodes.vlm.parsing import majority_vote, parse_choice
from pipeline.messages import Answer, Selection
from pipeline.node import Node

OPTION_LETTERS = "ABCDEFGHIJ"
MIN_OPTIONS = 2
TIMESTAMP = "[t={:.1f}s]"
ANSWER_PROMPT = """Select the best answer to the following multiple-choice question based on the video. \
Respond with only the letter ({letters}) of the correct option.
{timeline}Question: {question}
Options:
{options}
The best answer is:"""
TIMELINE = "The images are frames of the video in time order, taken at {stamps}.\n"
DEFAULT_MAX_SIDE = 448  # longer image side sent to the VLM: 32 frames stay within a 7B VLM's context
ANSWER_TOKENS = 16
ANSWER_BY_GENERATION, ANSWER_BY_LIKELIHOOD = "generate", "likelihood"

COUNTER_ANSWERS = "answers"
COUNTER_INVALID_ANSWERS = "invalid_answers"
COUNTER_VLM_ERRORS = "vlm_errors"
COUNTER_FRAME_ERRORS = "frame_errors"


def format_options(options: list[str]) -> str:
    """"A. first\\nB. second…"; the letters the answer parser reads back."""
    return "\n".join(f"{OPTION_LETTERS[i]}. {option}" for i, option in enumerate(options))


def timestamps(times_s: list[float]) -> str:
    return ", ".join(TIMESTAMP.format(t) for t in times_s)


def answer_prompt(question: str, options: list[str], times_s: list[float] | None = None) -> str:
    """The answering prompt; with `times_s`, each image's time is stated in order (timestamp injection)."""
    letters = ", ".join(OPTION_LETTERS[:len(options)])
    timeline = TIMELINE.format(stamps=timestamps(times_s)) if times_s else ""
    return ANSWER_PROMPT.format(letters=letters, timeline=timeline, question=question, options=format_options(options))


class FrameSource(Protocol):
    """Frames of one video by index; `times_s` (N,) are their presentation times, rising."""

    times_s: np.ndarray

    def image(self, index: int) -> np.ndarray: ...


class VideoFrames:
    """A local video's frames by index, with exact presentation times.

    Each fetch is a decode of one frame through `nodes.video_decode` (which reads the file's packet
    index again per call): cheap for the tens of frames a selector asks for, not meant for scanning."""

    def __init__(self, path: str, max_side: int | None = DEFAULT_MAX_SIDE):
        self.path, self.max_side = path, max_side
        self.times_s: np.ndarray = read_index(path).pts_s

    @property
    def n_frames(self) -> int:
        return len(self.times_s)

    def image(self, index: int) -> np.ndarray:
        """Frame `index` as (H, W, 3) uint8; VideoDecodeError if it cannot be decoded."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"{self.path}: no frame {index} (the video has {self.n_frames})")
        end_s = float(self.times_s[index + 1]) if index + 1 < self.n_frames else None
        for got, _, image in iter_frames(self.path, start_s=float(self.times_s[index]), end_s=end_s, max_side=self.max_side):
            if got == index:
                return image
        raise VideoDecodeError(self.path, index, float(self.times_s[index]), "the frame was not decoded")


@dataclass
class Vote:
    """The outcome of n sampled answers."""

    choice: int | None  # 0-based option, None when no sample was valid
    votes: dict[int, int] = field(default_factory=dict)
    n_samples: int = 0
    error: str = ""  # why the VLM gave no answers at all
    log_likelihoods: list[float] = field(default_factory=list)  # per option, when answered by likelihood

    @property
    def confidence(self) -> float:
        if self.choice is not None and self.log_likelihoods:
            shares = np.exp(np.asarray(self.log_likelihoods) - max(self.log_likelihoods))
            return float(shares[self.choice] / shares.sum())
        return self.votes.get(self.choice, 0) / self.n_samples if self.choice is not None and self.n_samples else 0.0


def vote_on_answers(vlm: VlmAdapter, images: list[np.ndarray], prompt: str, n_options: int, *, n_samples: int = 1,
                    temperature: float = 0.0, seed: int = 0, max_new_tokens: int = ANSWER_TOKENS,
                    option_texts: Sequence[str] = ()) -> Vote:
    """Ask for `n_samples` answers in one call and take the majority valid choice; with `option_texts`,
    an answer that names one option instead of its letter counts too."""
    try:
        texts = vlm.generate(images, prompt, max_new_tokens=max_new_tokens, n_samples=n_samples,
                             temperature=temperature, seed=seed)
    except Exception as exc:  # noqa: BLE001 — whatever the backend raised, it is a missing answer
        return Vote(None, {}, n_samples, f"{type(exc).__name__}: {exc}")
    choice, votes = majority_vote(parse_choice(text, n_options, option_texts) for text in texts)
    return Vote(choice, votes, n_samples)


def choose_by_likelihood(vlm: VlmAdapter, images: list[np.ndarray], prompt: str, options: Sequence[str]) -> Vote:
    """The option whose text the VLM finds likeliest as its reply; a failed or non-finite scoring is no answer."""
    try:
        scores = np.asarray(vlm.score_answers(images, prompt, list(options)), np.float64)  # (K,)
    except Exception as exc:  # noqa: BLE001 — whatever the backend raised, it is a missing answer
        return Vote(None, {}, 1, f"{type(exc).__name__}: {exc}")
    if scores.shape != (len(options),) or not np.isfinite(scores).all():
        return Vote(None, {}, 1, f"the VLM scored {len(options)} options as {scores.tolist()}")
    choice = int(np.argmax(scores))
    return Vote(choice, {choice: 1}, 1, log_likelihoods=scores.tolist())


def answer_question(vlm: VlmAdapter, images: list[np.ndarray], prompt: str, params: "VideoQaParams") -> Vote:
    """The node's answer the way its params ask: by likelihood, or by generated samples and a vote."""
    if params.answer_by == ANSWER_BY_LIKELIHOOD:
        return choose_by_likelihood(vlm, images, prompt, params.options)
    return vote_on_answers(vlm, images, prompt, len(params.options), n_samples=params.n_samples,
                           temperature=params.temperature, seed=params.seed, max_new_tokens=params.answer_tokens,
                           option_texts=params.options)


def answer_message(question: str, options: list[str], vote: Vote, *, spans_s: np.ndarray | None,
                   frame_indices: np.ndarray, stamp_ns: int) -> Answer:
    """The Answer for a vote: option text and index, or "" and −1 when no answer was valid."""
    choice = -1 if vote.choice is None else vote.choice
    return Answer(stamp_ns=stamp_ns, question=question, answer=options[choice] if choice >= 0 else "", choice=choice,
                  confidence=vote.confidence, spans_s=spans_s, frame_indices=np.asarray(frame_indices, np.int64))


class VideoQaParams(BaseModel):
    """What every node answering a question about a video file needs."""

    model_config = ConfigDict(extra="forbid")
    video: str = Field(min_length=1, description="a local video file")
    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=MIN_OPTIONS, max_length=len(OPTION_LETTERS),
                               description="the multiple-choice options, in order (lettered A, B, …)")
    vlm: dict[str, Any] = Field(description="the model: {hf: PATH} or {openai: URL, model: NAME} (see nodes.vlm.adapter)")
    n_samples: int = Field(1, ge=1, description="answers sampled per question; the majority wins")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature of the answers (0: greedy)")
    seed: int = 0
    max_side: int | None = Field(DEFAULT_MAX_SIDE, ge=8, description="shrink frames so the longer side is at most this")
    answer_tokens: int = Field(ANSWER_TOKENS, ge=1, description="max new tokens of an answer")
    answer_by: Literal["generate", "likelihood"] = Field(
        ANSWER_BY_GENERATION, description="generate: parse the VLM's reply; likelihood: the option it scores likeliest "
                                          "(local checkpoints only)")

    @field_validator("vlm")
    @classmethod
    def _valid_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        parse_vlm_spec(spec)  # checks the spec only: validating a graph loads no model
        return spec

    @model_validator(mode="after")
    def _sampling_varies(self) -> "VideoQaParams":
        if self.n_samples > 1 and self.answer_by == ANSWER_BY_LIKELIHOOD:
            raise ValueError("n_samples > 1 needs answer_by: generate: a likelihood choice is one deterministic answer")
        if self.n_samples > 1 and self.temperature == 0.0:
            raise ValueError("n_samples > 1 needs temperature > 0: greedy answers are all the same, "
                             "a vote over them is one answer")
        return self


def fetch_images(frames: FrameSource, indices: list[int]) -> tuple[list[int], list[np.ndarray], list[str]]:
    """The frames that decode, in the order given, and why each of the others did not."""
    kept, images, failures = [], [], []
    for index in indices:
        try:
            images.append(frames.image(index))
            kept.append(index)
        except (VideoDecodeError, IndexError) as exc:
            failures.append(str(exc))
    return kept, images, failures


class VideoQuestionAnswer(Node):
    """A Selection's frames (in time order) → the VLM's multiple-choice answer, voted over n samples."""

    Params = VideoQaParams
    inputs = {"selection": Selection}
    outputs = {"answer": Answer}

    def setup(self) -> None:
        self.frames = VideoFrames(self.params.video, self.params.max_side)
        self.vlm: VlmAdapter = SharedVlm(self.params.vlm)  # one copy per process, shared by the graph's nodes

    def close(self) -> None:
        vlm = getattr(self, "vlm", None)
        if vlm is not None:
            vlm.close()

    def on_selection(self, msg: Selection) -> None:
        p = self.params
        kept, images, failures = fetch_images(self.frames, sorted(np.asarray(msg.frame_indices, np.int64).tolist()))
        for failure in failures:
            self.count(COUNTER_FRAME_ERRORS)
            self.log.error("frame left out: %s", failure)
        if images:
            vote = answer_question(self.vlm, images, answer_prompt(p.question, p.options), p)
        else:
            self.log.error("no answer: none of the %d selected frames could be decoded", len(msg.frame_indices))
            vote = Vote(None, {}, p.n_samples)
        if vote.error:
            self.count(COUNTER_VLM_ERRORS)
            self.log.error("no answer: the VLM failed: %s", vote.error)
        self.count(COUNTER_ANSWERS if vote.choice is not None else COUNTER_INVALID_ANSWERS)
        self.emit("answer", answer_message(p.question, p.options, vote, spans_s=msg.spans_s, frame_indices=np.array(kept),
                                           stamp_ns=msg.stamp_ns))
