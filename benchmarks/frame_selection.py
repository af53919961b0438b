"""Frame selection for offline video QA, measured: uniform sampling, CLIP top-k, A.I.R. (with and
without its time anchors, which are not in the paper) and Video-in-the-Loop at equal frame budgets on
held-out shapes-world videos, with one CLIP and one VLM.

The videos come from held-out seeds far above any training run's range, generated once into --data
(deterministic, reused). Every method picks at most B frames per question and the VLM answers from
them (ViTL answers in its own second stage, as its node does). Per method and budget:
- evidence recall: the share of the question's evidence spans holding at least one selected frame
  (a "how many times" question needs every appearance seen), averaged over questions;
- evidence precision: the share of selected frames whose time falls in one of the question's spans;
- the recall apart on the questions that name a moment ("at about 2:34") and on the rest;
- QA accuracy: the VLM's choice is the scripted answer; A.I.R.'s gain over uniform comes with a 95 %
  interval from a paired bootstrap over the questions (a few dozen questions cannot resolve 5 points);
- beside the methods, "evidence (oracle)" reads the ground truth: frames inside the evidence spans,
  the most any selector could show the VLM. Its QA accuracy over uniform's is what a perfect selector
  would gain with this VLM, the yardstick for A.I.R.'s QA gain;
- VLM calls and wall time per video (all its questions; a CLIP method pays the video's prescan once),
  and A.I.R.'s analysis calls per question (one question is one A.I.R. run) against C·I_max.
The CLIP methods score each frame against the question and the question followed by each option, its
best cosine (as ClipPrescan does when given the options); `--question-only-query` scores the question
alone. Frames are decoded once per video into memory and served to every method alike (decode time is
reported apart), so the figures compare selection, not decoding. Each video–question pair is one
A.I.R. run, as in the paper's benchmarks where a video has one question.

    python benchmarks/frame_selection.py [--quick] [--clip DIR] [--vlm DIR] [--videos N] [--seconds S]
                                         [--budgets 8,16,32] [--methods uniform,air,...] [--answer-by generate]
                                         [--skip-videos N] [--question-only-query] [--rows FILE]

A table, then one JSON object with every figure as the last line (QA accuracy also per question kind;
`--rows` writes each question's outcome).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from nodes.air.analysis import COUNTER_VLM_CALLS, VlmFrameAnalyser
from nodes.air.config import AirConfig
from nodes.air.selector import select_frames_air
from nodes.air.time_anchor import question_moments
from nodes.clip.embedder import ClipEmbedder
from nodes.clip_prescan import query_scores, query_texts
from nodes.video_decode import iter_frames, select_frames
from nodes.video_qa import (ANSWER_BY_GENERATION, ANSWER_BY_LIKELIHOOD, VideoQaParams, answer_prompt,
                            answer_question, fetch_images)
from nodes.vitl import VitlParams, video_in_the_loop
from nodes.vlm import VlmAdapter

UNIFORM, CLIP_TOPK, AIR, AIR_PAPER, VITL, ORACLE = "uniform", "clip_topk", "air", "air_paper", "vitl", "oracle"
METHODS = (UNIFORM, CLIP_TOPK, AIR, AIR_PAPER, VITL, ORACLE)
CLIP_METHODS = (CLIP_TOPK, AIR, AIR_PAPER)  # these pay the video's CLIP prescan
LABELS = {UNIFORM: "uniform", CLIP_TOPK: "CLIP top-k", AIR: "A.I.R.", AIR_PAPER: "A.I.R., no anchors",
          VITL: "Video-in-the-Loop", ORACLE: "evidence (oracle)"}
DEFAULT_CLIP, DEFAULT_VLM = "models/clip_shapes", "models/vlm_shapes"
TRAIN_COMMANDS = {"clip": "groundloop train clip --out {path}", "vlm": "groundloop train vlm --out {path}"}
MODEL_MARKER = "config.json"
DEFAULT_DATA = "runs/benchmarks/frame_selection"
HELDOUT_SEED_START = 1_000_000  # training draws seeds from 0 up: these are never among them
DEFAULT_BUDGETS, QUICK_BUDGETS = (8, 16, 32), (8,)
DEFAULT_VIDEOS, QUICK_VIDEOS = 8, 2
#: 5 min, where A.I.R.'s adaptive budget reaches V_max; at 60 s, 32 uniform frames (one per 1.9 s) already
#: hit every 2-s evidence span, so no selection could show a gain there
DEFAULT_SECONDS, QUICK_SECONDS = 300.0, 300.0
DEFAULT_QUESTIONS, QUICK_QUESTIONS = 4, 2  # per video, drawn by the video's seed
PRESCAN_FPS = 1.0  # A.I.R.'s scan rate
PRESCAN_BATCH = 32
TARGET_RECALL_GAIN_PTS = 20.0  # A.I.R. over uniform, evidence recall, same budget
TARGET_ACCURACY_GAIN_PTS = 5.0  # A.I.R. over uniform, QA accuracy, same budget
BOOTSTRAP_RESAMPLES, CI_LEVEL = 2000, 0.95  # the QA gain's interval over resampled questions
POINTS = 100.0
EXIT_MISSING_MODEL = 2

Span = tuple[float, float]


# ---- metrics -------------------------------------------------------------------------------------


def evidence_hits(times_s: Sequence[float], spans: Sequence[Span]) -> np.ndarray:
    """(K,) bool: which times fall in one of the spans (ends included)."""
    t = np.asarray(times_s, np.float64).reshape(-1, 1)
    s = np.asarray(spans, np.float64).reshape(1, -1, 2)
    return ((t >= s[..., 0]) & (t <= s[..., 1])).any(axis=1) if len(spans) else np.zeros(len(t), bool)


def evidence_recall(times_s: Sequence[float], spans: Sequence[Span]) -> float:
    """The share of spans holding at least one of the times (no spans: nothing to miss, 1)."""
    if not spans:
        return 1.0
    return float(np.mean([any(a <= t <= b for t in times_s) for a, b in spans]))


def evidence_precision(times_s: Sequence[float], spans: Sequence[Span]) -> float:
    """The share of the times that fall in a span (no times selected: 0)."""
    return float(evidence_hits(times_s, spans).mean()) if len(times_s) else 0.0


# ---- videos, questions and the prescan -----------------------------------------------------------


class MemoryFrames:
    """A video's frames decoded once, served by index (a `FrameSource`)."""

    def __init__(self, times_s: np.ndarray, images: list[np.ndarray]):
        self.times_s = np.asarray(times_s, np.float64)
        self.images = images

    @classmethod
    def decode(cls, path: str | Path) -> "MemoryFrames":
        frames = list(iter_frames(str(path)))
        return cls(np.array([t for _, t, _ in frames]), [image for _, _, image in frames])

    def image(self, index: int) -> np.ndarray:
        return self.images[index]


