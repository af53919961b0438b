"""Sizes of a small SAM for shapes-world stills, the transformers `SamConfig` built from them, and the
model directory it lives in.

What `SamModel` needs (measured with transformers 5.24): the image is `image_size` square and a
multiple of `patch_size`; the image-embedding grid is E = image_size // patch_size on a side (real
SAM: 1024 / 16 = 64); the mask prompt is (B, 1, 4E, 4E) (256 for real SAM) and the predicted
low-resolution masks are 4E on a side too. The vision neck's `output_channels`, the prompt encoder's
and mask decoder's `hidden_size` and twice the positional `num_pos_feats` must all be one width
(`embed_dim`); the decoder upsamples to embed_dim // 8 channels, so embed_dim >= 8; embed_dim //
attention_downsample_rate must divide by the decoder's heads; `mask_input_channels` by 4. The smallest
that runs is a 16 px image in one 16 px patch (E = 1, 4×4 mask prompts), embed_dim 8, one vision
layer of width 4: about 6k parameters. The defaults here — 128 px in 8 px patches, E = 16, 64×64
mask prompts, 4 vision layers × 64, a 2-layer decoder of width 64: about 0.47M parameters — fit the
referring set's 128 px stills (`sim.shapes_world.referring`).

A directory holds `config.json` + `model.safetensors` (transformers), `preprocessor_config.json`
(`SamImageProcessor` fields: longest edge, pad size, mean/std) and `groundloop_sam.json` (our config
and a training record); any local Hugging Face SAM checkpoint with its preprocessor config serves too.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.clip.model import MissingModelError
from nodes.model_dir import read_model_meta, write_model_dir
from nodes.sam.processing import IMAGENET_MEAN, IMAGENET_STD, PREPROCESSOR_FILE, SamPreprocessor

if TYPE_CHECKING:
    from transformers import SamConfig, SamModel

MODEL_FORMAT = "groundloop.sam/1"
META_FILE = "groundloop_sam.json"
HF_CONFIG_FILE = "config.json"
DEFAULT_MODEL_DIR = "models/sam_shapes"
MASK_PROMPT_SCALE = 4  # SAM's mask prompt and low-res masks are 4× the embedding grid on a side
DECODER_UPSCALE_DIVISOR = 8  # the decoder's last upsampling has embed_dim // 8 channels
MASK_CHANNEL_DIVISOR = 4  # the mask embedding's first conv has mask_input_channels // 4 channels
ATTENTION_DOWNSAMPLE_RATE = 2  # SAM's cross-attention width: embed_dim // 2


@dataclass
class SamShapesConfig:
    """Everything needed to rebuild the network and its preprocessing; stored beside the weights."""

    image_size: int = 128
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 4
    vision_heads: int = 4
    window_size: int = 0  # 0: every layer attends globally (E² tokens is few at this size)
    global_layers: tuple[int, ...] = ()  # with window_size > 0: the layers that still attend globally
    embed_dim: int = 64  # neck output = prompt encoder = mask decoder width
    decoder_layers: int = 2
    decoder_heads: int = 4
    decoder_mlp: int = 256
    mask_input_channels: int = 16
    iou_head_hidden: int = 64
    multimask_outputs: int = 3
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    @property
    def embedding_grid(self) -> int:
        """E: the image embedding is (B, embed_dim, E, E)."""
        return self.image_size // self.patch_size

    @property
    def mask_prompt_size(self) -> int:
        """4E: the side of SAM's mask prompt and of its low-resolution masks."""
        return MASK_PROMPT_SCALE * self.embedding_grid

    def validate(self) -> None:
        """Catch layouts SamModel would reject later with a shape error deep in a forward pass."""
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.vision_heads:
            problems.append(f"vision_width {self.vision_width} is not a multiple of vision_heads {self.vision_heads}")
        if self.embed_dim < DECODER_UPSCALE_DIVISOR or self.embed_dim % 2:
            problems.append(f"embed_dim {self.embed_dim} must be even and at least {DECODER_UPSCALE_DIVISOR}")
        if (self.embed_dim // ATTENTION_DOWNSAMPLE_RATE) % self.decoder_heads:
            problems.append(f"embed_dim // {ATTENTION_DOWNSAMPLE_RATE} = {self.embed_dim // ATTENTION_DOWNSAMPLE_RATE} "
                            f"is not a multiple of decoder_heads {self.decoder_heads}")
        if self.mask_input_channels < MASK_CHANNEL_DIVISOR or self.mask_input_channels % MASK_CHANNEL_DIVISOR:
            problems.append(f"mask_input_channels {self.mask_input_channels} must be a positive multiple of {MASK_CHANNEL_DIVISOR}")
        if any(not 0 <= i < self.vision_layers for i in self.global_layers):
            problems.append(f"global_layers {self.global_layers} name layers outside 0..{self.vision_layers - 1}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            problems.append(f"image_mean/std need three values, std positive: {self.image_mean}, {self.image_std}")
        if problems:
            raise ValueError("SamShapesConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamShapesConfig":
        """Inverse of `to_dict`; unknown keys are an error, so a stale model directory fails loudly."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown SamShapesConfig fields: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_hf(self) -> "SamConfig":
        """The transformers config: one width through neck, prompt encoder and decoder."""
        from transformers import SamConfig

        self.validate()
        return SamConfig(
            vision_config=dict(hidden_size=self.vision_width, output_channels=self.embed_dim,
                               num_hidden_layers=self.vision_layers, num_attention_heads=self.vision_heads,
                               image_size=self.image_size, patch_size=self.patch_size, window_size=self.window_size,
                               global_attn_indexes=list(self.global_layers),
                               num_pos_feats=self.embed_dim // 2),
            prompt_encoder_config=dict(hidden_size=self.embed_dim, image_size=self.image_size,
                                       patch_size=self.patch_size, mask_input_channels=self.mask_input_channels),
            mask_decoder_config=dict(hidden_size=self.embed_dim, mlp_dim=self.decoder_mlp,
                                     num_hidden_layers=self.decoder_layers, num_attention_heads=self.decoder_heads,
                                     attention_downsample_rate=ATTENTION_DOWNSAMPLE_RATE,
                                     num_multimask_outputs=self.multimask_outputs,
                                     iou_head_hidden_dim=self.iou_head_hidden))

    def preprocessor(self) -> SamPreprocessor:
        return SamPreprocessor(longest_edge=self.image_size, mean=self.image_mean, std=self.image_std)


def build_model(config: SamShapesConfig) -> "SamModel":
    """A freshly initialised SamModel sized by `config`."""
    from transformers import SamModel

    return SamModel(config.to_hf())


def save_model_dir(model: "SamModel", config: SamShapesConfig, directory: str | Path, meta: dict[str, Any]) -> Path:
    """Write the whole directory (weights, preprocessing, our record) or nothing."""
    def write(partial: Path) -> None:
        model.save_pretrained(partial)
        config.preprocessor().save(partial)

    return write_model_dir(directory, write, META_FILE, {"format": MODEL_FORMAT, "config": config.to_dict(), **meta})


def read_meta(directory: str | Path) -> dict[str, Any]:
    """Our record of a model directory ({} for a checkpoint that is not one of ours)."""
    return read_model_meta(directory, META_FILE)


def require_model_dir(path: str | Path) -> Path:
    """`path` as a SAM directory (config.json and preprocessor_config.json), else a MissingModelError
    that names it and says what makes one."""
    path = Path(path)
    missing = [name for name in (HF_CONFIG_FILE, PREPROCESSOR_FILE) if not (path / name).is_file()]
    if not missing:
        return path
    what = "does not exist" if not path.exists() else f"has no {' and no '.join(missing)}"
    raise MissingModelError(
        f"no SAM model at {path} (the path {what}): point `model` at a local Hugging Face SAM checkpoint "
        "directory (SamModel.save_pretrained with its SamImageProcessor's preprocessor_config.json), or write "
        "one with nodes.sam.config.save_model_dir")
