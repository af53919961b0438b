"""UGround's "mask as prompt": where the [SEG] token looks in the image, as a mask prompt for SAM.

The VLM's image tokens sit on an (h, w) grid (row-major, as CLIP orders its patches). For each [SEG]
token (reference/papers.md §2, `UGround.compute_similarity` / `get_similarity_map`):
1. similarity: raw dot product of the [SEG] hidden state with every image-token hidden state of the
   chosen layer — no normalisation, no temperature;
2. per-map min–max to [0, 1];
3. to the image: bilinear resize of the (h, w) grid to the image's (H, W). When the VLM saw the image
   resized longest-side-to-S and padded at the right and bottom (UGround's padded CLIP input), the grid
   covers that S × S canvas: resize to S × S, crop the image's part, then resize to (H, W). This
   image-frame map is also what UGround supervises (Gaussian-smoothed BCE + Dice);
4. to SAM: resize the longest side to 4E and zero-pad to 4E × 4E (E the SAM embedding grid): the
   (N, 1, 4E, 4E) `input_masks` of `SamModel`.
A [REJ] (or no [SEG] at all) has no map: its mask is empty and SAM is not run for it (`node`).
Pure torch and differentiable, so the policy over layers and the map loss can train through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodes.sam.processing import BILINEAR, mask_prompt, preprocess_shape

if TYPE_CHECKING:
    import torch

MINMAX_EPS = 1e-12  # a flat map (every token alike) normalises to zeros, not to 0 / 0


@dataclass
class SimilarityMaps:
    """One map per [SEG]: in the image frame (UGround's supervision target) and as SAM's mask prompt."""

    image: "torch.Tensor"  # (N, H, W) float in [0, 1]
    prompt: "torch.Tensor"  # (N, 1, 4E, 4E) float, zeros in the pad
    tokens: "torch.Tensor"  # (N, T) the raw dot products, before min–max (for a loss over tokens)


def token_similarity(seg: "torch.Tensor", image_tokens: "torch.Tensor") -> "torch.Tensor":
    """Dot products of each [SEG] state with each image token: (N, D) with (T, D) shared by all, or
    (N, T, D) one set per [SEG] (UGround's `einsum("sd,sid->si")`) → (N, T)."""
    import torch

    if seg.ndim != 2:
        raise ValueError(f"[SEG] states must be (N, D), got shape {tuple(seg.shape)}")
    if image_tokens.ndim == 2:
        return seg @ image_tokens.T  # (N, T)
    if image_tokens.ndim == 3 and image_tokens.shape[0] == seg.shape[0]:
        return torch.einsum("sd,sid->si", seg, image_tokens)  # (N, T)
    raise ValueError(f"image tokens must be (T, D) or (N, T, D) with N = {seg.shape[0]}, got {tuple(image_tokens.shape)}")


def minmax(scores: "torch.Tensor") -> "torch.Tensor":
    """(N, T) → (N, T) in [0, 1], each row on its own; a constant row becomes zeros."""
    low = scores.min(dim=1, keepdim=True).values  # (N, 1)
    high = scores.max(dim=1, keepdim=True).values  # (N, 1)
    return (scores - low) / (high - low).clamp_min(MINMAX_EPS)


def grid_to_image(maps: "torch.Tensor", grid_hw: tuple[int, int], image_hw: tuple[int, int],
                  canvas: int | None = None) -> "torch.Tensor":
    """(N, T) token maps, T = h·w row-major → (N, H, W) in the image frame.

    canvas None: the grid covers the whole image (a square image, or one stretched to the VLM's size).
    canvas S: the VLM's input was the image resized longest-side-to-S and padded right/bottom to S × S,
    so the grid covers that canvas and only its top-left (h', w') part is the image."""
    import torch.nn.functional as F

    h, w = grid_hw
    if maps.shape[-1] != h * w:
        raise ValueError(f"{maps.shape[-1]} tokens do not fill a {h}×{w} grid")
    x = maps.reshape(-1, 1, h, w).float()  # (N, 1, h, w)
    if canvas is not None:
        x = F.interpolate(x, (canvas, canvas), mode=BILINEAR, align_corners=False)  # (N, 1, S, S)
        content_h, content_w = preprocess_shape(image_hw[0], image_hw[1], canvas)
        x = x[..., :content_h, :content_w]  # (N, 1, h', w')
    return F.interpolate(x, image_hw, mode=BILINEAR, align_corners=False)[:, 0]  # (N, H, W)


def similarity_maps(seg: "torch.Tensor", image_tokens: "torch.Tensor", grid_hw: tuple[int, int],
                    image_hw: tuple[int, int], prompt_size: int, canvas: int | None = None) -> SimilarityMaps:
    """Steps 1–4 for N [SEG] states: seg (N, D), image_tokens (T, D) or (N, T, D) from the same layer,
    `prompt_size` = 4E of the SAM that takes the prompts."""
    tokens = token_similarity(seg, image_tokens)  # (N, T)
    image = grid_to_image(minmax(tokens), grid_hw, image_hw, canvas)  # (N, H, W)
    return SimilarityMaps(image=image, prompt=mask_prompt(image, prompt_size), tokens=tokens)  # prompt (N, 1, 4E, 4E)