@dataclass
class QaItem:
    id: str
    kind: str  # sim.shapes_world.questions.QUESTION_KINDS
    question: str
    options: list[str]
    answer: int
    evidence: list[Span]

    @cached_property
    def moments_s(self) -> list[float]:
        """The moments the question names (A.I.R.'s time anchors), parsed once."""
        return question_moments(self.question)


@dataclass
class VideoCase:
    name: str
    frames: MemoryFrames
    questions: list[QaItem]
    decode_s: float = 0.0


@dataclass
class Prescan:
    """The video's sampled frames and their CLIP embeddings, computed once per video."""

    indices: np.ndarray  # (N,) frame indices
    embeddings: np.ndarray  # (N, D) unit rows
    seconds: float


def prescan(embedder: ClipEmbedder, frames: MemoryFrames, fps: float) -> Prescan:
    started = time.perf_counter()
    indices = select_frames(frames.times_s, fps)
    chunks = [embedder.embed_images(np.stack([frames.image(i) for i in indices[k:k + PRESCAN_BATCH]]))
              for k in range(0, len(indices), PRESCAN_BATCH)]
    return Prescan(indices, np.concatenate(chunks), time.perf_counter() - started)


def load_case(video: Path, sidecar: dict[str, Any], n_questions: int) -> VideoCase:
    """A generated video decoded into memory, with `n_questions` of its questions drawn by its seed."""
    started = time.perf_counter()
    frames = MemoryFrames.decode(video)
    decode_s = time.perf_counter() - started
    questions = sidecar["questions"]
    picked = np.random.default_rng(sidecar["seed"]).permutation(len(questions))[:n_questions]
    items = [QaItem(q["id"], q["kind"], q["question"], q["options"], q["answer"], [tuple(s) for s in q["evidence"]])
             for q in (questions[i] for i in sorted(picked))]
    return VideoCase(video.stem, frames, items, decode_s)


