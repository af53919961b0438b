"""SamMasker: masks for point, box and mask prompts on camera frames, with one image embedding per frame.

SAM's cost is its image encoder; its prompt encoder and mask decoder are cheap. So the node keeps the
last `cache_frames` frames it was sent and encodes a frame only when the first prompts for it arrive,
then reuses that embedding for every further prompt on the frame (counters `embeddings_computed`,
`embedding_reuses`); a frame nobody prompts costs nothing, and a message whose prompts are all [REJ]
never runs the encoder.

A `MaskPrompts` message holds N prompts of one layout (all with points, or boxes, or mask prompts, or
a mix, the same for all N: one decoder batch), in the pixel frame of the image, and names its frame by
`frame_seq` (-1: the newest). Prompts for a frame not seen yet wait for it; prompts for a frame that
has left the cache are dropped (`prompts_dropped`). Out goes one `Mask` per message: (N, H, W) bool in
the image's frame, each prompt's predicted IoU as its score, header frame_id and stamp_ns from the
frame; a [REJ] prompt gets an all-False mask and score 0 (UGround returns a zero mask for [REJ]).

`SamSegmenter` is the same machinery without the graph, for callers that hold a model themselves
(the UGround model passes its similarity-map prompts straight in as SAM `input_masks`).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nodes.model_dir import DEVICE_AUTO, resolve_device
from nodes.sam.config import DEFAULT_MODEL_DIR, MASK_PROMPT_SCALE, require_model_dir
from nodes.sam.processing import SamPreprocessor, mask_prompt, masks_to_image, scale_boxes, scale_points
from pipeline.messages import Frame, Mask, Message
from pipeline.node import Node

if TYPE_CHECKING:
    import torch


LATEST_FRAME = -1
DEFAULT_CACHE_FRAMES = 4
DEFAULT_PROMPT_BATCH = 64  # prompts per decoder pass: bounds memory, each repeats the image embedding
LABEL_PREFIX = "prompt-"


@dataclass(kw_only=True)
class MaskPrompts(Message):
    """N SAM prompts for one frame, in its pixel frame; every prompt has the same kinds."""

    frame_seq: int = LATEST_FRAME  # the Frame's seq; -1: the newest frame
    points: np.ndarray | None = None  # (N, P, 2) float32 x, y
    point_labels: np.ndarray | None = None  # (N, P) int64: 1 on the object, 0 off it, -10 padding
    boxes: np.ndarray | None = None  # (N, 4) float32 x0, y0, x1, y1
    masks: np.ndarray | None = None  # (N, H, W) float32 mask prompts (logits or [0, 1] maps)
    reject: np.ndarray | None = None  # (N,) bool: [REJ], no target: an empty mask, SAM not run
    labels: list[str] = field(default_factory=list)  # (N,) names carried to the Mask

    def count(self) -> int:
        sizes = {len(a) for a in (self.points, self.point_labels, self.boxes, self.masks, self.reject) if a is not None}
        if len(sizes) != 1:
            raise ValueError(f"MaskPrompts: the prompt arrays disagree on N ({sorted(sizes) or 'no prompts'})")
        n = sizes.pop()
        if self.labels and len(self.labels) != n:
            raise ValueError(f"MaskPrompts: {len(self.labels)} labels for {n} prompts")
        if (self.points is None) != (self.point_labels is None):
            raise ValueError("MaskPrompts: points and point_labels come together")
        return n


@dataclass
class ImageEmbedding:
    """One image through SAM's encoder, with the sizes that map its masks back to the image."""

    embedding: "torch.Tensor"  # (1, C, E, E)
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]


