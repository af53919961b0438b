"""The probe's prompt layout: an optional text prefix, the image, then the expression — and where each
lands in the token sequence, and which part of the image the image-token grid covers.

One user turn holds `[prefix] <image> expression` through the checkpoint's own chat template (the
LLaVA processor's, or Qwen's tokenizer template with `<|image_pad|>` expanded by hand, as
`nodes/vlm/hf.py` does without torchvision). Without a prefix this is the layout the VLM was trained
on (`chat_messages`: image first); with one, the prefix text comes before the image, so the image
tokens can attend to it (reference/papers.md §7: a text prefix before the image improves the
visual representations). Causal attention keeps the image tokens blind to the expression after them.

Token spans come from the tokenizer's character offsets on the expanded text, so they hold for
word-level, character-level and BPE tokenizers alike. The expression is the last occurrence of its
text (the prefix may repeat it).

Grid geometry: LLaVA's CLIP preprocessing resizes the shortest side and centre-crops a square, so the
grid covers the image's central min(H, W) square; without a centre crop (and for Qwen, which resizes
the whole image to multiples of its patch) the grid covers the whole image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nodes.vlm.hf import QWEN_CHAT_FORMAT, QWEN_IMAGE_SLOT, QwenInputs, expand_image_pads

if TYPE_CHECKING:
    import torch

    from nodes.vlm.hf import HfVlmAdapter

USER = "user"
TEXT, IMAGE = "text", "image"
PREFIX_SEPARATOR = "\n"  # between the prefix and the image, as LLaVA's template puts one after the image
NO_SPAN = (0, 0)


@dataclass(frozen=True)
class Box:
    """The part of the image, in pixels, that the image-token grid covers."""

    top: int
    left: int
    height: int
    width: int


@dataclass
class ProbeInputs:
    """Model inputs for one image and expression, and where things are in them."""

    batch: dict[str, Any]  # the model's keyword inputs, batch of one
    image_positions: "torch.Tensor"  # (T,) int64 sequence positions of the image tokens, grid row-major
    expression_span: tuple[int, int]  # [start, end) token positions of the expression after the image
    prefix_span: tuple[int, int]  # [start, end) of the prefix before the image; NO_SPAN without one
    grid_hw: tuple[int, int]  # the image-token grid, h · w = T
    box: Box  # what of the image the grid covers
    image_hw: tuple[int, int]

    @property
    def length(self) -> int:
        return int(self.batch["input_ids"].shape[1])


def probe_messages(expression: str, prefix: str | None) -> list[dict[str, Any]]:
    """One user turn: `[prefix] <image> expression` (an empty expression leaves only the image)."""
    content: list[dict[str, Any]] = [{"type": TEXT, "text": prefix + PREFIX_SEPARATOR}] if prefix else []
    content.append({"type": IMAGE})
    if expression:
        content.append({"type": TEXT, "text": expression})
    return [{"role": USER, "content": content}]


def token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """[first, last + 1) of the tokens whose characters overlap text[start:end]; NO_SPAN if none do."""
    inside = [i for i, (lo, hi) in enumerate(offsets) if hi > lo and lo < end and hi > start]
    return (inside[0], inside[-1] + 1) if inside else NO_SPAN


def centre_square(image_hw: tuple[int, int]) -> Box:
    side = min(image_hw)
    return Box((image_hw[0] - side) // 2, (image_hw[1] - side) // 2, side, side)


class ProbeLayout:
    """Builds `ProbeInputs` with the tokenizer and image processor of a loaded `HfVlmAdapter`."""

    def __init__(self, vlm: "HfVlmAdapter"):
        self.vlm = vlm
        self.qwen = isinstance(vlm.inputs, QwenInputs)
        self.tokenizer = vlm.inputs.tokenizer
        config = vlm.model.config
        if self.qwen:
            self.image_token_id = int(config.image_token_id)
        else:
            self.processor = vlm.inputs.processor
            self.image_token = self.processor.image_token
            self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(self.image_token))
            vision = config.vision_config
            side = vision.image_size // vision.patch_size
            self.llava_grid = (side, side)

    def build(self, image: np.ndarray, expression: str, prefix: str | None = None) -> ProbeInputs:
        """Inputs for `image` (H×W×3 uint8) with `prefix` before it and `expression` after it."""
        messages = probe_messages(expression, prefix)
        text, vision, grid_hw, box = self._qwen(image, messages) if self.qwen else self._llava(image, messages)
        encoded = self.tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
        offsets = [tuple(pair) for pair in encoded.pop("offset_mapping")[0].tolist()]
        ids = encoded["input_ids"][0]  # (S,)
        positions = (ids == self.image_token_id).nonzero()[:, 0]  # (T', ) T' = T or T + 1 with a CLS token
        if len(positions) == grid_hw[0] * grid_hw[1] + 1:
            positions = positions[1:]  # LLaVA's 'full' strategy keeps CLIP's CLS token first
        if len(positions) != grid_hw[0] * grid_hw[1]:
            raise ValueError(f"{len(positions)} image tokens do not fill the {grid_hw[0]}×{grid_hw[1]} grid")
        expression_span = NO_SPAN
        if expression:
            start = text.rfind(expression)
            expression_span = token_span(offsets, start, start + len(expression))
        prefix_span = token_span(offsets, text.find(prefix), text.find(prefix) + len(prefix)) if prefix else NO_SPAN
        if expression_span != NO_SPAN and expression_span[0] < int(positions[-1]):
            raise ValueError(f"the expression {expression!r} must come after the image in {text!r}")
        return ProbeInputs(batch={**encoded, **vision}, image_positions=positions, expression_span=expression_span,
                           prefix_span=prefix_span, grid_hw=grid_hw, box=box, image_hw=image.shape[:2])

    def _llava(self, image: np.ndarray, messages: list[dict[str, Any]]
               ) -> tuple[str, dict[str, Any], tuple[int, int], Box]:
        """The processor's text and pixels; its image-token count expands the placeholder the same way, and
        the expanded text must tokenize to the processor's ids (else the spans would not be its tokens)."""
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        batch = self.processor(images=[image], text=text, return_tensors="pt")
        count = int((batch["input_ids"] == self.image_token_id).sum())
        expanded = text.replace(self.image_token, self.image_token * count)
        if self.tokenizer(expanded)["input_ids"] != batch["input_ids"][0].tolist():
            raise ValueError(f"{type(self.processor).__name__} does not expand {self.image_token} in place: "
                             "cannot locate the prompt's tokens")
        crops = getattr(self.processor.image_processor, "do_center_crop", False)
        box = centre_square(image.shape[:2]) if crops else Box(0, 0, *image.shape[:2])
        vision = {key: value for key, value in batch.items() if key not in ("input_ids", "attention_mask")}
        return expanded, vision, self.llava_grid, box

    def _qwen(self, image: np.ndarray, messages: list[dict[str, Any]]
              ) -> tuple[str, dict[str, Any], tuple[int, int], Box]:
        """Qwen's chat text with `<|image_pad|>` repeated once per merged patch (prod(thw) / merge²)."""
        inputs: QwenInputs = self.vlm.inputs
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            content = messages[0]["content"]
            before = "".join(c["text"] for c in content[: next(i for i, c in enumerate(content) if c["type"] == IMAGE)])
            after = content[-1]["text"] if content[-1]["type"] == TEXT else ""
            text = QWEN_CHAT_FORMAT.format(image_slots=before + QWEN_IMAGE_SLOT, prompt=after)
        pixels = inputs.image_processor(images=[image], return_tensors="pt")
        merge = inputs.image_processor.merge_size
        _, grid_h, grid_w = (int(v) for v in pixels["image_grid_thw"][0])
        text = expand_image_pads(text, [grid_h * grid_w // merge ** 2])
        vision = {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}
        return text, vision, (grid_h // merge, grid_w // merge), Box(0, 0, *image.shape[:2])