# ---- the four methods ----------------------------------------------------------------------------


@dataclass
class Settings:
    budgets: Sequence[int] = DEFAULT_BUDGETS
    methods: Sequence[str] = METHODS
    prescan_fps: float = PRESCAN_FPS
    air: AirConfig = field(default_factory=AirConfig)
    vlm_spec: dict[str, Any] = field(default_factory=lambda: {"hf": DEFAULT_VLM})  # ViTL's params name it
    answer_by: str = ANSWER_BY_LIKELIHOOD  # how every method's final answer is read (nodes.video_qa)
    option_queries: bool = True  # CLIP scores frames against the question with each option too (nodes.clip_prescan)


@dataclass
class Outcome:
    """One method on one question: the frames it read, the VLM's choice, what it cost."""

    frames: list[int]
    choice: int | None
    vlm_calls: int
    analysis_calls: int = 0


def uniform_frames(n_frames: int, budget: int) -> np.ndarray:
    """The frames at the centres of `budget` equal parts of the video (every frame if there are fewer)."""
    if n_frames <= budget:
        return np.arange(n_frames, dtype=np.int64)
    return np.unique(((np.arange(budget) + 0.5) * n_frames / budget).astype(np.int64))


def topk_frames(indices: np.ndarray, scores: np.ndarray, budget: int) -> np.ndarray:
    """The `budget` highest-scoring scanned frames (ties: the earlier), in time order."""
    return np.sort(indices[np.argsort(-scores, kind="stable")[:budget]])


def oracle_frames(times_s: np.ndarray, spans: Sequence[Span], budget: int) -> np.ndarray:
    """Ground truth, not a method: the frame nearest each span's middle first, then frames spread evenly
    over the rest of the spans; at most `budget`, in time order."""
    middles = np.unique([int(np.argmin(np.abs(times_s - (a + b) / 2))) for a, b in spans][:budget]).astype(np.int64)
    rest = np.setdiff1d(np.flatnonzero(evidence_hits(times_s, spans)), middles)
    n_more = min(budget - len(middles), len(rest))
    more = rest[np.linspace(0, len(rest) - 1, n_more).round().astype(np.int64)] if n_more > 0 else rest[:0]
    return np.union1d(middles, more)


def answer_from(vlm: VlmAdapter, frames: MemoryFrames, chosen: Sequence[int], params: VideoQaParams) -> Outcome:
    """The VLM answers from the chosen frames in time order, as VideoQuestionAnswer asks it."""
    kept, images, _ = fetch_images(frames, sorted(int(i) for i in chosen))
    vote = answer_question(vlm, images, answer_prompt(params.question, params.options), params)
    return Outcome(kept, vote.choice, 1)


