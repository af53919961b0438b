"""Referring-segmentation batches for UGround, made in memory from the shapes-world referring set.

A sample is one still of `sim.shapes_world.referring` (128 px, 2–6 shapes), one of its expressions and
the target mask (the union of the targets: one [SEG] per expression, "all triangles" included); an
empty target (a colour and shape the scene never shows together, a relation nothing satisfies) answers
[REJ] and has no mask, as in gRefCOCO. The conversation is the shapes-world VLM's chat turn:

    [BOS] USER: <image>×36\\nPlease segment the red circle left of the blue square. ASSISTANT: [SEG] [EOS]

The [SEG] embedding is the hidden state at the token that emits [SEG] (the last prompt token): LISA's and
UGround's shifted `seg_token_mask`, so one pass over the prompt decides [SEG] or [REJ] and gives the
embedding at every layer. Images reach the VLM padded to a square at the right and bottom (UGround's
`--pad_train_clip_images`), so the image-token grid covers a known canvas whatever the frame's shape;
SAM gets its own resize-longest-side + pad. Splits are by seed (every fifth held out), so a held-out
still is never a training still; the held-out set is every expression of the first held-out scenes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from nodes.clip.processing import ImagePreprocessor
from nodes.sam.processing import SamPreprocessor
from nodes.shapes_vlm.data import pad_rows
from nodes.shapes_vlm.model import ASSISTANT, IMAGE_TOKEN, USER
from sim.shapes_world.dataset import seeds_for
from sim.shapes_world.referring import (ALL_OF, EMPTY, RELATIONS, THE, Expression, ReferringScene, make_expressions,
                                        make_scene, plural)
from sim.shapes_world.scene import COLOURS, SHAPES

SEG_TOKEN, REJ_TOKEN = "[SEG]", "[REJ]"
SEGMENT_PROMPT = "Please segment {expression}."
#: every word a referring expression or the prompt can hold, for the tokenizer (model.vocabulary)
VOCABULARY_TEXT = " ".join([SEGMENT_PROMPT.format(expression=""), THE, ALL_OF, *RELATIONS, *COLOURS, *SHAPES,
                            *map(plural, SHAPES), "shapes"])
SCENE_CACHE = 4096  # scenes whose shapes and expressions are kept (small objects; images are drawn per sample)


@dataclass(frozen=True)
class ReferringSample:
    """One still, one expression, and what it refers to."""

    image: np.ndarray  # (H, W, 3) uint8
    expression: str
    target: np.ndarray  # (H, W) bool; all False for an empty target
    kind: str  # attribute / relation / multi / empty
    seed: int

    @property
    def has_target(self) -> bool:
        return self.kind != EMPTY


@lru_cache(maxsize=SCENE_CACHE)
def scene_with_expressions(seed: int, size: int) -> tuple[ReferringScene, tuple[Expression, ...]]:
    scene = make_scene(seed, size)
    return scene, tuple(make_expressions(scene))


def sample_of(scene: ReferringScene, expression: Expression) -> ReferringSample:
    return ReferringSample(scene.image(), expression.text, scene.target_mask(expression.targets), expression.kind,
                           scene.seed)


class ReferringSource:
    """Samples of one split: random ones for training, every expression of its scenes for evaluation."""

    def __init__(self, split: str, n_scenes: int, size: int, seed_start: int = 0):
        self.seeds = seeds_for(split, n_scenes, seed_start)
        self.size = size

    def sample(self, rng: np.random.Generator) -> ReferringSample:
        while True:  # a scene whose every query is unclear has no expressions: draw again
            scene, expressions = scene_with_expressions(self.seeds[rng.integers(len(self.seeds))], self.size)
            if expressions:
                return sample_of(scene, expressions[rng.integers(len(expressions))])

    def all_samples(self, limit: int | None = None) -> list[ReferringSample]:
        """Every expression of every scene, in seed order; the first `limit` of them."""
        out: list[ReferringSample] = []
        for seed in self.seeds:
            scene, expressions = scene_with_expressions(seed, self.size)
            out += [sample_of(scene, e) for e in expressions]
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) → (S, S, 3), S = max(H, W), zeros at the right and bottom (UGround's padded CLIP input)."""
    h, w = image.shape[:2]
    side = max(h, w)
    if h == w:
        return image
    return np.pad(image, ((0, side - h), (0, side - w), (0, 0)))


