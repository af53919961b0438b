"""Image-caption pairs from shapes-world scenes rendered in memory, and the held-out retrieval AUC.

A pair is one frame of a scripted scene and a caption naming shapes visible in it ("a red circle",
"the blue square and a green star", "an empty frame"). Captions name all visible shapes or a random
subset, so the text of one shape learns to match every frame that shows it, whatever else is there;
some captions get question words the tokenizer does not know (they become [UNK]), so a question
used as a query is not thrown off by them. Which caption fits which image is known exactly
(`describes`), so the contrastive loss counts every fitting pair in a batch as a positive instead of
punishing it as a negative.

Splits are the shapes world's seed splits: training draws train-split scenes only, the AUC is
measured on held-out-split scenes only. Frames are drawn at the video size (224 px by default) and
go through the same `ImagePreprocessor` as at inference.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.shapes_world.dataset import seeds_for
from sim.shapes_world.render import SceneRenderer
from sim.shapes_world.scene import COLOURS, SHAPES, Scene, SceneConfig, make_scene

ARTICLES = ("a", "the", "")
EMPTY_CAPTION = "an empty frame"
SUBSET_P = 0.5  # name a random non-empty subset of the visible shapes instead of all of them
FILLER_P = 0.3  # add words the tokenizer maps to [UNK]
MAX_FILLERS = 3
#: words of the shapes-world questions outside the vocabulary (the tokenizer maps them to [UNK])
FILLER_WORDS = ("which", "what", "when", "how", "many", "times", "did", "shape", "colour", "appear", "appeared",
                "vanished", "met", "moved", "happened", "next", "after", "before", "about", "first", "last", "of",
                "these", "at", "that", "?", ",", "0:12", "1:05")
PREFETCH_BATCHES = 2
STOP_POLL_S = 0.1


def all_labels() -> list[str]:
    """Every colour-shape pair the shapes world can show ("red circle", ...)."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def describes(named: frozenset[str], visible: frozenset[str]) -> bool:
    """Does a caption naming `named` fit a frame showing `visible`? ("an empty frame": only an empty one)."""
    return named <= visible if named else not visible


def _article(label: str, rng: np.random.Generator) -> str:
    article = ARTICLES[rng.integers(len(ARTICLES))]
    if article == "a" and label[0] in "aeiou":
        article = "an"
    return f"{article} {label}".strip()


def caption(visible: list[str], rng: np.random.Generator) -> tuple[str, frozenset[str]]:
    """A caption for a frame showing `visible`, and the labels it names. Filler words go between
    phrases, never between a colour and its shape."""
    if not visible:
        named: list[str] = []
        phrases = [EMPTY_CAPTION]
    else:
        named = [str(label) for label in rng.permutation(visible)]
        if len(named) > 1 and rng.random() < SUBSET_P:
            named = named[: rng.integers(1, len(named))]
        phrases = []
        for i, label in enumerate(named):
            phrases += ["and", _article(label, rng)] if i else [_article(label, rng)]
    if rng.random() < FILLER_P:
        for _ in range(rng.integers(1, MAX_FILLERS + 1)):
            phrases.insert(int(rng.integers(len(phrases) + 1)), FILLER_WORDS[rng.integers(len(FILLER_WORDS))])
    return " ".join(phrases), frozenset(named)


class SceneFrames:
    """Random frames of one split's scenes: scripts are made on first use, frames drawn on demand."""

    def __init__(self, split: str, n_scenes: int, config: SceneConfig | None = None, seed_start: int = 0):
        self.config = config or SceneConfig()
        self.seeds = seeds_for(split, n_scenes, seed_start)
        self._scenes: dict[int, Scene] = {}

    def scene(self, seed: int) -> Scene:
        if seed not in self._scenes:
            self._scenes[seed] = make_scene(self.config, seed)
        return self._scenes[seed]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        """One frame (H, W, 3) uint8 and the labels of the shapes visible in it."""
        scene = self.scene(self.seeds[rng.integers(len(self.seeds))])
        frame = int(rng.integers(scene.config.n_frames))
        image = SceneRenderer(scene).frames(frame, frame + 1)[0]
        return image, [actor.label for actor in scene.actors if actor.visible(frame)]

    def images(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[frozenset[str]]]:
        """(n, H, W, 3) uint8 frames and what each shows."""
        samples = [self.sample(rng) for _ in range(n)]
        return np.stack([image for image, _ in samples]), [frozenset(labels) for _, labels in samples]