def run_method(method: str, case: VideoCase, item: QaItem, budget: int, scores: np.ndarray | None,
               scan: Prescan | None, vlm: VlmAdapter, settings: Settings) -> Outcome:
    frames = case.frames
    qa = VideoQaParams(video=case.name, question=item.question, options=item.options, vlm=settings.vlm_spec,
                       answer_by=settings.answer_by)  # what the answering node would be given
    if method == UNIFORM:
        return answer_from(vlm, frames, uniform_frames(len(frames.times_s), budget), qa)
    if method == ORACLE:
        return answer_from(vlm, frames, oracle_frames(frames.times_s, item.evidence, budget), qa)
    if method == CLIP_TOPK:
        return answer_from(vlm, frames, topk_frames(scan.indices, scores, budget), qa)
    if method in (AIR, AIR_PAPER):
        S = np.full(len(frames.times_s), np.nan)
        S[scan.indices] = scores
        analyser = VlmFrameAnalyser(vlm, frames.image, item.question, item.options,
                                    times_s=frames.times_s if settings.air.frame_time else None)
        moments = item.moments_s if method == AIR else []
        selected = select_frames_air(S, frames.times_s, analyser, settings.air, budget=budget, moments_s=moments)
        answered = answer_from(vlm, frames, selected.frame_indices, qa)
        calls = analyser.counts[COUNTER_VLM_CALLS]
        return Outcome(answered.frames, answered.choice, calls + answered.vlm_calls, calls)
    if method == VITL:
        result = video_in_the_loop(vlm, frames, VitlParams(**qa.model_dump(), budget=budget))
        return Outcome(result.answer_frames, result.vote.choice, 2)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


# ---- running and summarising ---------------------------------------------------------------------


def summarise(rows: list[dict[str, Any]], n_videos: int, prescan_s: float, method: str) -> dict[str, Any]:
    """The figures of one method at one budget from its per-question rows."""
    seconds = sum(r["seconds"] for r in rows) + (prescan_s if method in CLIP_METHODS else 0.0)
    calls = sum(r["vlm_calls"] for r in rows)
    by_moment = {anchored: [r["recall"] for r in rows if r["names_moment"] == anchored] for anchored in (True, False)}
    return {
        "evidence_recall": float(np.mean([r["recall"] for r in rows])),
        "evidence_recall_moment_questions": float(np.mean(by_moment[True])) if by_moment[True] else None,
        "evidence_recall_other_questions": float(np.mean(by_moment[False])) if by_moment[False] else None,
        "moment_questions": len(by_moment[True]),
        "evidence_precision": float(np.mean([r["precision"] for r in rows])),
        "qa_accuracy": float(np.mean([r["correct"] for r in rows])),
        "qa_accuracy_by_kind": {kind: float(np.mean([r["correct"] for r in rows if r["kind"] == kind]))
                                for kind in sorted({r["kind"] for r in rows})},
        "frames_per_question": float(np.mean([r["n_frames"] for r in rows])),
        "vlm_calls_per_video": calls / n_videos, "vlm_calls_per_question": calls / len(rows),
        "analysis_calls_max_per_question": max(r["analysis_calls"] for r in rows),
        "wall_s_per_video": seconds / n_videos, "questions": len(rows),
    }


