"""Hyper-parameters of the shapes-world VLM, and the transformers `LlavaConfig` built from them.

The LLaVA layout: a CLIP vision tower (ours, trained on shapes-world frames, taken as it is), a
two-layer MLP projector, and a small Llama language model trained from scratch. Patch features
come from the second-to-last CLIP layer without its CLS token (LLaVA's 'default' strategy): the
last layer's patch outputs feed nothing in CLIP's contrastive loss, the one before feeds the pooled
embedding CLIP was trained on. With the 96 px / patch-16 CLIP that is 36 image tokens per frame.

Defaults follow what trained on this project's CPUs (reference/platform.md, "Training small models"):
a 4 × 128 Llama (1.07M) beside the CLIP's 0.9M-parameter vision tower: 2.0M parameters in all.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig, LlavaConfig

MLP_RATIO = 4
PROJECTOR_ACT = "gelu"
#: LLaVA's 'default' feature strategy drops CLIP's CLS token from the patch features
FEATURE_STRATEGY = "default"
CLS_TOKENS = 1


@dataclass
class VlmShapesConfig:
    """The language model and how it reads the vision tower; the tower's own sizes come from the CLIP."""

    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    max_positions: int = 2048  # tokens: A.I.R.'s 32-frame budget (36 image tokens each) and a prompt fit
    vision_feature_layer: int = -2
    tie_embeddings: bool = True  # the vocabulary is small: one matrix reads and writes words

    def validate(self) -> None:
        """Catch layouts the Llama config would reject later with a less helpful message."""
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.vision_feature_layer >= 0:
            raise ValueError(f"vision_feature_layer counts back from the last layer (-1, -2, …), "
                             f"got {self.vision_feature_layer}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VlmShapesConfig":
        """Inverse of `to_dict`; unknown keys are an error, so a stale checkpoint fails loudly."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown VlmShapesConfig fields: {unknown}")
        return cls(**data)

    def to_hf(self, vision: "CLIPVisionConfig", vocab_size: int, *, pad_id: int, bos_id: int, eos_id: int,
              image_token_id: int) -> "LlavaConfig":
        """The transformers config: `vision` is the CLIP's vision config, unchanged, so its weights load."""
        from transformers import LlamaConfig, LlavaConfig

        self.validate()
        if -self.vision_feature_layer > vision.num_hidden_layers:
            raise ValueError(f"vision_feature_layer {self.vision_feature_layer} is deeper than the CLIP's "
                             f"{vision.num_hidden_layers} layers")
        text = LlamaConfig(vocab_size=vocab_size, hidden_size=self.hidden_size,
                           intermediate_size=MLP_RATIO * self.hidden_size, num_hidden_layers=self.layers,
                           num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                           max_position_embeddings=self.max_positions, pad_token_id=pad_id, bos_token_id=bos_id,
                           eos_token_id=eos_id, tie_word_embeddings=self.tie_embeddings)
        return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                           image_seq_length=image_tokens(vision), projector_hidden_act=PROJECTOR_ACT,
                           vision_feature_select_strategy=FEATURE_STRATEGY,
                           vision_feature_layer=self.vision_feature_layer, tie_word_embeddings=self.tie_embeddings)


def image_tokens(vision: "CLIPVisionConfig") -> int:
    """Image tokens per frame: one per patch (the 'default' strategy drops the CLS token)."""
    return (vision.image_size // vision.patch_size) ** 2
