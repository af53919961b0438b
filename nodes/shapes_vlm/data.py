"""Training examples for the shapes-world VLM, made in memory from scripted scenes, and their token batches.

Three tasks, each an image-prompt-answer triple whose answer comes from the script, never a model:
- caption: one frame + "Which shapes does this frame show?" → "the red circle and the blue square"
  (canonical order: colour, then shape, as listed in the scene module), or "no shape". LLaVA's
  alignment task: small VLMs trained here on the question tasks alone ignored the image and
  answered the prior (reference/platform.md); naming what is visible first is what made them look.
- relevance: one frame + A.I.R.'s analysis prompt for a question (`nodes.air.analysis`), mostly with
  the frame's time in the video →
  "Score: <1-5>\\nReasoning: it shows <the shapes visible>." with the score from `relevance_scores`.
- qa: a few frames in time order, laid out as a frame selector would give them (`QA_LAYOUTS`: one frame
  in each evidence span and the rest outside; evenly spread over the video, as uniform sampling does;
  clustered in and around the spans, as the oracle does; or drawn by their relevance score, mostly
  evidence and frames showing the key shapes elsewhere, as A.I.R.'s VLM-validated frames are), + the
  answering prompt (`nodes.video_qa`, half the time with the frames' timestamps as Video-in-the-Loop
  sends them) → the right option's text ("the red circle appeared"), or with `qa_target="letter"` its
  letter. The prompt asks for the letter, as real VLMs answer; the nodes read either (`parse_choice`
  with the option texts). Letter targets left every model trained here at chance (held-out 0.28 after
  the H200 run): mapping a letter back to its option is an indirection a 4.5M-parameter LM did not
  learn, while naming what the frames show is the caption task it already does. 24 CPU minutes of
  text targets from the letter-trained model reached 0.54 held-out (0.42 with blank frames).

The relevance rule, per frame of a question (K: the key shapes, the shapes named in the question and
its right answer; for a colour answer, which names no shape, the shape of that colour that appeared
in an evidence span. R: every shape named in the question or its options, or having an option's
colour. "In span": the frame's time lies inside one of the question's evidence spans):
  5  in span and every key shape visible: the evidence itself;
  4  every key shape visible outside the spans, or some of them inside: clear but incomplete;
  3  some key shape visible outside the spans, or in span with none visible (just before an
     appearance, just after a vanishing): context around the moment asked about;
  2  a shape of R visible: related, but it does not help to answer;
  1  nothing of the question in view.
A frame alone does not show its time, so 5 and 4 (and 3 and 1 in span) differ only by when the
frame is: the prompt says it (A.I.R.'s `frame_time`), and the held-out metrics report exact and
within-±1 agreement.

Splits are the shapes world's seed splits: training draws train-split scenes only, evaluation
held-out ones only. Each scene lasts one of `scene_seconds`, chosen by its seed. The default is 60 s,
which the shipped model's first stage trained on; its later stages mix 60 and 300 s scenes
(scripts/train_vlm_shapes.sh), which show frame times and "at about 4:38" past 1:00, as the
benchmark's 5-minute videos ask.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from nodes.air.analysis import analysis_prompt
from nodes.video_qa import OPTION_LETTERS, answer_prompt
from nodes.vlm.hf import chat_messages
from sim.shapes_world.dataset import seeds_for
from sim.shapes_world.questions import Question, make_questions
from sim.shapes_world.render import SceneRenderer
from sim.shapes_world.scene import APPEAR, COLOURS, SHAPES, Scene, SceneConfig, make_scene

if TYPE_CHECKING:
    from transformers import LlavaProcessor

CAPTION, RELEVANCE, QA = "caption", "relevance", "qa"
TASKS = (CAPTION, RELEVANCE, QA)
CAPTION_PROMPT = "Which shapes does this frame show?"
NO_SHAPE = "no shape"
SCORE_ANSWER = "Score: {score}\nReasoning: {reason}"
REASON = "it shows {shapes}."
#: the words of the shapes-world questions and event descriptions (sim/shapes_world/questions.py)
QUESTION_WORDS = ("What colour was the shape that appeared at about ? Which shape met the How many times did a an "
                  "appear Which of these happened next , after first vanished last moved")
#: texts whose words the tokenizer must know, besides the prompts of the nodes (see model.vocabulary)
VOCABULARY_TEXTS = (CAPTION_PROMPT, NO_SHAPE, SCORE_ANSWER, REASON, QUESTION_WORDS, "the and")
SCORE_EVIDENCE, SCORE_PARTIAL, SCORE_CONTEXT, SCORE_RELATED, SCORE_IRRELEVANT = 5, 4, 3, 2, 1
QA_FRAMES = 4
FRAME_TIME_P = 0.8  # relevance prompts that say where the frame is (A.I.R.'s node does by default)
TIMESTAMPS_P = 0.5  # QA prompts that state the frames' times (Video-in-the-Loop does, the QA node does not)
IGNORE_INDEX = -100  # label of a token that is not part of an answer: no loss
QA_TEXT, QA_LETTER = "text", "letter"  # what a QA example's answer is: the right option's text, or its letter
QA_TARGETS = (QA_TEXT, QA_LETTER)
QA_SPANS, QA_UNIFORM, QA_CLUSTERS, QA_RELEVANT = "spans", "uniform", "clusters", "relevant"  # see qa_frame_layout
QA_LAYOUTS = (QA_SPANS, QA_UNIFORM, QA_CLUSTERS, QA_RELEVANT)
CLUSTER_REACH_S = 5.0  # a cluster's frames lie in its span widened by up to this much either side
#: relevant layout: the chance that a frame comes from the frames of each relevance score (renormalised over
#: the scores the question's frames have). Near what A.I.R. hands the answering VLM on the benchmark: a third
#: of its frames evidence on questions that name a moment, most others showing the key shapes elsewhere
RELEVANT_LAYOUT_P = {SCORE_EVIDENCE: 0.3, SCORE_PARTIAL: 0.35, SCORE_CONTEXT: 0.15, SCORE_RELATED: 0.15,
                     SCORE_IRRELEVANT: 0.05}
SCENE_SECONDS = (60.0,)  # scene lengths, one drawn per seed (see ShapesTasks.duration_s)
DURATION_STREAM = 11  # the seed's random stream that picks its scene length, apart from the script's
LABEL = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")


def label_order(label: str) -> tuple[int, int]:
    colour, shape = label.split()
    return list(COLOURS).index(colour), SHAPES.index(shape)


def describe(labels: frozenset[str] | set[str]) -> str:
    """"the red circle and the blue square" (canonical order), or "no shape"."""
    return " and ".join(f"the {label}" for label in sorted(labels, key=label_order)) or NO_SHAPE


def labels_named(text: str) -> set[str]:
    return {" ".join(match) for match in LABEL.findall(text)}


def in_spans(times_s: np.ndarray, spans: list[tuple[float, float]]) -> np.ndarray:
    """(F,) bool: which times lie inside any span (ends included)."""
    inside = np.zeros(len(times_s), bool)
    for lo, hi in spans:
        inside |= (times_s >= lo) & (times_s <= hi)
    return inside


def key_labels(scene: Scene, question: Question) -> set[str]:
    """The shapes whose sight answers the question (K in the rule above)."""
    named = labels_named(question.question) | labels_named(question.options[question.answer])
    if named:
        return named
    answer = question.options[question.answer]
    return {e.labels[0] for e in scene.events if e.kind == APPEAR and answer in e.labels[0].split()
            and in_spans(np.array([scene.seconds(e.start_frame)]), question.evidence)[0]}


def related_labels(scene_labels: list[str], question: Question) -> set[str]:
    """Shapes the question or its options name, or that have an option's colour (R in the rule above)."""
    named = labels_named(" ".join([question.question, *question.options]))
    return named | {label for label in scene_labels if label.split()[0] in question.options}


