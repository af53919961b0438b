"""Hyper-parameters of the shapes-world CLIP, and the transformers `CLIPConfig` built from them.

Defaults are the ones measured on this project's CPUs (reference/platform.md, "Training small
models"): 96 px images in 16 px patches (36 tokens: patch 8 costs 5× the time per step), 4 vision +
4 text layers of width 128 with 4 heads and a 4× MLP, a 128-d joint space — about 1.7M parameters,
1.9 steps/s at batch 128 on one thread, held-out retrieval AUC 0.985 after 20 minutes. The image
mean/std are measured on training frames when a run starts and saved with the model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import CLIPConfig

MLP_RATIO = 4
#: CLIP's initial temperature, ln(1 / 0.07)
LOGIT_SCALE_INIT = 2.6592


@dataclass
class ClipShapesConfig:
    """Everything needed to rebuild the network and its preprocessing; stored beside the weights."""

    image_size: int = 96
    patch_size: int = 16
    vision_layers: int = 4
    text_layers: int = 4
    width: int = 128
    heads: int = 4
    projection_dim: int = 128
    max_text_len: int = 32  # tokens, BOS and EOS included: questions longer than this are cut
    image_mean: tuple[float, float, float] | None = None  # None: measured on training frames at the start
    image_std: tuple[float, float, float] | None = None

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        """Catch layouts CLIPModel would reject later with a less helpful message."""
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.max_text_len < 3:
            raise ValueError(f"max_text_len {self.max_text_len} leaves no room for a word between BOS and EOS")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                raise ValueError(f"{name} needs one value per RGB channel, got {value}")
        if self.image_std is not None and min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClipShapesConfig":
        """Inverse of `to_dict`; unknown keys are an error, so a stale model directory fails loudly."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ClipShapesConfig fields: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_hf(self, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> "CLIPConfig":
        """The transformers config. EOS must not be id 2: CLIP then pools at argmax(input_ids), a
        legacy path that only works when EOS is the largest id (reference/platform.md)."""
        from transformers import CLIPConfig

        if eos_id == 2:
            raise ValueError("CLIP's EOS id must not be 2 (legacy pooling at the largest token id)")
        shared = dict(hidden_size=self.width, intermediate_size=MLP_RATIO * self.width, num_attention_heads=self.heads)
        return CLIPConfig(
            text_config=dict(vocab_size=vocab_size, num_hidden_layers=self.text_layers,
                             max_position_embeddings=self.max_text_len, pad_token_id=pad_id, bos_token_id=bos_id,
                             eos_token_id=eos_id, **shared),
            vision_config=dict(image_size=self.image_size, patch_size=self.patch_size,
                               num_hidden_layers=self.vision_layers, **shared),
            projection_dim=self.projection_dim, logit_scale_init_value=LOGIT_SCALE_INIT)
