"""UGround's similarity map: a known token grid lands on the right pixels after each resize and the pad.

Image tokens are the rows of an identity matrix, so a [SEG] state equal to token k's one-hot vector
lights exactly token k. Bilinear upsampling (align_corners False) weighs a pixel most by the grid cell
nearest to it in each axis, so over the 16 one-token maps of a 4×4 grid the brightest map at a pixel
is the token whose block holds it: the argmax over maps is the grid's block partition, pixel for pixel.
"""
from __future__ import annotations

import pytest
import torch

from nodes.sam.similarity import grid_to_image, minmax, similarity_maps, token_similarity

GRID = (4, 4)
TOKENS = torch.eye(16) * 3.0  # (T, D): token t is 3 · e_t
EVERY_TOKEN = torch.eye(16)  # (16, D): [SEG] states lighting one token each, row-major


def blocks(height: int, width: int, block_h: int, block_w: int) -> torch.Tensor:
    """(height, width) int: the row-major index of the grid block each pixel lies in."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (ys // block_h) * GRID[1] + xs // block_w


def centroid(heat: torch.Tensor) -> tuple[float, float]:
    """(y, x) of a (H, W) map's mass, in pixel-edge coordinates (pixel i spans i .. i + 1)."""
    ys, xs = torch.meshgrid(torch.arange(heat.shape[0]) + 0.5, torch.arange(heat.shape[1]) + 0.5, indexing="ij")
    return float((heat * ys).sum() / heat.sum()), float((heat * xs).sum() / heat.sum())


def test_similarity_is_the_raw_dot_product_then_min_max_per_map() -> None:
    seg = torch.randn(3, 16)
    shared = token_similarity(seg, TOKENS)  # (N, T)
    per_seg = token_similarity(seg, TOKENS.expand(3, -1, -1))  # (N, T) from (N, T, D)
    assert torch.allclose(shared, 3.0 * seg) and torch.allclose(per_seg, shared)
    scaled = minmax(shared)
    assert torch.allclose(scaled.min(dim=1).values, torch.zeros(3))
    assert torch.allclose(scaled.max(dim=1).values, torch.ones(3))
    assert torch.equal(minmax(torch.full((1, 16), 2.5)), torch.zeros(1, 16))  # flat: zeros, not NaN
    with pytest.raises(ValueError, match=r"\(N, T, D\) with N = 3"):
        token_similarity(seg, TOKENS.expand(2, -1, -1))


def test_each_pixel_of_a_square_image_belongs_to_the_token_whose_block_holds_it() -> None:
    maps = similarity_maps(EVERY_TOKEN, TOKENS, GRID, (64, 64), prompt_size=64)
    assert maps.image.shape == (16, 64, 64) and maps.prompt.shape == (16, 1, 64, 64)
    assert torch.equal(maps.image.argmax(dim=0), blocks(64, 64, 16, 16))
    assert torch.equal(maps.prompt[:, 0], maps.image)  # 64 px already is 4E: no resize, no pad
    assert float(maps.image.min()) >= 0.0 and float(maps.image.max()) <= 1.0
    assert centroid(maps.image[6]) == pytest.approx((24.0, 40.0), abs=1e-3)  # token (1, 2): its block's centre


def test_a_non_square_image_is_stretched_then_resized_longest_side_and_padded() -> None:
    """48×96 image, grid stretched over it: 12×24 px blocks. SAM's 64 px prompt holds the image in its
    top 32 rows (scale 2/3): 8×16 px blocks; rows 32 and below are pad, zero in every map."""
    maps = similarity_maps(EVERY_TOKEN, TOKENS, GRID, (48, 96), prompt_size=64)
    assert maps.image.shape == (16, 48, 96) and maps.prompt.shape == (16, 1, 64, 64)
    assert torch.equal(maps.image.argmax(dim=0), blocks(48, 96, 12, 24))
    prompt = maps.prompt[:, 0]  # (16, 64, 64)
    assert torch.equal(prompt[:, :32].argmax(dim=0), blocks(32, 64, 8, 16))
    assert torch.equal(prompt[:, 32:], torch.zeros(16, 32, 64))
    assert centroid(prompt[6]) == pytest.approx((12.0, 40.0), abs=0.25)  # token (1, 2): rows 8–16, cols 32–48


def test_a_padded_vlm_canvas_is_cropped_before_the_resize_to_the_image() -> None:
    """The VLM saw the 48×96 image resized to 32×64 at the top of a 64×64 canvas: grid rows 0–1 are
    the image (24×24 px blocks once back at 48×96), rows 2–3 the pad, which reaches the image only as
    bilinear bleed from the canvas row below its edge."""
    maps = similarity_maps(EVERY_TOKEN, TOKENS, GRID, (48, 96), prompt_size=64, canvas=64)
    assert torch.equal(maps.image.argmax(dim=0), blocks(48, 96, 24, 24))
    assert float(maps.image[8:].max()) < 0.5  # the pad-row tokens
    square = grid_to_image(EVERY_TOKEN, GRID, (64, 64), canvas=64)
    assert torch.equal(square, grid_to_image(EVERY_TOKEN, GRID, (64, 64)))  # a square image fills its canvas


def test_grads_reach_the_seg_state_through_the_prompt_and_no_seg_gives_no_maps() -> None:
    seg = torch.randn(2, 16, requires_grad=True)
    maps = similarity_maps(seg, torch.randn(16, 16), GRID, (40, 56), prompt_size=32)
    (maps.prompt.sum() + maps.image.sum()).backward()
    assert seg.grad is not None and torch.isfinite(seg.grad).all() and seg.grad.abs().sum() > 0
    empty = similarity_maps(torch.zeros(0, 16), TOKENS, GRID, (40, 56), prompt_size=32)
    assert empty.image.shape == (0, 40, 56) and empty.prompt.shape == (0, 1, 32, 32)
    with pytest.raises(ValueError, match="do not fill a 4×4 grid"):
        grid_to_image(torch.zeros(1, 15), GRID, (8, 8))