class SamSegmenter:
    """A SamModel from a local directory: `embed` an image once, then `segment` any prompts on it."""

    def __init__(self, model_dir: str | Path, device: str = DEVICE_AUTO, num_threads: int | None = None):
        import torch
        from transformers import SamModel

        directory = require_model_dir(model_dir)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = resolve_device(device)
        self.model = SamModel.from_pretrained(directory, local_files_only=True).eval().to(self.device)
        self.preprocess = SamPreprocessor.from_dir(directory)
        image_size = self.model.config.vision_config.image_size
        if self.preprocess.longest_edge != image_size:
            raise ValueError(f"{directory}: preprocessor longest edge {self.preprocess.longest_edge} differs from "
                             f"the model's image_size {image_size}")
        self.embedding_grid = self.model.config.prompt_encoder_config.image_embedding_size  # E
        self.mask_prompt_size = MASK_PROMPT_SCALE * self.embedding_grid  # 4E

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """(H, W, 3) uint8 → its image embedding: the one expensive step."""
        import torch

        pixels = self.preprocess(image).to(self.device)  # (1, 3, S, S)
        with torch.inference_mode():
            embedding = self.model.get_image_embeddings(pixels)  # (1, C, E, E)
        return ImageEmbedding(embedding, tuple(image.shape[:2]), self.preprocess.resized_shape(*image.shape[:2]))

    def mask_inputs(self, maps: np.ndarray | "torch.Tensor") -> "torch.Tensor":
        """Image-frame mask prompts (N, H, W) → SAM's (N, 1, 4E, 4E)."""
        import torch

        if isinstance(maps, np.ndarray):
            maps = torch.tensor(maps, dtype=torch.float32)  # a copy: received arrays are read-only
        return mask_prompt(maps, self.mask_prompt_size)

    def segment(self, image: ImageEmbedding, points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                boxes: np.ndarray | None = None, mask_inputs: "torch.Tensor | None" = None, *, multimask: bool = False,
                threshold: float = 0.0, batch: int = DEFAULT_PROMPT_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """N prompts on one embedded image: points (N, P, 2) with labels (N, P) and boxes (N, 4) in image
        pixels, mask_inputs (N, 1, 4E, 4E) in SAM's frame → masks (N, H, W) bool and scores (N,) float32.
        `multimask`: SAM proposes 3 masks per prompt and the one with the best predicted IoU is kept."""
        import torch

        given = [a for a in (points, boxes, mask_inputs) if a is not None]
        if not given:
            raise ValueError("segment: no prompts (points, boxes or mask_inputs)")
        n = len(given[0])
        h, w = image.original_hw
        if n == 0:
            return np.zeros((0, h, w), bool), np.zeros(0, np.float32)
        pts = None if points is None else torch.from_numpy(scale_points(points, image.original_hw, image.resized_hw))
        lbl = None if point_labels is None else torch.tensor(np.asarray(point_labels), dtype=torch.int64)
        box = None if boxes is None else torch.from_numpy(scale_boxes(boxes, image.original_hw, image.resized_hw))
        masks, scores = [], []
        with torch.inference_mode():
            for start in range(0, n, batch):
                part = slice(start, min(n, start + batch))
                b = part.stop - part.start
                out = self.model(
                    image_embeddings=image.embedding.expand(b, -1, -1, -1),  # (b, C, E, E): a view, no copy
                    input_points=None if pts is None else pts[part, None].to(self.device),  # (b, 1, P, 2)
                    input_labels=None if lbl is None else lbl[part, None].to(self.device),  # (b, 1, P)
                    input_boxes=None if box is None else box[part, None].to(self.device),  # (b, 1, 4)
                    input_masks=None if mask_inputs is None else mask_inputs[part].to(self.device, torch.float32),
                    multimask_output=multimask)
                iou = out.iou_scores[:, 0]  # (b, K)
                rows, best = torch.arange(b, device=iou.device), iou.argmax(dim=1)  # (b,) each
                low_res = out.pred_masks[:, 0][rows, best]  # (b, 4E, 4E)
                logits = masks_to_image(low_res, self.preprocess.pad_side, image.resized_hw, image.original_hw)
                masks.append((logits > threshold).cpu().numpy())  # (b, H, W)
                scores.append(iou[rows, best].float().cpu().numpy())
        return np.concatenate(masks), np.concatenate(scores).astype(np.float32)


class SamMaskerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(DEFAULT_MODEL_DIR, description="a local SAM directory: ours or a Hugging Face checkpoint")
    device: str = Field(DEVICE_AUTO, description="auto: CUDA when present, else CPU")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for SAM (None: the runtime's default)")
    multimask: bool = Field(False, description="ask SAM for 3 masks per prompt and keep the best-scoring one "
                                               "(a single point is ambiguous: part or whole)")
    mask_threshold: float = Field(0.0, description="on SAM's mask logits")
    cache_frames: int = Field(DEFAULT_CACHE_FRAMES, ge=1, description="frames (and their embeddings) kept")
    prompt_batch: int = Field(DEFAULT_PROMPT_BATCH, ge=1, description="prompts per decoder pass")


@dataclass
class _CachedFrame:
    frame: Frame
    embedding: ImageEmbedding | None = None  # computed on the first prompts for the frame


class SamMasker(Node):
    """Frames in, prompts in, one `Mask` per prompts message out."""

    Params = SamMaskerParams
    inputs = {"frame": Frame, "prompts": MaskPrompts}
    outputs = {"masks": Mask}

    def setup(self) -> None:
        p = self.params
        self.segmenter = SamSegmenter(p.model, p.device, p.num_threads)
        self.frames: OrderedDict[int, _CachedFrame] = OrderedDict()  # by Frame seq, oldest first
        self.waiting: list[MaskPrompts] = []  # prompts for frames not seen yet

    def on_frame(self, msg: Frame) -> None:
        self.frames[msg.seq] = _CachedFrame(msg)
        self.frames.move_to_end(msg.seq)
        while len(self.frames) > self.params.cache_frames:
            self.frames.popitem(last=False)
        waiting, self.waiting = self.waiting, []
        for prompts in waiting:
            if prompts.frame_seq in (msg.seq, LATEST_FRAME):
                self._answer(self.frames[msg.seq], prompts)
            elif prompts.frame_seq < msg.seq:  # its frame was skipped upstream and will not come
                self._drop(prompts, "it never arrived")
            else:
                self.waiting.append(prompts)

    def on_prompts(self, msg: MaskPrompts) -> None:
        msg.count()  # a malformed message fails here, naming what disagrees
        if msg.frame_seq == LATEST_FRAME and self.frames:
            self._answer(next(reversed(self.frames.values())), msg)
        elif msg.frame_seq in self.frames:
            self._answer(self.frames[msg.frame_seq], msg)
        elif self.frames and msg.frame_seq < next(reversed(self.frames)):
            self._drop(msg, f"it is not among the {len(self.frames)} frames kept")
        else:
            self.waiting.append(msg)
            while len(self.waiting) > self.params.cache_frames:
                self._drop(self.waiting.pop(0), "too many prompts were waiting for frames")

    def _drop(self, prompts: MaskPrompts, why: str) -> None:
        self.count("prompts_dropped")
        self.log.warning("prompts for frame %d dropped: %s", prompts.frame_seq, why)

    def _embedding(self, cached: _CachedFrame) -> ImageEmbedding:
        if cached.embedding is None:
            cached.embedding = self.segmenter.embed(np.asarray(cached.frame.image))
            self.count("embeddings_computed")
        else:
            self.count("embedding_reuses")
        return cached.embedding

    def _answer(self, cached: _CachedFrame, prompts: MaskPrompts) -> None:
        n = prompts.count()
        h, w = cached.frame.image.shape[:2]
        masks, scores = np.zeros((n, h, w), bool), np.zeros(n, np.float32)
        keep = np.ones(n, bool) if prompts.reject is None else ~np.asarray(prompts.reject, bool)
        if keep.any():
            if prompts.points is None and prompts.boxes is None and prompts.masks is None:
                raise ValueError(f"node {self.node_id}: MaskPrompts with no points, boxes or masks to segment")
            if prompts.masks is not None and prompts.masks.shape[1:] != (h, w):
                raise ValueError(f"node {self.node_id}: mask prompts of {prompts.masks.shape[1:]} for a frame of {(h, w)}; "
                                 "they are in the image's frame")
            points, point_labels, boxes = (None if a is None else np.asarray(a)[keep]
                                           for a in (prompts.points, prompts.point_labels, prompts.boxes))
            mask_inputs = None if prompts.masks is None else self.segmenter.mask_inputs(np.asarray(prompts.masks)[keep])
            masks[keep], scores[keep] = self.segmenter.segment(
                self._embedding(cached), points, point_labels, boxes, mask_inputs, multimask=self.params.multimask,
                threshold=self.params.mask_threshold, batch=self.params.prompt_batch)
        self.count("prompts", n)
        labels = prompts.labels or [f"{LABEL_PREFIX}{i}" for i in range(n)]
        self.emit("masks", Mask(masks=masks, scores=scores, labels=list(labels), frame_id=cached.frame.frame_id,
                                stamp_ns=cached.frame.stamp_ns))

