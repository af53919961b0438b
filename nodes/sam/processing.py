"""SAM's image frame and ours: resize-longest-side + pad in, prompts scaled into it, masks back out.

SAM sees every image resized so that its longest side is S (the model's `image_size`: 1024 for real
SAM, `SamShapesConfig.image_size` for ours) and zero-padded at the right and bottom to S × S
(`SamImageProcessor`; UGround's `apply_image_torch` for mask prompts). So:
- a point or box in image pixels is scaled by (new_w / W, new_h / H) — no offset, the pad is after;
- a mask prompt is an image-frame map resized the same way to 4E and padded to 4E × 4E (E the
  image-embedding grid), zeros in the pad: SAM's `ResizeLongestSide` layout at mask resolution;
- a predicted low-res mask (4E × 4E) is upsampled to S × S, cropped to the resized image and resized
  to (H, W): `SamImageProcessor.post_process_masks`, done on torch tensors, logits kept.
Everything is torch (bilinear, align_corners False, as SAM and UGround), so gradients pass through
the mask-prompt path for training later. The preprocessing settings are read from and written to the
checkpoint's own `preprocessor_config.json`, so a Hugging Face SAM checkpoint and ours load alike.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_TYPE = "SamImageProcessor"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SamImageProcessor's defaults
IMAGENET_STD = (0.229, 0.224, 0.225)
UINT8_SCALE = 1.0 / 255.0
RESAMPLE_BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, SAM's choice
BILINEAR = "bilinear"
#: SAM's point labels: a point on the object, a point off it, and padding the prompt encoder ignores
FOREGROUND, BACKGROUND, PAD_LABEL = 1, 0, -10


def preprocess_shape(height: int, width: int, longest: int) -> tuple[int, int]:
    """(h, w) with the longest side `longest`, rounded as SAM rounds (int(x + 0.5))."""
    scale = longest / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_and_pad(x: "torch.Tensor", side: int, antialias: bool = True) -> "torch.Tensor":
    """(N, C, H, W) float → (N, C, side, side): longest side resized to `side` (bilinear), zeros padded
    at the right and bottom. UGround's `apply_image_torch`, SAM's image and mask-prompt layout."""
    import torch.nn.functional as F

    h, w = preprocess_shape(x.shape[-2], x.shape[-1], side)
    if (h, w) != tuple(x.shape[-2:]):
        x = F.interpolate(x, (h, w), mode=BILINEAR, align_corners=False, antialias=antialias)  # (N, C, h, w)
    return F.pad(x, (0, side - w, 0, side - h))  # (N, C, side, side)


def mask_prompt(maps: "torch.Tensor", side: int) -> "torch.Tensor":
    """Image-frame mask prompts (N, H, W) (logits or [0, 1] maps) → SAM's (N, 1, side, side), side = 4E."""
    return resize_longest_and_pad(maps[:, None].float(), side)


def scale_points(points: np.ndarray, original_hw: tuple[int, int], resized_hw: tuple[int, int]) -> np.ndarray:
    """(..., 2) x, y in image pixels → the same in SAM's input frame, float32."""
    (h, w), (new_h, new_w) = original_hw, resized_hw
    return (np.asarray(points, np.float32) * np.array([new_w / w, new_h / h], np.float32)).astype(np.float32)


def scale_boxes(boxes: np.ndarray, original_hw: tuple[int, int], resized_hw: tuple[int, int]) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 in image pixels → the same in SAM's input frame, float32."""
    boxes = np.asarray(boxes, np.float32)
    return scale_points(boxes.reshape(-1, 2, 2), original_hw, resized_hw).reshape(boxes.shape)


def masks_to_image(low_res: "torch.Tensor", pad_side: int, resized_hw: tuple[int, int],
                   original_hw: tuple[int, int]) -> "torch.Tensor":
    """(N, 4E, 4E) mask logits → (N, H, W) logits in the image frame: upsample to the padded input,
    drop the pad, resize to the image (`SamImageProcessor.post_process_masks` without the threshold)."""
    import torch.nn.functional as F

    x = F.interpolate(low_res[:, None].float(), (pad_side, pad_side), mode=BILINEAR, align_corners=False)
    x = x[..., : resized_hw[0], : resized_hw[1]]  # (N, 1, h, w)
    return F.interpolate(x, original_hw, mode=BILINEAR, align_corners=False)[:, 0]  # (N, H, W)