def paired_gain_ci(ours: Sequence[bool], base: Sequence[bool], *, n_resamples: int = BOOTSTRAP_RESAMPLES,
                   level: float = CI_LEVEL, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval, in points, of the accuracy gain `ours` − `base` over the same
    questions (resampled in pairs): how far the gain could move with another draw of questions."""
    diff = np.asarray(ours, np.float64) - np.asarray(base, np.float64)  # (Q,)
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(n_resamples, len(diff)))  # (R, Q)
    gains = POINTS * diff[picks].mean(axis=1)  # (R,)
    tail = POINTS * (1.0 - level) / 2.0
    return float(np.percentile(gains, tail)), float(np.percentile(gains, POINTS - tail))


def compare(results: dict[str, dict[int, dict[str, Any]]], budget: int, air: AirConfig) -> dict[str, Any]:
    """A.I.R. against uniform at one budget: ratios, gains in points, and the issue's targets."""
    ours, base = results.get(AIR, {}).get(budget), results.get(UNIFORM, {}).get(budget)
    if ours is None or base is None:
        return {}
    out: dict[str, Any] = {}
    for key, name, target in (("evidence_recall", "recall", TARGET_RECALL_GAIN_PTS),
                              ("qa_accuracy", "accuracy", TARGET_ACCURACY_GAIN_PTS)):
        gain = POINTS * (ours[key] - base[key])
        out[f"{name}_air_over_uniform"] = ours[key] / base[key] if base[key] else None
        out[f"{name}_gain_pts"] = gain
        out[f"{name}_target_pts"] = target
        out[f"met_{name}"] = bool(gain >= target)
    oracle = results.get(ORACLE, {}).get(budget)
    if oracle is not None:  # the QA gain a perfect selector would get from this VLM
        out["accuracy_oracle_gain_pts"] = POINTS * (oracle["qa_accuracy"] - base["qa_accuracy"])
    bound = air.candidates * air.i_max
    out.update(analysis_calls_bound=bound, met_analysis_bound=bool(ours["analysis_calls_max_per_question"] <= bound))
    return out


def run_benchmark(cases: list[VideoCase], embedder: ClipEmbedder, vlm: VlmAdapter, settings: Settings,
                  progress: bool = False) -> dict[str, Any]:
    """Every method at every budget on every question; per-method figures and A.I.R. vs uniform."""
    from tqdm import tqdm

    rows: dict[tuple[str, int], list[dict[str, Any]]] = {(m, b): [] for m in settings.methods for b in settings.budgets}
    prescan_s = 0.0
    bar = tqdm(total=sum(len(c.questions) for c in cases), desc="questions", unit="q", disable=not progress)
    for case in cases:
        scan = prescan(embedder, case.frames, settings.prescan_fps) if set(settings.methods) & set(CLIP_METHODS) else None
        prescan_s += scan.seconds if scan is not None else 0.0
        for item in case.questions:
            text_started = time.perf_counter()
            scores = None
            if scan is not None:
                texts = query_texts(item.question, item.options if settings.option_queries else ())
                scores = query_scores(scan.embeddings, embedder.embed_texts(texts))
            text_s = time.perf_counter() - text_started
            for (method, budget), kept in rows.items():
                started = time.perf_counter()
                outcome = run_method(method, case, item, budget, scores, scan, vlm, settings)
                seconds = time.perf_counter() - started + (text_s if method in CLIP_METHODS else 0.0)
                times = case.frames.times_s[outcome.frames].tolist()
                kept.append({"video": case.name, "question": item.id, "kind": item.kind,
                             "recall": evidence_recall(times, item.evidence), "n_frames": len(outcome.frames),
                             "precision": evidence_precision(times, item.evidence), "seconds": seconds,
                             "correct": outcome.choice == item.answer, "vlm_calls": outcome.vlm_calls,
                             "analysis_calls": outcome.analysis_calls,
                             "names_moment": bool(item.moments_s)})
            bar.update()
    bar.close()
    n_videos = max(len(cases), 1)
    results: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in settings.methods}
    for (method, budget), kept in rows.items():
        results[method][budget] = summarise(kept, n_videos, prescan_s, method)
    comparisons = {b: compare(results, b, settings.air) for b in settings.budgets}
    for budget, comparison in comparisons.items():
        if comparison:  # the rows of both methods follow the same questions in the same order
            correct = {m: [r["correct"] for r in rows[(m, budget)]] for m in (AIR, UNIFORM)}
            comparison["accuracy_gain_ci95_pts"] = paired_gain_ci(correct[AIR], correct[UNIFORM])
    per_question = [{"method": method, "budget": budget, **row} for (method, budget), kept in rows.items() for row in kept]
    return {"results": results, "rows": per_question, "comparisons": comparisons,
            "decode_s_per_video": sum(c.decode_s for c in cases) / n_videos, "prescan_s_per_video": prescan_s / n_videos,
            "n_videos": len(cases), "n_questions": sum(len(c.questions) for c in cases)}


# ---- the command line ----------------------------------------------------------------------------


def missing_model(kind: str, path: str) -> str | None:
    """Why a model directory cannot be used, with the command that makes it; None if it is there."""
    if (Path(path) / MODEL_MARKER).is_file():
        return None
    return f"no {kind.upper()} model at {path} (no {MODEL_MARKER}): make it with `{TRAIN_COMMANDS[kind].format(path=path)}`"


