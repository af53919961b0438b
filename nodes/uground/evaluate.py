"""UGround at inference, and the referring-segmentation metrics it is judged by.

Inference: one VLM pass; where it answers [REJ] (logit([REJ]) ≥ logit([SEG]) at the answer) the mask is
empty and SAM is not run; elsewhere the [SEG] of the mode's layer prompts SAM. Mode 1 (the last layer) is
what the paper evaluates with; mode 3 here takes the policy's most probable layer (no sampling at
inference); "no mask prompt" is the same model with SAM's no-mask embedding instead of the similarity map
(the LISA-style baseline the mask prompt is measured against).

Metrics, gRefCOCO's: per sample I and U of the predicted and the true mask; gIoU is the mean of I/U with an
empty-target sample scoring 1 when the prediction is empty and 0 otherwise; cIoU is ΣI/ΣU over the set;
empty accuracy is the share of empty targets answered with an empty mask (N-acc), target accuracy the
share of the others answered with a non-empty one (T-acc). gIoU is also given per expression kind.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nodes.uground.config import MODE_LAST, MODE_POLICY
from nodes.uground.data import ReferringSample, UGroundBatch, UGroundEncoder
from nodes.uground.model import UGroundModel, to_inputs

MASK_THRESHOLD = 0.0  # on SAM's mask logits
MODE1, MODE3, NO_MASK_PROMPT = "mode1", "mode3", "no_mask_prompt"


@dataclass(frozen=True)
class Variant:
    """How the model is read at inference: the layer mode, or one fixed layer, and whether the map prompts SAM."""

    name: str
    mode: int = MODE_LAST
    mask_prompt: bool = True
    layer: int | None = None


DEFAULT_VARIANTS = (Variant(MODE1, MODE_LAST), Variant(MODE3, MODE_POLICY), Variant(NO_MASK_PROMPT, MODE_LAST, False))


def layer_variants(num_layers: int) -> tuple[Variant, ...]:
    """Every hidden layer on its own, for the table of which layer's [SEG] grounds best."""
    return tuple(Variant(f"layer{layer}", layer=layer) for layer in range(num_layers))


@dataclass
class Prediction:
    """One expression's answer: the mask (empty for [REJ]) and what decided it."""

    mask: np.ndarray  # (H, W) bool
    present: bool  # the model answered [SEG]
    p_seg: float  # P([SEG]) against [REJ]
    iou: float = 0.0  # SAM's predicted IoU; 0 for [REJ]
    layer: int = -1  # the similarity map's layer; -1 for [REJ]


@torch.no_grad()
def predict(model: UGroundModel, encoder: UGroundEncoder, batch: UGroundBatch, variants: Iterable[Variant],
            device: torch.device, threshold: float = MASK_THRESHOLD) -> dict[str, list[Prediction]]:
    """Each variant's predictions for a batch, from one VLM pass and one SAM encoding."""
    inputs = to_inputs(batch, device)
    reading = model.read(inputs["input_ids"], inputs["attention_mask"], inputs["clip_pixels"], inputs["seg_positions"])
    present = reading.present > 0  # (B,)
    p_seg = torch.sigmoid(reading.present).cpu().numpy()  # (B,)
    rows = present.nonzero()[:, 0]  # (N,)
    empty = np.zeros((len(present), *batch.image_hw), bool)  # (B, H, W)
    embeddings = model.embed_images(inputs["sam_pixels"][rows]) if len(rows) else None  # (N, C, E, E)
    out: dict[str, list[Prediction]] = {}
    for variant in variants:
        masks, ious, layers = empty.copy(), np.zeros(len(present)), np.full(len(present), -1)
        if len(rows):
            seg, images = reading.seg_states[rows], reading.image_states[rows]  # (N, L, D), (N, L, P, D)
            choice, sam_layers = model.layers(seg, variant.mode, sample=False, layer=variant.layer)
            pred = model.decode(seg, images, embeddings, choice.layers, sam_layers, batch.image_hw,
                                batch.sam_resized_hw, mask_prompt=variant.mask_prompt)
            index = rows.cpu().numpy()
            masks[index] = (pred.mask_logits > threshold).cpu().numpy()
            ious[index], layers[index] = pred.iou.cpu().numpy(), choice.layers.cpu().numpy()
        out[variant.name] = [Prediction(masks[i], bool(present[i]), float(p_seg[i]), float(ious[i]), int(layers[i]))
                             for i in range(len(present))]
    return out


@dataclass
class Tally:
    """Accumulates predictions against the truth, then gives the metrics."""

    intersections: list[int] = field(default_factory=list)
    unions: list[int] = field(default_factory=list)
    empty_truth: list[bool] = field(default_factory=list)
    empty_prediction: list[bool] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)

    def add(self, prediction: Prediction, target: np.ndarray, kind: str) -> None:
        self.intersections.append(int((prediction.mask & target).sum()))
        self.unions.append(int((prediction.mask | target).sum()))
        self.empty_truth.append(not target.any())
        self.empty_prediction.append(not prediction.mask.any())
        self.kinds.append(kind)
        self.layers.append(prediction.layer)

    def metrics(self) -> dict[str, Any]:
        inter, union = np.array(self.intersections, np.float64), np.array(self.unions, np.float64)
        iou = np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)  # an empty truth answered empty scores 1
        truth, guess = np.array(self.empty_truth), np.array(self.empty_prediction)
        kinds = np.array(self.kinds)
        layers = np.array(self.layers)
        return {"giou": float(iou.mean()), "ciou": float(inter.sum() / max(union.sum(), 1.0)),
                "empty_accuracy": float((guess[truth]).mean()) if truth.any() else None,
                "target_accuracy": float((~guess[~truth]).mean()) if (~truth).any() else None,
                "giou_by_kind": {str(k): float(iou[kinds == k].mean()) for k in sorted(set(self.kinds))},
                "layers": {str(int(k)): int((layers == k).sum()) for k in sorted(set(layers[layers >= 0].tolist()))},
                "n": len(iou)}


def evaluate(model: UGroundModel, encoder: UGroundEncoder, samples: list[ReferringSample], device: torch.device,
             *, batch_size: int, variants: Iterable[Variant] = DEFAULT_VARIANTS) -> dict[str, dict[str, Any]]:
    """Every variant's metrics over `samples` (in eval mode; the model's mode is restored after)."""
    variants = tuple(variants)
    tallies = {variant.name: Tally() for variant in variants}
    was_training = model.training
    model.eval()
    for start in range(0, len(samples), batch_size):
        part = samples[start: start + batch_size]
        predictions = predict(model, encoder, encoder.batch(part), variants, device)
        for name, answers in predictions.items():
            for prediction, sample in zip(answers, part):
                tallies[name].add(prediction, sample.target, sample.kind)
    model.train(was_training)
    return {name: tally.metrics() for name, tally in tallies.items()}