def _size_side(value: Any, keys: tuple[str, ...]) -> int:
    """An int, or the first of `keys` in a size dict (SamImageProcessor writes both forms)."""
    if isinstance(value, int):
        return value
    for key in keys:
        if key in value:
            return int(value[key])
    raise ValueError(f"{PREPROCESSOR_FILE}: cannot read a size from {value!r}")


@dataclass
class SamPreprocessor:
    """RGB uint8 images → (1, 3, S, S) float32 as `SamImageProcessor` makes them, and the sizes to undo it."""

    longest_edge: int  # S: the model's image_size
    mean: tuple[float, float, float] | None = IMAGENET_MEAN  # None: no normalisation
    std: tuple[float, float, float] | None = IMAGENET_STD
    rescale_factor: float | None = UINT8_SCALE
    resample: int = RESAMPLE_BILINEAR
    extra: dict[str, Any] = field(default_factory=dict)  # other fields of the file, written back unchanged

    @property
    def pad_side(self) -> int:
        return self.longest_edge

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        return preprocess_shape(height, width, self.longest_edge)

    def __call__(self, image: np.ndarray) -> "torch.Tensor":
        """(H, W, 3) uint8 → (1, 3, S, S) float32: resized, rescaled, normalised, then zero-padded."""
        import torch
        import torch.nn.functional as F

        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected one RGB image (H, W, 3), got shape {image.shape}")
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]  # (1, 3, H, W)
        h, w = self.resized_shape(*image.shape[:2])
        if (h, w) != image.shape[:2]:
            x = F.interpolate(x, (h, w), mode=BILINEAR, align_corners=False, antialias=True).clamp_(0, 255)
        if self.rescale_factor is not None:
            x = x * self.rescale_factor
        if self.mean is not None and self.std is not None:
            x = (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        return F.pad(x, (0, self.pad_side - w, 0, self.pad_side - h))  # (1, 3, S, S)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamPreprocessor":
        """From a `preprocessor_config.json` of a Hugging Face SAM checkpoint (or ours)."""
        longest = _size_side(data.get("size", {}), ("longest_edge",))
        pad = data.get("pad_size")
        if data.get("do_pad", True) and pad is not None:
            pad_h, pad_w = _size_side(pad, ("height",)), _size_side(pad, ("width",))
            if pad_h != longest or pad_w != longest:
                raise ValueError(f"{PREPROCESSOR_FILE}: pad_size {pad_h}×{pad_w} differs from the longest edge "
                                 f"{longest}; SAM expects a square input of that side")
        normalise = data.get("do_normalize", True)
        known = {"size", "pad_size", "do_pad", "do_normalize", "image_mean", "image_std", "do_rescale",
                 "rescale_factor", "resample", "do_resize", "image_processor_type"}
        return cls(longest_edge=longest,
                   mean=tuple(data.get("image_mean", IMAGENET_MEAN)) if normalise else None,
                   std=tuple(data.get("image_std", IMAGENET_STD)) if normalise else None,
                   rescale_factor=float(data.get("rescale_factor", UINT8_SCALE)) if data.get("do_rescale", True) else None,
                   resample=int(data.get("resample", RESAMPLE_BILINEAR)),
                   extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def from_dir(cls, directory: str | Path) -> "SamPreprocessor":
        path = Path(directory) / PREPROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: a SAM model directory needs its image preprocessing "
                                    "(longest edge, pad, mean/std) beside the weights")
        return cls.from_dict(json.loads(path.read_text()))

    def to_dict(self) -> dict[str, Any]:
        """`SamImageProcessor` fields, so transformers' own processor reads the same settings."""
        out: dict[str, Any] = {**self.extra, "image_processor_type": PROCESSOR_TYPE, "do_resize": True,
                               "size": {"longest_edge": self.longest_edge}, "resample": self.resample,
                               "do_pad": True, "pad_size": {"height": self.pad_side, "width": self.pad_side},
                               "do_rescale": self.rescale_factor is not None,
                               "do_normalize": self.mean is not None}
        if self.rescale_factor is not None:
            out["rescale_factor"] = self.rescale_factor
        if self.mean is not None and self.std is not None:
            out["image_mean"], out["image_std"] = list(self.mean), list(self.std)
        return out

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PREPROCESSOR_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path
