"""UGround's losses on constructed inputs: the Gaussian soft target, the similarity-map loss (lower for a map
on the target than for one beside it), SAM's mask BCE / Dice, the CE on answer tokens only, and the total."""
from __future__ import annotations

import pytest
import torch

from nodes.shapes_vlm.data import IGNORE_INDEX
from nodes.uground.config import REWARD_SAMPLE, UGroundConfig
from nodes.uground.losses import (answer_ce, gaussian_heat, gaussian_kernel, mask_bce, mask_dice, pointing_loss,
                                  similarity_loss, token_shares, total_loss)
from nodes.uground.policy import LayerPolicy

H = W = 64
GRID = (4, 4)  # the image-token grid of the pointing loss


def square(y: int, x: int, half: int = 6) -> torch.Tensor:
    mask = torch.zeros(H, W)
    mask[y - half: y + half, x - half: x + half] = 1.0
    return mask


def test_the_gaussian_has_the_papers_kernel_and_shrinks_to_fit_a_small_image() -> None:
    kernel = gaussian_kernel(31, 7.0, (H, W))
    assert kernel.shape == (1, 1, 31, 31) and kernel.sum() == pytest.approx(1.0)
    assert kernel[0, 0, 15, 15] == kernel.max() and torch.allclose(kernel, kernel.flip(-1))
    assert gaussian_kernel(31, 7.0, (20, 40)).shape[-1] == 19  # odd and no larger than the image
    heat = gaussian_heat(square(32, 32)[None], 31, 7.0)[0]  # (H, W)
    assert heat.max() == pytest.approx(1.0) and heat[32, 32] > 0.9
    assert 0.0 < heat[32, 44] < heat[32, 38] < heat[32, 34]  # soft, falling off away from the mask
    assert heat[0, 0] < 1e-3


def test_a_map_on_the_target_scores_better_than_one_beside_it() -> None:
    target = square(20, 20)[None]  # (1, H, W)
    on, beside = square(20, 20)[None], square(44, 44)[None]  # [0, 1] maps, as min–max gives them
    good = similarity_loss(on, target, kernel=31, sigma=7.0)
    bad = similarity_loss(beside, target, kernel=31, sigma=7.0)
    assert good.bce < bad.bce and good.dice < bad.dice
    assert good.reward > bad.reward and not good.reward.requires_grad
    flat = torch.full((1, H, W), 0.5, requires_grad=True)
    loss = similarity_loss(flat, target, kernel=31, sigma=7.0)
    (loss.bce + loss.dice).sum().backward()
    assert flat.grad[0, 20, 20] < 0 < flat.grad[0, 60, 60]  # raise the map on the target, lower it far away


def test_mask_bce_and_dice_reward_the_right_mask() -> None:
    target = square(32, 32)[None]
    right, wrong = (target * 20 - 10), (square(10, 10)[None] * 20 - 10)  # confident logits
    assert mask_bce(right, target) < 1e-3 < mask_bce(wrong, target)
    assert mask_dice(right, target) < 0.01 and mask_dice(wrong, target) > 0.99


def test_cross_entropy_counts_only_the_answer_tokens() -> None:
    logits = torch.zeros(1, 4, 5)
    logits[0, 2, 3] = 20.0  # position 2 predicts token 3 (the answer at position 3)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 3]])
    assert answer_ce(logits, labels) < 1e-6
    logits[0, 0, 1] = -50.0  # a prompt position: not counted
    assert answer_ce(logits, labels) < 1e-6


def test_total_combines_the_parts_and_a_batch_of_empty_targets_trains_the_answer_only() -> None:
    config = UGroundConfig(reward=REWARD_SAMPLE)
    policy = LayerPolicy(3, 4, ema_decay=config.ema_decay)
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX] * 3 + [1]] * 2)
    targets = torch.stack([square(20, 20), square(40, 40)])  # (2, H, W)
    mask_logits = torch.randn(2, H, W, requires_grad=True)
    choice = policy.choose(torch.randn(2, 3, 4), sample=True)
    token_scores = torch.randn(2, GRID[0] * GRID[1], requires_grad=True)
    losses = total_loss(config, logits=logits, labels=labels, mask_logits=mask_logits, similarity=targets.clone(),
                        token_scores=token_scores, grid_hw=GRID, targets=targets, choice=choice, policy=policy)
    losses.total.backward()
    assert mask_logits.grad is not None and policy.weight.grad is not None and token_scores.grad is not None
    assert losses.log()["pointing"] > 0
    assert float(policy.baseline) == pytest.approx((1 - config.ema_decay) * float(losses.reward))
    parts = losses.log()
    assert parts["total"] > parts["ce"] > 0 and parts["mask_bce"] > 0 and parts["reward"] < 0
    nothing = torch.zeros(0, H, W)
    none = total_loss(config, logits=logits, labels=labels, mask_logits=nothing, similarity=nothing,
                      token_scores=torch.zeros(0, GRID[0] * GRID[1]), grid_hw=GRID, targets=nothing,
                      choice=policy.last(0, torch.device("cpu")), policy=policy)
    assert float(none.total.detach()) == pytest.approx(float(none.ce)) and float(none.mask_dice) == 0.0


def test_token_shares_lay_the_grid_over_the_padded_square() -> None:
    target = torch.zeros(1, 32, 64, dtype=torch.bool)  # (1, H, W): wide, padded to 64×64 at the bottom
    target[0, 0:16, 48:64] = True  # exactly the top-right cell of a 4×4 grid
    shares = token_shares(target, (4, 4)).reshape(4, 4)
    assert shares[0, 3] == 1.0 and shares.sum() == 1.0


def test_the_pointing_loss_prefers_scores_on_the_target_and_reaches_zero_gradient_there() -> None:
    target = torch.zeros(1, 32, 32, dtype=torch.bool)
    target[0, 0:8, 0:8] = True  # cell 0 of the 4×4 grid
    on, off = torch.full((1, 16), -5.0), torch.full((1, 16), -5.0)
    on[0, 0], off[0, 5] = 5.0, 5.0
    assert pointing_loss(on, target, (4, 4)) < 0.01 < 5.0 < pointing_loss(off, target, (4, 4))
    with pytest.raises(ValueError, match="negative"):
        UGroundConfig(pointing_weight=-1.0).validate()
