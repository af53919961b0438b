"""SAM's frame: resize-longest-side + pad in, prompts scaled in, masks back to the image — the same as
transformers' own SamImageProcessor, which is the reference for a Hugging Face SAM checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.sam.processing import (
    SamPreprocessor, mask_prompt, masks_to_image, preprocess_shape, resize_longest_and_pad, scale_boxes, scale_points)

H, W, S = 24, 40, 32  # a landscape image into a 32 px SAM


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_resize_rounds_like_sam() -> None:
    assert preprocess_shape(H, W, S) == (19, 32)  # 24 · 0.8 = 19.2
    assert preprocess_shape(480, 640, 1024) == (768, 1024)
    assert preprocess_shape(W, H, S) == (32, 19)


def test_pixels_match_transformers_sam_image_processor(tiny_sam_dir: Path, image: np.ndarray) -> None:
    from transformers import SamImageProcessor

    ours = SamPreprocessor.from_dir(tiny_sam_dir)
    theirs = SamImageProcessor.from_pretrained(tiny_sam_dir)(images=image, return_tensors="pt")
    pixels = ours(image)  # (1, 3, S, S)
    assert pixels.shape == theirs["pixel_values"].shape == (1, 3, S, S)
    assert tuple(theirs["reshaped_input_sizes"][0].tolist()) == ours.resized_shape(H, W)
    assert torch.allclose(pixels, theirs["pixel_values"], atol=0.05)  # uint8 vs float resampling only
    assert (pixels[..., 19:, :] == 0).all()  # the pad is zeros, after normalisation


def test_preprocessor_reads_a_hugging_face_config_and_refuses_a_pad_that_is_not_square() -> None:
    hf = {"size": {"longest_edge": 1024}, "pad_size": {"height": 1024, "width": 1024}, "do_normalize": True,
          "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "mask_size": {"longest_edge": 256}}
    pre = SamPreprocessor.from_dict(hf)
    assert pre.longest_edge == pre.pad_side == 1024
    assert pre.to_dict()["mask_size"] == {"longest_edge": 256}  # fields we do not use are kept
    with pytest.raises(ValueError, match="pad_size 1024×512"):
        SamPreprocessor.from_dict({**hf, "pad_size": {"height": 1024, "width": 512}})


def test_points_and_boxes_scale_into_the_resized_image() -> None:
    points = np.array([[[0.0, 0.0], [W, H], [W / 2, H / 2]]])  # (1, 3, 2) x, y
    scaled = scale_points(points, (H, W), (19, 32))
    assert np.allclose(scaled[0, 1], [32.0, 19.0]) and np.allclose(scaled[0, 2], [16.0, 9.5])
    boxes = scale_boxes(np.array([[0.0, 0.0, W, H]]), (H, W), (19, 32))
    assert boxes.shape == (1, 4) and np.allclose(boxes, [[0, 0, 32, 19]])


def test_masks_return_to_the_image_frame_as_transformers_does() -> None:
    from transformers import SamImageProcessor

    low_res = torch.randn(3, 16, 16)  # (N, 4E, 4E) logits
    ours = masks_to_image(low_res, S, (19, 32), (H, W))
    theirs = SamImageProcessor().post_process_masks([low_res[:, None]], [(H, W)], [(19, 32)], binarize=False,
                                                    pad_size={"height": S, "width": S})[0][:, 0]
    assert ours.shape == (3, H, W)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_mask_prompt_keeps_the_layout_and_zeros_the_pad() -> None:
    maps = torch.zeros(1, H, W)
    maps[0, :, 20:] = 1.0  # the right half of the image
    prompt = mask_prompt(maps, 16)  # (1, 1, 16, 16); the image fills the top 10 rows (24 · 0.4 = 9.6)
    assert prompt.shape == (1, 1, 16, 16)
    assert (prompt[0, 0, 10:] == 0).all()
    assert (prompt[0, 0, :10, :7] < 0.1).all() and (prompt[0, 0, :10, 9:] > 0.9).all()
    assert torch.equal(resize_longest_and_pad(maps[:, None], 40), torch.nn.functional.pad(maps[:, None], (0, 0, 0, 16)))