def relevance_scores(scene: Scene, question: Question, labels: list[str], visible: np.ndarray) -> np.ndarray:
    """(F,) int: the 1–5 relevance of every frame to `question` by the rule in the module docstring.
    `visible` (F, L) says which of `labels` each frame shows."""
    times_s = np.arange(len(visible)) / scene.config.fps  # (F,)
    span = in_spans(times_s, question.evidence)
    keys = [labels.index(k) for k in key_labels(scene, question) if k in labels]
    related = [labels.index(r) for r in related_labels(labels, question) if r in labels]
    every_key = visible[:, keys].all(1) if keys else np.zeros(len(visible), bool)
    some_key = visible[:, keys].any(1)
    conditions = [span & every_key, every_key | (span & some_key), some_key | span, visible[:, related].any(1)]
    return np.select(conditions, [SCORE_EVIDENCE, SCORE_PARTIAL, SCORE_CONTEXT, SCORE_RELATED], SCORE_IRRELEVANT)


@dataclass
class SceneInfo:
    """One scene with what the tasks ask of it, made once."""

    scene: Scene
    questions: list[Question]

    @cached_property
    def labels(self) -> list[str]:
        return sorted({actor.label for actor in self.scene.actors})

    @cached_property
    def visible(self) -> np.ndarray:
        """(F, L) bool: which label each frame shows."""
        n = self.scene.config.n_frames
        out = np.zeros((n, len(self.labels)), bool)
        for actor in self.scene.actors:
            end = actor.vanish_frame if actor.vanish_frame is not None else n
            out[actor.appear_frame: end, self.labels.index(actor.label)] = True
        return out

    def shown(self, frame: int) -> frozenset[str]:
        return frozenset(label for label, seen in zip(self.labels, self.visible[frame]) if seen)

    def image(self, frame: int) -> np.ndarray:
        return SceneRenderer(self.scene).frames(frame, frame + 1)[0]  # (H, W, 3) uint8


