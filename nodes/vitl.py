"""Video-in-the-Loop (ViTL, arXiv 2510.04022): ground first, then answer from the grounded spans only.

Stage 1 skims the whole video at a low rate, each frame's time stated in the prompt ("[t=12.5s]"), and
asks the VLM for the spans needed to answer. Stage 2 re-reads only those spans at a higher rate under
the same frame budget (uniformly thinned within the spans when they hold more frames than that) and
answers the multiple-choice question, n sampled answers voted (test-time scaling).

The paper's fps values, span format and timestamp template were not retrieved (reference/papers.md
§5); the defaults here are: skim at 1 fps (A.I.R.'s scan rate), answer at 4 fps, a 32-frame budget
(A.I.R.'s V_max), spans as plain seconds. Spans are read from JSON (`{"spans": [[12, 20]]}`, `[12, 20]`,
`[{"start": "0:12", "end": "0:20"}]`) or from text ("12.5-20s", "from 0:12 to 0:20", "between 3 and 7
seconds"). An answer with no usable span is counted (`invalid_spans`) and stage 2 then reads the whole
video uniformly, so a bad grounding costs accuracy, not the answer.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from nodes.video_decode import select_frames
from nodes.video_qa import (COUNTER_ANSWERS, COUNTER_FRAME_ERRORS, COUNTER_INVALID_ANSWERS, COUNTER_VLM_ERRORS,
                            FrameSource, VideoFrames, VideoQaParams, Vote, answer_message, answer_prompt, answer_question,
                            fetch_images, format_options, timestamps)
from nodes.vlm import SharedVlm, VlmAdapter
from nodes.vlm.parsing import extract_json_object
from pipeline.messages import Answer, Selection
from pipeline.node import Node

DEFAULT_BUDGET = 32
SKIM_FPS = 1.0
ANSWER_FPS = 4.0
GROUNDING_TOKENS = 256
GROUND_PROMPT = """The images are {n} frames of a {duration:.1f}-second video, in time order, taken at {stamps}.
Question: {question}
Options:
{options}
Do not answer yet. Find the moments of the video needed to answer the question, and reply with their time \
spans in seconds as JSON, e.g. {{"spans": [[12.0, 31.5]]}}."""
JSON_ARRAY_START, JSON_OBJECT_START = "[", "{"
SPAN_KEYS = ("spans", "span", "segments", "intervals", "timestamps", "moments")
START_KEYS = ("start", "start_s", "from", "begin")
END_KEYS = ("end", "end_s", "to", "stop")
TIME = r"\d+(?::\d{1,2}){0,2}(?:\.\d+)?"
UNIT = r"(?:s|secs?|seconds?)"
TIME_TOKEN = re.compile(rf"({TIME})\s*{UNIT}?", re.IGNORECASE)
STAMP_OPEN, STAMP_CLOSE = r"(?:\[\s*t\s*=\s*)?", r"\]?"  # an echoed "[t=12.5s]"
RANGE = re.compile(rf"(?<![\d.:])({TIME})\s*{UNIT}?{STAMP_CLOSE}\s*(?:-|–|—|to|until|till|and)\s*{STAMP_OPEN}({TIME})(?![\d:])",
                   re.IGNORECASE)
SECONDS_PER_UNIT = 60
REASON_CHARS = 240

COUNTER_INVALID_SPANS = "invalid_spans"

Span = tuple[float, float]


def parse_time(value: Any) -> float | None:
    """Seconds from a number or a "75", "75.5s", "75 seconds", "1:15", "0:01:15.5" string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if np.isfinite(value) and value >= 0 else None
    match = TIME_TOKEN.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    *larger, seconds = match.group(1).split(":")
    if (larger and float(seconds) >= SECONDS_PER_UNIT) or any(int(part) >= SECONDS_PER_UNIT for part in larger[1:]):
        return None  # "1:75" is not a time
    total = 0.0
    for part in larger:
        total = (total + int(part)) * SECONDS_PER_UNIT
    return total + float(seconds)


