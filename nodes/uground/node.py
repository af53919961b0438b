"""UGroundNode: a frame and a referring expression in, the mask of what it refers to out.

The node is `nodes.grounding.TargetGrounding` with a UGround grounder: the expression is a param (fixed for
the run) or the `instruction` input's, per episode; out goes a `Mask` per frame: (1, H, W) with
P([SEG]) as its score when the model answers [SEG] and SAM's mask has at least `min_pixels` pixels,
otherwise (0, H, W) with the reason ("absent: [REJ] ..." when the model says nothing there fits). The
frame may have any size: the VLM sees it padded square, SAM resized longest-side + padded, and the mask
comes back in the frame's pixels.

`UGroundGrounder` is the `ImageGrounder` behind it, so the grounding node can offer it by name too
(`GROUNDERS["uground"]`). The model loads in `setup()`, from a local directory (`groundloop train uground`).
A robot instruction is asked as the object it names ("pick the green cube" → "the green cube"), and
`crop` + `image_size` give the model the view it was trained on (configs/grounded_pick.yaml: the
workspace square its picking stills were cut from, at 128 px).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nodes.grounding import DEFAULT_MIN_PIXELS, Grounding, ImageGrounder, TargetGrounding
from nodes.model_dir import DEVICE_AUTO
from nodes.uground.config import DEFAULT_MODEL_DIR, MODE_LAST, MODES

#: a robot instruction's leading verb ("pick up the green cube"): UGround is asked to segment what follows
_COMMAND_VERB = re.compile(r"^\s*(?:please\s+)?(?:pick\s+up|pick|grab|grasp|lift|take|segment)\s+", re.IGNORECASE)


def referring_expression(instruction: str) -> str:
    """The object an instruction names, as UGround's prompt takes it: "pick the green cube" → "the green cube"
    (an instruction without a known leading verb is taken whole)."""
    return _COMMAND_VERB.sub("", instruction.strip().rstrip(".")).strip()


def crop_box(crop: Sequence[int] | None, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inside an image of `shape` (the whole image for None); a box outside it is an error."""
    h, w = shape[:2]
    if crop is None:
        return 0, 0, w, h
    x0, y0, x1, y1 = (int(v) for v in crop)
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"UGround crop {list(crop)} is not a box inside the {w}x{h} frame")
    return x0, y0, x1, y1


class UGroundGrounder(ImageGrounder):
    """A trained UGround: the expression's target in an RGB image, or why there is none."""

    def __init__(self, model: str = DEFAULT_MODEL_DIR, device: str = DEVICE_AUTO, mode: int = MODE_LAST,
                 mask_prompt: bool = True, num_threads: int | None = None, crop: Sequence[int] | None = None,
                 image_size: int | None = None, **options: Any) -> None:
        import torch

        from nodes.uground.evaluate import Variant
        from nodes.uground.model import load_uground
        from nodes.model_dir import resolve_device

        super().__init__(**options)
        if mode not in MODES:
            raise ValueError(f"mode {mode} is not one of {MODES}")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = resolve_device(device)
        self.model, self.encoder = load_uground(model, self.device)
        self.variant = Variant(f"mode{mode}", mode=mode, mask_prompt=mask_prompt)
        self.crop, self.image_size = crop, image_size

    def ground_image(self, rgb: np.ndarray, instruction: str) -> Grounding:
        """UGround on the crop (resized to `image_size` by area averaging, as `groundloop sim grounded-stills`
        made its training stills), the mask pasted back into the whole frame; `min_pixels` counts the frame's
        pixels."""
        from PIL import Image

        from nodes.uground.evaluate import predict
        from sim.grounded_stills import crop_resize

        rgb = np.asarray(rgb)
        box = x0, y0, x1, y1 = crop_box(self.crop, rgb.shape)
        # the stills' own crop and resize, so the model sees what it trained on
        view = rgb[y0:y1, x0:x1] if self.image_size is None else crop_resize(rgb, box, self.image_size, nearest=False)
        expression = referring_expression(instruction)
        batch = self.encoder.encode([view], [expression])
        prediction = predict(self.model, self.encoder, batch, [self.variant], self.device)[self.variant.name][0]
        if not prediction.present:
            return Grounding.absent(rgb.shape, f"absent: [REJ] for {expression!r} (P([SEG]) {prediction.p_seg:.2f})")
        mask = np.asarray(Image.fromarray(prediction.mask).resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST))
        frame_mask = np.zeros(rgb.shape[:2], bool)
        frame_mask[y0:y1, x0:x1] = mask
        pixels = int(frame_mask.sum())
        if pixels < self.min_pixels:
            return Grounding.absent(rgb.shape, f"absent: [SEG] for {expression!r} but SAM's mask has {pixels} pixels")
        return Grounding(frame_mask, prediction.p_seg)


class UGroundParams(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str = Field(DEFAULT_MODEL_DIR, description="a UGround directory (groundloop train uground)")
    device: str = Field(DEVICE_AUTO, description="auto: CUDA when present, else CPU")
    mode: int = Field(MODE_LAST, description="1: the last layer's [SEG] (the paper's evaluation); 3: the layer "
                                             "policy's most probable layer; 2: that layer for the map only")
    mask_prompt: bool = Field(True, description="prompt SAM with the similarity map (False: the [SEG] token only)")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch (None: the runtime's default)")
    min_pixels: int = Field(DEFAULT_MIN_PIXELS, ge=0, description="a smaller mask counts as no target")
    instruction: str | None = Field(None, description="a fixed referring expression; None: the `instruction` "
                                                      "input's, per episode")
    crop: list[int] | None = Field(None, min_length=4, max_length=4,
                                   description="[x0, y0, x1, y1]: ground in this box of the frame (None: all of it)")
    image_size: int | None = Field(None, ge=16, description="resize the (cropped) view to this square side first")


class UGroundNode(TargetGrounding):
    """Frame (+ expression) in → the referred target's mask out, one per frame; [REJ] gives an empty one."""

    Params = UGroundParams

    def build_grounder(self) -> UGroundGrounder:
        p = self.params
        return UGroundGrounder(p.model, p.device, p.mode, p.mask_prompt, p.num_threads, p.crop, p.image_size,
                               min_pixels=p.min_pixels)