@dataclass
class Example:
    task: str
    images: list[np.ndarray]  # each (H, W, 3) uint8, in time order
    prompt: str
    target: str
    truth: int  # relevance: the 1–5 score; qa: the right option's index; caption: how many shapes


class ShapesTasks:
    """Examples of every task from one split's scenes; scripts and questions are made on first use."""

    def __init__(self, split: str, n_scenes: int, frame_size: int = 224, qa_frames: int = QA_FRAMES,
                 seed_start: int = 0, scene_seconds: tuple[float, ...] = SCENE_SECONDS, qa_target: str = QA_TEXT,
                 qa_layouts: tuple[str, ...] = (QA_SPANS,)):
        if not scene_seconds or min(scene_seconds) <= 0:
            raise ValueError(f"scene_seconds must hold positive lengths, got {scene_seconds}")
        if qa_target not in QA_TARGETS:
            raise ValueError(f"qa_target must be one of {', '.join(QA_TARGETS)}, got {qa_target!r}")
        if not qa_layouts or set(qa_layouts) - set(QA_LAYOUTS):
            raise ValueError(f"qa_layouts must be some of {', '.join(QA_LAYOUTS)}, got {qa_layouts}")
        self.config = SceneConfig(width=frame_size, height=frame_size)
        self.seeds = seeds_for(split, n_scenes, seed_start)
        self.qa_frames = qa_frames
        self.scene_seconds = tuple(scene_seconds)
        self.qa_target = qa_target
        self.qa_layouts = tuple(qa_layouts)
        self._scenes: dict[int, SceneInfo] = {}

    def duration_s(self, seed: int) -> float:
        """The length of the seed's scene, one of `scene_seconds`, fixed by the seed."""
        return self.scene_seconds[int(np.random.default_rng([seed, DURATION_STREAM]).integers(len(self.scene_seconds)))]

    def info(self, seed: int) -> SceneInfo:
        if seed not in self._scenes:
            scene = make_scene(replace(self.config, duration_s=self.duration_s(seed)), seed)
            self._scenes[seed] = SceneInfo(scene, make_questions(scene))
        return self._scenes[seed]

    def _with_questions(self, rng: np.random.Generator) -> tuple[SceneInfo, Question]:
        while True:  # nearly every scene has questions; the few that have none are drawn again
            info = self.info(self.seeds[rng.integers(len(self.seeds))])
            if info.questions:
                return info, info.questions[rng.integers(len(info.questions))]

    def caption(self, rng: np.random.Generator) -> Example:
        info = self.info(self.seeds[rng.integers(len(self.seeds))])
        frame = int(rng.integers(info.scene.config.n_frames))
        shown = info.shown(frame)
        return Example(CAPTION, [info.image(frame)], CAPTION_PROMPT, describe(shown), len(shown))

    def relevance(self, rng: np.random.Generator) -> Example:
        """A frame of a score drawn uniformly among those the question's frames have: balanced classes,
        so no score is a safe guess."""
        info, question = self._with_questions(rng)
        scores = relevance_scores(info.scene, question, info.labels, info.visible)  # (F,)
        present = np.unique(scores)
        score = int(present[rng.integers(len(present))])
        candidates = np.flatnonzero(scores == score)
        frame = int(candidates[rng.integers(len(candidates))])
        answer = SCORE_ANSWER.format(score=score, reason=REASON.format(shapes=describe(info.shown(frame))))
        time_s = info.scene.seconds(frame) if rng.random() < FRAME_TIME_P else None
        prompt = analysis_prompt(question.question, question.options, time_s)
        return Example(RELEVANCE, [info.image(frame)], prompt, answer, score)

    def qa_frame_indices(self, info: SceneInfo, question: Question, rng: np.random.Generator) -> list[int]:
        """One frame from each of up to n−1 evidence spans (where the key shapes show, if they do
        somewhere in it), the rest from outside the spans; sorted."""
        scores = relevance_scores(info.scene, question, info.labels, info.visible)  # (F,)
        times_s = np.arange(len(scores)) / info.scene.config.fps
        spans = [question.evidence[i] for i in rng.permutation(len(question.evidence))[: self.qa_frames - 1]]
        picked: list[int] = []
        for span in spans:
            inside = np.flatnonzero(in_spans(times_s, [span]))
            best = inside[scores[inside] == SCORE_EVIDENCE]
            pool = [f for f in (best if len(best) else inside) if f not in picked]
            if pool:
                picked.append(int(pool[rng.integers(len(pool))]))
        outside = np.flatnonzero(~in_spans(times_s, question.evidence))
        pool = [int(f) for f in (outside if len(outside) else np.arange(len(scores))) if f not in picked]
        picked += [pool[i] for i in rng.permutation(len(pool))[: self.qa_frames - len(picked)]]
        return sorted(picked)

    def qa_uniform_indices(self, info: SceneInfo, rng: np.random.Generator) -> list[int]:
        """n frames evenly spread over the video at a random phase: what uniform sampling shows."""
        n_frames = info.scene.config.n_frames
        phase = rng.random()
        return sorted({int((k + phase) * n_frames / self.qa_frames) for k in range(self.qa_frames)})

    def qa_cluster_indices(self, info: SceneInfo, question: Question, rng: np.random.Generator) -> list[int]:
        """One frame in each of up to n spans, then frames near them (each span widened by up to
        CLUSTER_REACH_S either side) until n: the dense runs around the evidence that a selector which
        found it gives, with the moments just before and after an event; sorted."""
        times_s = np.arange(info.scene.config.n_frames) / info.scene.config.fps
        spans = [question.evidence[i] for i in rng.permutation(len(question.evidence))[: self.qa_frames]]
        picked: set[int] = set()
        for span in spans:
            inside = np.flatnonzero(in_spans(times_s, [span]))
            if len(inside):
                picked.add(int(inside[rng.integers(len(inside))]))
        reach = [(lo - rng.uniform(0, CLUSTER_REACH_S), hi + rng.uniform(0, CLUSTER_REACH_S)) for lo, hi in spans]
        near = [int(f) for f in np.flatnonzero(in_spans(times_s, reach)) if f not in picked]
        picked.update(near[i] for i in rng.permutation(len(near))[: self.qa_frames - len(picked)])
        return sorted(picked)

    def qa_relevant_indices(self, info: SceneInfo, question: Question, rng: np.random.Generator) -> list[int]:
        """n distinct frames, each from the frames of one relevance score drawn by RELEVANT_LAYOUT_P: the
        evidence mixed with frames that show the key shapes at other times, as a selector that judges
        each frame's relevance (A.I.R.) gives them; sorted."""
        scores = relevance_scores(info.scene, question, info.labels, info.visible)  # (F,)
        present = np.array(sorted(RELEVANT_LAYOUT_P))
        present = present[np.isin(present, scores)]
        chance = np.array([RELEVANT_LAYOUT_P[int(score)] for score in present])
        picked: set[int] = set()
        while len(picked) < min(self.qa_frames, len(scores)):
            score = present[rng.choice(len(present), p=chance / chance.sum())]
            pool = [int(f) for f in np.flatnonzero(scores == score) if f not in picked]
            if pool:
                picked.add(pool[rng.integers(len(pool))])
            else:  # every frame of this score is taken: draw among the other scores
                keep = present != score
                present, chance = present[keep], chance[keep]
        return sorted(picked)

    def qa_frame_layout(self, info: SceneInfo, question: Question, rng: np.random.Generator) -> list[int]:
        """The frames of one QA example, in one of the task's layouts drawn at random."""
        makers = {QA_SPANS: lambda: self.qa_frame_indices(info, question, rng),
                  QA_UNIFORM: lambda: self.qa_uniform_indices(info, rng),
                  QA_CLUSTERS: lambda: self.qa_cluster_indices(info, question, rng),
                  QA_RELEVANT: lambda: self.qa_relevant_indices(info, question, rng)}
        return makers[self.qa_layouts[rng.integers(len(self.qa_layouts))]]()

    def qa(self, rng: np.random.Generator) -> Example:
        info, question = self._with_questions(rng)
        frames = self.qa_frame_layout(info, question, rng)
        times = [info.scene.seconds(f) for f in frames] if rng.random() < TIMESTAMPS_P else None
        prompt = answer_prompt(question.question, question.options, times)
        target = question.options[question.answer] if self.qa_target == QA_TEXT else OPTION_LETTERS[question.answer]
        return Example(QA, [info.image(f) for f in frames], prompt, target, question.answer)

    def sample(self, task: str, rng: np.random.Generator) -> Example:
        makers = {CAPTION: self.caption, RELEVANCE: self.relevance, QA: self.qa}
        if task not in makers:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        return makers[task](rng)