def heldout_videos(data: Path, n_videos: int, seconds: float, skip: int = 0) -> dict[int, Path]:
    """Generate (or reuse) `n_videos` held-out videos of `seconds` each under `data`, after the first
    `skip` held-out seeds (a fresh test set once the first ones have guided choices); video by seed."""
    from sim.shapes_world.dataset import HELDOUT, VIDEO_SUFFIX, generate_dataset, seeds_for, stem
    from sim.shapes_world.scene import SceneConfig

    out = data / f"heldout_{seconds:g}s"
    seeds = seeds_for(HELDOUT, skip + n_videos, HELDOUT_SEED_START)[skip:]
    generate_dataset(out, n_videos, SceneConfig(duration_s=seconds), seed_start=seeds[0], split=HELDOUT, progress=False)
    return {seed: out / (stem(seed) + VIDEO_SUFFIX) for seed in seeds}


def make_cases(data: Path, n_videos: int, seconds: float, n_questions: int,
               skip: int = 0) -> tuple[list[VideoCase], list[int]]:
    """The held-out videos decoded, with their questions; the cases and their seeds."""
    from sim.shapes_world.dataset import SIDECAR_SUFFIX

    videos = heldout_videos(data, n_videos, seconds, skip)
    cases = [load_case(video, json.loads(video.with_suffix(SIDECAR_SUFFIX).read_text()), n_questions)
             for video in videos.values()]
    return cases, list(videos)


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