@dataclass
class UGroundBatch:
    """Samples as model inputs. Every image of a batch has one size (the referring set's do)."""

    input_ids: np.ndarray  # (B, T) int64, right-padded
    attention_mask: np.ndarray  # (B, T) int64
    labels: np.ndarray  # (B, T) int64: [SEG]/[REJ] and [EOS], IGNORE_INDEX elsewhere (empty without answers)
    seg_positions: np.ndarray  # (B,) int64: the token whose hidden state is the [SEG] embedding
    clip_pixels: np.ndarray  # (B, 3, s, s) float32: the VLM's view, padded square
    sam_pixels: np.ndarray  # (B, 3, S, S) float32: SAM's view
    targets: np.ndarray  # (B, H, W) bool
    has_target: np.ndarray  # (B,) bool
    kinds: list[str]
    image_hw: tuple[int, int]  # (H, W) of the images
    sam_resized_hw: tuple[int, int]  # the images' size inside SAM's padded input


class UGroundEncoder:
    """Images and expressions → token ids and pixels, the same way at training and at inference."""

    def __init__(self, tokenizer: object, image_tokens: int, clip_preprocess: ImagePreprocessor,
                 sam_preprocess: SamPreprocessor):
        self.tokenizer = tokenizer
        self.image_tokens = image_tokens
        self.clip_preprocess = clip_preprocess
        self.sam_preprocess = sam_preprocess
        ids = tokenizer.convert_tokens_to_ids([SEG_TOKEN, REJ_TOKEN, tokenizer.eos_token])
        self.seg_id, self.rej_id, self.eos_id = ids

    def prompt_ids(self, expression: str) -> list[int]:
        """The chat turn up to the answer cue; its last token emits [SEG] or [REJ]."""
        prompt = SEGMENT_PROMPT.format(expression=expression)
        text = f"{USER}: {IMAGE_TOKEN * self.image_tokens}\n{prompt} {ASSISTANT}:"
        return self.tokenizer(text)["input_ids"]

    def encode(self, images: list[np.ndarray], expressions: list[str], targets: list[np.ndarray] | None = None,
               kinds: list[str] | None = None) -> UGroundBatch:
        """With targets: teacher-forced answers ([SEG] for a non-empty target, else [REJ]) and labels on them;
        without: the prompts alone, for inference."""
        if len({image.shape for image in images}) != 1:
            raise ValueError(f"a batch holds images of one size, got {sorted({image.shape for image in images})}")
        h, w = images[0].shape[:2]
        has_target = np.array([t.any() for t in targets] if targets is not None else [False] * len(images))
        rows = []
        for expression, present in zip(expressions, has_target):
            answer = [self.seg_id if present else self.rej_id, self.eos_id] if targets is not None else []
            rows.append((self.prompt_ids(expression), answer))
        ids, mask, labels = pad_rows(rows, self.tokenizer.pad_token_id)
        clip_pixels = self.clip_preprocess(np.stack([pad_to_square(image) for image in images]))  # (B, 3, s, s)
        sam_pixels = np.concatenate([self.sam_preprocess(image).numpy() for image in images])  # (B, 3, S, S)
        target_array = np.stack(targets) if targets is not None else np.zeros((len(images), h, w), bool)
        return UGroundBatch(ids, mask, labels, np.array([len(p) - 1 for p, _ in rows], np.int64), clip_pixels,
                            sam_pixels, target_array, has_target, list(kinds or [""] * len(images)), (h, w),
                            self.sam_preprocess.resized_shape(h, w))

    def batch(self, samples: list[ReferringSample]) -> UGroundBatch:
        return self.encode([s.image for s in samples], [s.expression for s in samples], [s.target for s in samples],
                           [s.kind for s in samples])
