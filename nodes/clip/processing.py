"""What goes into a CLIP: words → token ids (our word-level tokenizer), pixels → normalised tensors.

No tokenizer ships in any package here, so the shapes-world CLIP gets a word-level one built with
`tokenizers`: the colours and shapes of the shapes world and the few function words its captions use.
Every other word of a question becomes [UNK] (training shows the text tower such words, so it learns
to look past them). It is saved as a `PreTrainedTokenizerFast` beside the model, so `AutoTokenizer`
loads it offline like any Hugging Face tokenizer.

Image preprocessing follows `CLIPImageProcessor`'s recipe (resize the shorter side, centre crop,
rescale, normalise) in numpy/PIL — no torchvision — reading the same `preprocessor_config.json`, so
it serves any local Hugging Face CLIP checkpoint; ours stores its measured mean/std there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sim.shapes_world.scene import COLOURS, SHAPES

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from nodes.clip.config import ClipShapesConfig

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0-3: EOS is 3, never 2 (see ClipShapesConfig.to_hf)
FUNCTION_WORDS = ("a", "an", "the", "and", "empty", "frame")
PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_TYPE = "CLIPImageProcessor"
RESAMPLE_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, CLIP's choice
UINT8_SCALE = 1.0 / 255.0


def vocabulary() -> list[str]:
    """Special tokens first (their ids are fixed), then function words, colours and shapes."""
    return [*SPECIAL_TOKENS, *FUNCTION_WORDS, *COLOURS, *SHAPES]


def build_tokenizer(max_len: int) -> "PreTrainedTokenizerFast":
    """Lower-cased, split on whitespace and punctuation, one id per known word, [BOS] … [EOS] around."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_len, pad_token=PAD,
                                   unk_token=UNK, bos_token=BOS, eos_token=EOS)


def tokenize(tokenizer: Any, texts: list[str], max_len: int) -> dict[str, np.ndarray]:
    """input_ids and attention_mask, (N, L) int64, padded to the longest text and cut at `max_len`
    (the post-processor keeps EOS on a cut text: CLIP pools there)."""
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64)}


def _size_dict(value: Any) -> dict[str, int]:
    """CLIPImageProcessor accepts an int or a dict for its sizes."""
    return {"height": value, "width": value} if isinstance(value, int) else dict(value)


@dataclass
class ImagePreprocessor:
    """RGB uint8 frames → (B, 3, H, W) float32, as `CLIPImageProcessor` does it."""

    size: dict[str, int] | None  # {"shortest_edge": s} or {"height": h, "width": w}; None: no resize
    crop_size: tuple[int, int] | None  # (height, width); None: no crop
    mean: np.ndarray | None  # (3,) float64; None: no normalisation
    std: np.ndarray | None  # (3,) float64
    resample: int = RESAMPLE_BICUBIC
    rescale_factor: float | None = UINT8_SCALE

    @classmethod
    def for_config(cls, config: "ClipShapesConfig") -> "ImagePreprocessor":
        if config.image_mean is None or config.image_std is None:
            raise ValueError("the CLIP config has no image mean/std yet (they are measured when training starts)")
        side = config.image_size
        return cls({"shortest_edge": side}, (side, side), np.asarray(config.image_mean, np.float64),
                   np.asarray(config.image_std, np.float64))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImagePreprocessor":
        """From a `preprocessor_config.json` of a Hugging Face CLIP checkpoint (or ours)."""
        size = data.get("size") if data.get("do_resize", True) else None
        if isinstance(size, int):
            size = {"shortest_edge": size}
        crop = _size_dict(data["crop_size"]) if data.get("do_center_crop", False) and data.get("crop_size") else None
        normalise = data.get("do_normalize", True)
        return cls(size=dict(size) if size else None,
                   crop_size=(crop["height"], crop["width"]) if crop else None,
                   mean=np.asarray(data["image_mean"], np.float64) if normalise else None,
                   std=np.asarray(data["image_std"], np.float64) if normalise else None,
                   resample=int(data.get("resample", RESAMPLE_BICUBIC)),
                   rescale_factor=float(data.get("rescale_factor", UINT8_SCALE)) if data.get("do_rescale", True) else None)

    @classmethod
    def from_dir(cls, directory: str | Path) -> "ImagePreprocessor":
        path = Path(directory) / PREPROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: a CLIP model directory needs its image preprocessing "
                                    "(mean/std, size) beside the weights")
        return cls.from_dict(json.loads(path.read_text()))

    def to_dict(self) -> dict[str, Any]:
        """The `CLIPImageProcessor` fields, so transformers' own processors read the same settings."""
        out: dict[str, Any] = {"image_processor_type": PROCESSOR_TYPE, "do_convert_rgb": True,
                               "do_resize": self.size is not None, "resample": self.resample,
                               "do_center_crop": self.crop_size is not None,
                               "do_rescale": self.rescale_factor is not None,
                               "do_normalize": self.mean is not None}
        if self.size is not None:
            out["size"] = dict(self.size)
        if self.crop_size is not None:
            out["crop_size"] = {"height": self.crop_size[0], "width": self.crop_size[1]}
        if self.rescale_factor is not None:
            out["rescale_factor"] = self.rescale_factor
        if self.mean is not None and self.std is not None:
            out["image_mean"], out["image_std"] = self.mean.tolist(), self.std.tolist()
        return out

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PREPROCESSOR_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step, by CLIPImageProcessor's rounding."""
        if self.size is None:
            return height, width
        if "shortest_edge" in self.size:
            short, long = sorted((height, width))
            side = self.size["shortest_edge"]
            new_long = int(side * long / short)
            return (side, new_long) if height <= width else (new_long, side)
        return self.size["height"], self.size["width"]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 → (B, 3, h, w) float32."""
        from PIL import Image

        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a batch of RGB images (B, H, W, 3), got shape {images.shape}")
        height, width = self.resized_shape(*images.shape[1:3])
        if (height, width) != images.shape[1:3]:
            images = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
                (width, height), resample=self.resample)) for image in images])  # (B, h, w, 3)
        if self.crop_size is not None:
            images = _centre_crop(images, *self.crop_size)
        pixels = images.astype(np.float32)  # (B, h, w, 3)
        if self.rescale_factor is not None:
            pixels *= np.float32(self.rescale_factor)
        if self.mean is not None and self.std is not None:
            pixels = (pixels - self.mean.astype(np.float32)) / self.std.astype(np.float32)
        return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))  # (B, 3, h, w)


def _centre_crop(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """(B, H, W, 3) → (B, height, width, 3), zero-padded where the image is smaller (as HF does)."""
    b, h, w, c = images.shape
    if h < height or w < width:
        padded = np.zeros((b, max(h, height), max(w, width), c), images.dtype)
        top, left = (padded.shape[1] - h + 1) // 2, (padded.shape[2] - w + 1) // 2
        padded[:, top: top + h, left: left + w] = images
        images, h, w = padded, padded.shape[1], padded.shape[2]
    top, left = (h - height) // 2, (w - width) // 2
    return images[:, top: top + height, left: left + width]