def measure_mean_std(frames: SceneFrames, n: int, seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of `n` frames in [0, 1]: the normalisation saved with the model."""
    images, _ = frames.images(n, np.random.default_rng(seed))
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0  # (n·H·W, 3)
    return tuple(pixels.mean(0).round(4).tolist()), tuple(np.maximum(pixels.std(0), 1e-3).round(4).tolist())


@dataclass
class PairBatch:
    pixels: np.ndarray  # (B, 3, S, S) float32, preprocessed
    captions: list[str]
    positives: np.ndarray  # (B, B) bool: caption j describes image i


def make_batch(frames: SceneFrames, preprocess: Callable[[np.ndarray], np.ndarray], size: int,
               rng: np.random.Generator) -> PairBatch:
    images, visible = frames.images(size, rng)
    pairs = [caption(sorted(v), rng) for v in visible]
    positives = np.array([[describes(named, v) for _, named in pairs] for v in visible])  # (B, B)
    return PairBatch(preprocess(images), [text for text, _ in pairs], positives)


class Prefetcher:
    """Batches made ahead of the optimiser, so rendering and resizing overlap the step: in a thread
    (`workers=0`), or in `workers` forked processes where one Python thread cannot keep a GPU fed.
    Worker k draws from its own stream (seed, k), so no two workers make the same batch."""

    def __init__(self, make: Callable[[np.random.Generator], Any], seed: int, size: int = PREFETCH_BATCHES,
                 workers: int = 0):
        self._make = make
        self._processes: list[mp.process.BaseProcess] = []
        if workers > 0:
            context = mp.get_context("fork")  # the maker is a closure: forked, never pickled
            self._queue: Any = context.Queue(maxsize=max(size, workers))
            self._halt = context.Event()
            self._processes = [context.Process(target=self._run, args=(np.random.default_rng([seed, k]), self._halt),
                                               name=f"prefetch-{k}", daemon=True) for k in range(workers)]
            for process in self._processes:
                process.start()
        else:
            self._queue = queue.Queue(maxsize=size)
            self._halt = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(np.random.default_rng(seed), self._halt),
                                            name="prefetch", daemon=True)
            self._thread.start()

    def _run(self, rng: np.random.Generator, halt: Any) -> None:
        if mp.parent_process() is not None:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # a forked tokenizer must not spawn its own threads
        while not halt.is_set():
            try:
                item: Any = self._make(rng)
            except Exception as exc:  # handed to the consumer, which raises it
                item = exc
            while not halt.is_set():
                try:
                    self._queue.put(item, timeout=STOP_POLL_S)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self) -> Any:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._halt.set()
        if self._processes:
            for process in self._processes:
                process.join(timeout=STOP_POLL_S * 10)
                if process.is_alive():
                    process.terminate()
            self._queue.cancel_join_thread()
        else:
            self._thread.join()


def retrieval_auc(image_embeds: np.ndarray, visible: list[frozenset[str]], label_embeds: np.ndarray,
                  labels: list[str]) -> dict[str, float]:
    """Does a frame score higher for a shape it shows than for one it does not? ROC AUC of the cosine
    over every (frame, label) pair of non-empty frames: a label the frame shows is a positive, any
    other label a negative ('auc'), or only labels sharing a colour or a shape with a shown one
    ('hard_auc': the confusions that matter)."""
    from sklearn.metrics import roc_auc_score

    scores = image_embeds @ label_embeds.T  # (N, L) cosine
    parts = [label.split() for label in labels]
    y, s, hard_y, hard_s = [], [], [], []
    for i, shown in enumerate(visible):
        if not shown:
            continue
        colours = {label.split()[0] for label in shown}
        shapes = {label.split()[1] for label in shown}
        for j, label in enumerate(labels):
            positive = label in shown
            y.append(positive)
            s.append(scores[i, j])
            if positive or parts[j][0] in colours or parts[j][1] in shapes:
                hard_y.append(positive)
                hard_s.append(scores[i, j])
    if not any(y) or all(y):
        raise ValueError("retrieval AUC needs frames that show some shapes and not others")
    return {"auc": float(roc_auc_score(y, s)), "hard_auc": float(roc_auc_score(hard_y, hard_s))}