def _keyed(item: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((item[key] for key in keys if key in item), None)


def _span(item: Any) -> Span | None:
    """A [start, end] pair or a {"start": …, "end": …} mapping; None for anything else."""
    if isinstance(item, dict):
        start, end = parse_time(_keyed(item, START_KEYS)), parse_time(_keyed(item, END_KEYS))
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        start, end = parse_time(item[0]), parse_time(item[1])
    else:
        return None
    return None if start is None or end is None else (start, end)


def _spans_of_json(value: Any) -> list[Span]:
    """Spans from a parsed JSON value: one span, or a list of them (items that are not are skipped)."""
    if isinstance(value, dict):
        inner = _keyed(value, SPAN_KEYS)
        return _spans_of_json(inner) if inner is not None else [s for s in [_span(value)] if s is not None]
    single = _span(value)
    if single is not None:
        return [single]
    if isinstance(value, list):
        return [s for s in (_span(item) for item in value) if s is not None]
    return []


def _json_arrays(text: str) -> Iterable[Any]:
    """Each JSON array that starts somewhere in `text`, in order."""
    decoder = json.JSONDecoder()
    start = text.find(JSON_ARRAY_START)
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
            yield value
        except (ValueError, RecursionError):
            pass
        start = text.find(JSON_ARRAY_START, start + 1)


def parse_spans(text: Any) -> list[Span] | None:
    """The spans in a VLM's grounding answer, as (start_s, end_s) in the order given; None if none.

    Tried in order: JSON (an object's "spans"-like key or the object itself as {"start", "end"}, or an
    array; whichever starts first in the text, then the other), then ranges in prose. Spans are not
    checked against the video here (see `clean_spans`)."""
    if not isinstance(text, str):
        return None
    from_object = _spans_of_json(extract_json_object(text))
    from_array = next((spans for spans in map(_spans_of_json, _json_arrays(text)) if spans), [])
    object_at, array_at = text.find(JSON_OBJECT_START), text.find(JSON_ARRAY_START)
    array_first = array_at != -1 and (object_at == -1 or array_at < object_at)  # the outermost JSON value wins
    for spans in ((from_array, from_object) if array_first else (from_object, from_array)):
        if spans:
            return spans
    ranges = [(parse_time(a), parse_time(b)) for a, b in RANGE.findall(text)]
    spans = [(a, b) for a, b in ranges if a is not None and b is not None]
    return spans or None


def clean_spans(spans: Iterable[Span], start_s: float, end_s: float) -> list[Span]:
    """Spans clipped to the video, reversed or empty ones dropped, overlapping ones merged, in time order."""
    clipped = sorted((max(a, start_s), min(b, end_s)) for a, b in spans if b > a)
    merged: list[list[float]] = []
    for a, b in clipped:
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def uniform_subset(indices: np.ndarray, budget: int) -> np.ndarray:
    """At most `budget` of the indices, evenly spread, first and last kept."""
    if len(indices) <= budget:
        return indices
    return indices[np.round(np.linspace(0, len(indices) - 1, budget)).astype(np.int64)]


def frames_in_spans(times_s: np.ndarray, spans: list[Span], fps: float) -> np.ndarray:
    """The frames nearest to each span's sample times at `fps` (the video's frame nearest the middle for
    a span too short to hold one), as rising unique indices."""
    picked = []
    for a, b in spans:
        inside = select_frames(times_s, fps, a, b)
        picked.append(inside if len(inside) else [int(np.argmin(np.abs(times_s - (a + b) / 2)))])
    return np.unique(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, np.int64)


def video_span(times_s: np.ndarray) -> Span:
    """The whole video as one span: from the first frame to just past the last."""
    step = float(np.median(np.diff(times_s))) if len(times_s) > 1 else 1.0
    return float(times_s[0]), float(times_s[-1]) + step


class VitlParams(VideoQaParams):
    budget: int = Field(DEFAULT_BUDGET, ge=1, description="frames per VLM call, in both stages")
    skim_fps: float = Field(SKIM_FPS, gt=0, description="stage 1 rate (thinned to the budget for long videos)")
    answer_fps: float = Field(ANSWER_FPS, gt=0, description="stage 2 rate within the spans (thinned to the budget)")
    grounding_tokens: int = Field(GROUNDING_TOKENS, ge=8, description="max new tokens of the grounding answer")


@dataclass
class Grounding:
    """Stage 1's outcome: the skimmed frames and the VLM's answer, or why there is none."""

    frames: list[int]
    text: str
    failed: bool = False  # the VLM call itself failed; `text` says why
    frame_errors: list[str] = field(default_factory=list)


@dataclass
class VitlResult:
    grounding: Grounding
    spans: list[Span]  # the grounded spans stage 2 read; empty when the grounding gave none
    answer_frames: list[int]
    vote: Vote
    frame_errors: list[str] = field(default_factory=list)  # stage 2's


def ground(vlm: VlmAdapter, frames: FrameSource, params: VitlParams) -> Grounding:
    """Stage 1: skim the whole video (its frames' times in the prompt) and ask where the answer is."""
    times_s = frames.times_s
    skim = uniform_subset(select_frames(times_s, params.skim_fps), params.budget).tolist()
    kept, images, failures = fetch_images(frames, skim)
    start_s, end_s = video_span(times_s)
    prompt = GROUND_PROMPT.format(n=len(kept), duration=end_s - start_s, stamps=timestamps([float(times_s[i]) for i in kept]),
                                  question=params.question, options=format_options(params.options))
    try:
        texts = vlm.generate(images, prompt, max_new_tokens=params.grounding_tokens)
    except Exception as exc:  # noqa: BLE001 — whatever the backend raised, there are no spans
        return Grounding(kept, f"the VLM call failed: {type(exc).__name__}: {exc}", True, failures)
    return Grounding(kept, texts[0] if texts else "", False, failures)


def video_in_the_loop(vlm: VlmAdapter, frames: FrameSource, params: VitlParams) -> VitlResult:
    """Both stages on one video: ground, then answer from the spans under the same frame budget."""
    times_s = frames.times_s
    whole = video_span(times_s)
    grounding = ground(vlm, frames, params)
    spans = [] if grounding.failed else clean_spans(parse_spans(grounding.text) or [], *whole)
    chosen = frames_in_spans(times_s, spans or [whole], params.answer_fps)
    kept, images, failures = fetch_images(frames, uniform_subset(chosen, params.budget).tolist())
    prompt = answer_prompt(params.question, params.options, [float(times_s[i]) for i in kept])
    vote = answer_question(vlm, images, prompt, params)
    return VitlResult(grounding, spans, kept, vote, failures)


class VideoInTheLoop(Node):
    """A source: answers its one question about `video` on the first tick, then is done. Emits the
    Answer and, on `spans`, the grounded spans with the frames stage 2 read."""

    Params = VitlParams
    outputs = {"answer": Answer, "spans": Selection}

    def setup(self) -> None:
        self.frames = VideoFrames(self.params.video, self.params.max_side)
        self.vlm: VlmAdapter = SharedVlm(self.params.vlm)  # one copy per process, shared by the graph's nodes
        self.done = False

    def close(self) -> None:
        vlm = getattr(self, "vlm", None)
        if vlm is not None:
            vlm.close()

    def tick(self) -> bool:
        if self.done:
            return False
        self.done = True
        p = self.params
        result = video_in_the_loop(self.vlm, self.frames, p)
        self._count(result)
        spans = np.array(result.spans, np.float64).reshape(-1, 2)
        stamp_ns = time.monotonic_ns()
        self.emit("spans", Selection(stamp_ns=stamp_ns, frame_indices=np.array(result.answer_frames, np.int64), spans_s=spans,
                                     reasons=[result.grounding.text[:REASON_CHARS]]))
        self.emit("answer", answer_message(p.question, p.options, result.vote, spans_s=spans,
                                           frame_indices=np.array(result.answer_frames), stamp_ns=stamp_ns))
        return True

    def _count(self, result: VitlResult) -> None:
        for failure in result.grounding.frame_errors + result.frame_errors:
            self.count(COUNTER_FRAME_ERRORS)
            self.log.error("frame left out: %s", failure)
        for failed, what in ((result.grounding.failed, result.grounding.text), (bool(result.vote.error), result.vote.error)):
            if failed:
                self.count(COUNTER_VLM_ERRORS)
                self.log.error("%s", what)
        if not result.spans:
            self.count(COUNTER_INVALID_SPANS)
            self.log.warning("no usable span in the grounding answer (%r): stage 2 read the whole video",
                             result.grounding.text[:REASON_CHARS])
        self.count(COUNTER_ANSWERS if result.vote.choice is not None else COUNTER_INVALID_ANSWERS)
