"""The visual-KV probe: image value tokens from the VLM's KV cache, per LM layer, and zero-shot referring
segmentation by their dot product with the expression's representation (reference/papers.md §7).

One forward pass with `use_cache=True` over `[prefix] <image> expression` (`layout.py`) fills a
transformers `DynamicCache`: per layer, keys and values of shape (B, H_kv, S, d). The probe takes
every position's key and value with the KV heads concatenated (GQA: the H_kv cached heads, not
the H query heads they serve), so a token is one (H_kv · d) vector per layer.

- Image tokens: the values at the image-token positions, a (T, D) grid per layer. Causal attention
  keeps them blind to the expression after the image, so they describe the image (and the prefix).
- The expression's representation: the *value* at the expression's last token, in the same layer.
  Value against value compares two vectors of one space (what attention reads out of a token), and
  the last token of a causal LM is the one that has read the whole expression — and, after the
  image, the image too. (For "the red circle left of the blue square" the last token is the anchor's
  noun: a known weakness of last-token pooling on relations, reported per expression kind.)
- Map: the raw dot products (T,) per layer, min–max normalised per map and resized from the grid to
  the part of the image it covers (UGround's map geometry, `nodes/sam/similarity.py`), zero outside.
- Mask: map ≥ threshold. The zero-shot default is 0.5 of the min–max range; `benchmarks/grounding.py`
  also reports a per-layer threshold chosen on train-split stills.
An empty target cannot be rejected: every map has a maximum, so every mask has pixels.

Key blocking (`blocking.py`) and the text prefix are arguments of `run`, so one loaded probe measures
every variant. Works with the HF VLMs `nodes/vlm/hf.py` loads (LLaVA, Qwen2(.5)-VL).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nodes.kv_probe.blocking import DEFAULT_FRACTION, BlockedKeys, agnostic_keys, decoder_layers, key_blocking
from nodes.kv_probe.layout import Box, ProbeInputs, ProbeLayout
from nodes.sam.similarity import grid_to_image, minmax, token_similarity

if TYPE_CHECKING:
    import torch

    from nodes.vlm.hf import HfVlmAdapter

DEFAULT_THRESHOLD = 0.5  # of each map's min–max range


@dataclass
class KvTokens:
    """Every position's cached key and value per layer, KV heads concatenated, batch item 0."""

    keys: "torch.Tensor"  # (L, S, H_kv · d)
    values: "torch.Tensor"  # (L, S, H_kv · d)


@dataclass
class ProbeResult:
    """What one forward pass gives the probe."""

    inputs: ProbeInputs
    image_keys: "torch.Tensor"  # (L, T, D)
    image_values: "torch.Tensor"  # (L, T, D)
    expression_values: "torch.Tensor | None"  # (L, D) at the expression's last token; None without one


def cache_tokens(cache: Any) -> KvTokens:
    """Keys and values of a transformers 5 `Cache` (its `.layers`, each with `.keys`/`.values` (B, H_kv, S, d))."""
    import torch

    layers = list(cache.layers)
    if not layers or any(layer.keys is None or layer.keys.numel() == 0 for layer in layers):
        raise ValueError("the KV cache is empty: run the model with use_cache=True")

    def flat(tensors: list["torch.Tensor"]) -> "torch.Tensor":
        stacked = torch.stack([t[0] for t in tensors])  # (L, H_kv, S, d)
        return stacked.permute(0, 2, 1, 3).flatten(2).float()  # (L, S, H_kv · d)

    return KvTokens(keys=flat([layer.keys for layer in layers]), values=flat([layer.values for layer in layers]))


def paste(maps: "torch.Tensor", box: Box, image_hw: tuple[int, int]) -> "torch.Tensor":
    """(N, h, w) maps of `box` → (N, H, W) in the image frame, zero outside the box."""
    import torch

    out = torch.zeros((maps.shape[0], *image_hw), dtype=maps.dtype, device=maps.device)
    out[:, box.top: box.top + box.height, box.left: box.left + box.width] = maps
    return out


def probe_maps(result: ProbeResult) -> "torch.Tensor":
    """(L, H, W) per-layer maps in [0, 1] in the image frame."""
    scores = minmax(probe_scores(result))  # (L, T)
    inputs = result.inputs
    grid = grid_to_image(scores, inputs.grid_hw, (inputs.box.height, inputs.box.width))  # (L, h, w)
    return paste(grid, inputs.box, inputs.image_hw)


def probe_scores(result: ProbeResult) -> "torch.Tensor":
    """(L, T) raw dot products of the expression's value with each image value, per layer."""
    if result.expression_values is None:
        raise ValueError("this result has no expression: run the probe with one")
    return token_similarity(result.expression_values, result.image_values)  # (L, T)


def threshold_maps(maps: "torch.Tensor", threshold: float = DEFAULT_THRESHOLD) -> "torch.Tensor":
    """(..., H, W) maps → bool masks."""
    return maps >= threshold


class KvProbe:
    """A loaded HF VLM read through its KV cache."""

    def __init__(self, vlm: "HfVlmAdapter"):
        self.vlm = vlm
        self.model = vlm.model
        self.layout = ProbeLayout(vlm)

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.model))

    def forward_cache(self, inputs: ProbeInputs, blocked: BlockedKeys | None = None,
                      **options: Any) -> tuple[KvTokens, Any]:
        """One forward pass with the cache on (key blocking applied if given): the cached tokens and the
        model output (`options` go to the model, e.g. output_attentions=True)."""
        import torch

        batch = self._on_device(inputs.batch)
        positions = blocked.positions(inputs.image_positions) if blocked is not None else {}
        with torch.inference_mode(), key_blocking(self.model, positions):
            output = self.model(**batch, use_cache=True, **options)
        return cache_tokens(output.cache), output

    def run(self, image: np.ndarray, expression: str, *, prefix: str | None = None,
            blocked: BlockedKeys | None = None) -> ProbeResult:
        """Image keys and values and the expression's value per layer for `image` (H×W×3 uint8)."""
        inputs = self.layout.build(image, expression, prefix)
        tokens, _ = self.forward_cache(inputs, blocked)
        at = inputs.image_positions.to(tokens.values.device)  # (T,)
        expression_values = None
        if expression:
            expression_values = tokens.values[:, inputs.expression_span[1] - 1]  # (L, D)
        return ProbeResult(inputs=inputs, image_keys=tokens.keys[:, at], image_values=tokens.values[:, at],
                           expression_values=expression_values)

    def image_keys(self, images: Sequence[np.ndarray]) -> "torch.Tensor":
        """(N, L, T, D) keys of the image tokens, image-only prompts (the layout without text)."""
        import torch

        keys = [self.run(image, "").image_keys for image in images]
        shapes = {tuple(k.shape) for k in keys}
        if len(shapes) != 1:
            raise ValueError(f"the images give different image-token grids {sorted(shapes)}: calibrate on one size")
        return torch.stack(keys)

    def calibrate_blocking(self, images: Sequence[np.ndarray], *, fraction: float = DEFAULT_FRACTION,
                           from_layer: int | None = None) -> BlockedKeys:
        """The input-agnostic image keys over `images` (use training images, never the evaluation ones)."""
        return agnostic_keys(self.image_keys(images), fraction=fraction, from_layer=from_layer)

    def _on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        device, dtype = self.vlm.device, self.vlm.dtype
        return {key: value.to(device, dtype=dtype if value.is_floating_point() else None)
                if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