@dataclass
class Batch:
    """Examples of one task as model inputs; every row's images are in `pixel_values`, in row order."""

    task: str
    input_ids: np.ndarray  # (B, T) int64, right-padded
    attention_mask: np.ndarray  # (B, T) int64
    labels: np.ndarray  # (B, T) int64: the answer's tokens, IGNORE_INDEX elsewhere
    pixel_values: np.ndarray  # (N, 3, S, S) float32
    truths: np.ndarray  # (B,) int64


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt, answer) token rows → right-padded ids, attention mask and labels (the answer's tokens,
    IGNORE_INDEX elsewhere), each (B, T) int64."""
    length = max(len(p) + len(a) for p, a in rows)
    ids = np.full((len(rows), length), pad_id, np.int64)  # (B, T)
    mask = np.zeros((len(rows), length), np.int64)
    labels = np.full((len(rows), length), IGNORE_INDEX, np.int64)
    for i, (prompt, answer) in enumerate(rows):
        ids[i, : len(prompt) + len(answer)] = prompt + answer
        mask[i, : len(prompt) + len(answer)] = 1
        labels[i, len(prompt): len(prompt) + len(answer)] = answer
    return ids, mask, labels


class Encoder:
    """Examples → token ids exactly as the checkpoint's processor builds them at inference: the chat
    template, each image token repeated once per image feature, [BOS] first; the answer and [EOS] after."""

    def __init__(self, processor: "LlavaProcessor", image_tokens: int, preprocess: Callable[[np.ndarray], np.ndarray]):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token: str = processor.image_token
        self.image_tokens = image_tokens
        self.preprocess = preprocess

    def prompt_ids(self, n_images: int, prompt: str) -> list[int]:
        messages = chat_messages(n_images, prompt)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text.replace(self.image_token, self.image_token * self.image_tokens))["input_ids"]

    def answer_ids(self, target: str) -> list[int]:
        return [*self.tokenizer(target, add_special_tokens=False)["input_ids"], self.tokenizer.eos_token_id]

    def batch(self, examples: list[Example]) -> Batch:
        tasks = {example.task for example in examples}
        if len(tasks) != 1:
            raise ValueError(f"a batch holds one task, got {sorted(tasks)}")
        rows = [(self.prompt_ids(len(e.images), e.prompt), self.answer_ids(e.target)) for e in examples]
        ids, mask, labels = pad_rows(rows, self.tokenizer.pad_token_id)
        pixels = self.preprocess(np.stack([image for e in examples for image in e.images]))  # (N, 3, S, S)
        return Batch(tasks.pop(), ids, mask, labels, pixels, np.array([e.truth for e in examples], np.int64))