def print_table(report: dict[str, Any], settings: Settings) -> None:
    print(f"\n{'budget':>6}  {'method':<20}{'ev. recall':>11}{'(moment q.)':>12}{'(other q.)':>11}{'ev. prec.':>10}"
          f"{'QA acc.':>9}{'frames':>8}{'VLM calls/video':>17}{'wall s/video':>14}")
    for budget in settings.budgets:
        for method in settings.methods:
            f = report["results"][method][budget]
            print(f"{budget:>6}  {LABELS[method]:<20}{f['evidence_recall']:>11.3f}"
                  f"{_fmt(f['evidence_recall_moment_questions'], '.3f'):>12}{_fmt(f['evidence_recall_other_questions'], '.3f'):>11}"
                  f"{f['evidence_precision']:>10.3f}{f['qa_accuracy']:>9.3f}{f['frames_per_question']:>8.1f}"
                  f"{f['vlm_calls_per_video']:>17.1f}{f['wall_s_per_video']:>14.2f}")
    for budget, c in report["comparisons"].items():
        if not c:
            continue
        print(f"A.I.R. / uniform at B={budget}: evidence recall ×{_fmt(c['recall_air_over_uniform'], '.2f')} "
              f"({c['recall_gain_pts']:+.1f} pts; target ≥ +{c['recall_target_pts']:.0f}: {_met(c['met_recall'])}), "
              f"QA accuracy ×{_fmt(c['accuracy_air_over_uniform'], '.2f')} ({c['accuracy_gain_pts']:+.1f} pts, "
              f"95 % CI {c['accuracy_gain_ci95_pts'][0]:+.1f} to {c['accuracy_gain_ci95_pts'][1]:+.1f}; "
              f"target ≥ +{c['accuracy_target_pts']:.0f}: {_met(c['met_accuracy'])}), analysis calls per question "
              f"≤ {report['results'][AIR][budget]['analysis_calls_max_per_question']} (bound C·I_max = "
              f"{c['analysis_calls_bound']}: {_met(c['met_analysis_bound'])})")
        if "accuracy_oracle_gain_pts" in c:
            print(f"  the evidence frames themselves (oracle) / uniform at B={budget}: QA accuracy "
                  f"{c['accuracy_oracle_gain_pts']:+.1f} pts: what seeing the evidence itself is worth to this VLM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 videos, 2 questions each, budget 8 (about a minute)")
    parser.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model directory")
    parser.add_argument("--vlm", default=DEFAULT_VLM, help="VLM checkpoint directory (Hugging Face format)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="where the held-out videos are generated (reused)")
    parser.add_argument("--videos", type=int, default=None, help=f"held-out videos (default {DEFAULT_VIDEOS})")
    parser.add_argument("--skip-videos", type=int, default=0,
                        help="start after this many held-out videos (e.g. 16: videos 17.. as a fresh test set)")
    parser.add_argument("--seconds", type=float, default=None, help=f"length of each video (default {DEFAULT_SECONDS:g})")
    parser.add_argument("--questions-per-video", type=int, default=None, help=f"default {DEFAULT_QUESTIONS}")
    parser.add_argument("--budgets", default=None, help="comma-separated frame budgets (default 8,16,32)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--answer-by", choices=(ANSWER_BY_GENERATION, ANSWER_BY_LIKELIHOOD), default=ANSWER_BY_LIKELIHOOD,
                        help="take the option the VLM scores likeliest (as configs/video_qa_*.yaml do), or read every "
                             "method's answer from generated text")
    parser.add_argument("--prescan-fps", type=float, default=PRESCAN_FPS)
    parser.add_argument("--question-only-query", action="store_true",
                        help="CLIP scores frames against the question alone, not also with each option appended")
    parser.add_argument("--device", default="auto", help="torch device of both models")
    parser.add_argument("--rows", type=Path, default=None, help="also write every question's outcome here (JSON lines)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    problems = [p for p in (missing_model("clip", args.clip), missing_model("vlm", args.vlm)) if p]
    if problems:
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        return EXIT_MISSING_MODEL
    default_budgets = QUICK_BUDGETS if args.quick else DEFAULT_BUDGETS
    budgets = tuple(int(b) for b in args.budgets.split(",")) if args.budgets else default_budgets
    n_videos = args.videos or (QUICK_VIDEOS if args.quick else DEFAULT_VIDEOS)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    n_questions = args.questions_per_video or (QUICK_QUESTIONS if args.quick else DEFAULT_QUESTIONS)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    settings = Settings(budgets=budgets, methods=methods, prescan_fps=args.prescan_fps,
                        vlm_spec={"hf": args.vlm, "device": args.device}, answer_by=args.answer_by,
                        option_queries=not args.question_only_query)
    started = time.monotonic()

    from nodes.clip.embedder import load_embedder
    from nodes.vlm import load_vlm

    if args.skip_videos < 0:
        parser.error(f"--skip-videos must be >= 0, got {args.skip_videos}")
    cases, seeds = make_cases(Path(args.data), n_videos, seconds, n_questions, args.skip_videos)
    embedder, vlm = load_embedder(args.clip, device=args.device), load_vlm(settings.vlm_spec)
    print(f"held-out shapes-world: {len(cases)} videos of {seconds:g} s (seeds {seeds[0]}..{seeds[-1]}), "
          f"{sum(len(c.questions) for c in cases)} questions; CLIP {args.clip}, VLM {args.vlm}", flush=True)
    try:
        report = run_benchmark(cases, embedder, vlm, settings, progress=not args.no_progress)
    finally:
        vlm.close()
    print(f"decode {report['decode_s_per_video']:.2f} s/video (apart); CLIP prescan at {args.prescan_fps:g} fps "
          f"{report['prescan_s_per_video']:.2f} s/video (in the CLIP methods' wall time)")
    print_table(report, settings)
    rows = report.pop("rows")
    if args.rows is not None:
        args.rows.parent.mkdir(parents=True, exist_ok=True)
        args.rows.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"per-question outcomes: {args.rows}")
    report.update(benchmark="frame_selection", quick=args.quick, clip=args.clip, vlm=args.vlm, seeds=seeds,
                  skip_videos=args.skip_videos, option_queries=settings.option_queries,
                  video_seconds=seconds, budgets=list(budgets), prescan_fps=args.prescan_fps, answer_by=args.answer_by,
                  air_config={"candidates": settings.air.candidates, "i_max": settings.air.i_max,
                              "time_anchor_weight": settings.air.time_anchor_weight,
                              "time_anchor_width_s": settings.air.time_anchor_width_s},
                  elapsed_s=time.monotonic() - started)
    print(json.dumps(report, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
