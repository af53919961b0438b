"""UGround's losses: the answer's cross-entropy, SAM's mask BCE + Dice, the similarity-map loss and the policy's.

As in the paper's code (`model/UGround.py`, `tools/simi_loss.py`; reference/papers.md §2):
- ce: next-token cross-entropy on the answer ([SEG] or [REJ], then [EOS]) only;
- mask: per-pixel BCE-with-logits (mean over pixels) and Dice (LISA's, on sigmoid probabilities, scaled
  by 1/1000) of SAM's mask logits against the target, for every [SEG] with a non-empty target;
- similarity map: the target smoothed by a normalised Gaussian (kernel 31, σ 7, shrunk to fit a small
  image; reflect padding; each heat map max-normalised to 1) is a soft target for the min–max map. The
  code feeds the [0, 1] map to BCE-with-logits as logits, with pos_weight Σ(1 − heat)/Σheat per map, and
  a Dice whose targets are multiplied by that pos_weight; both are added into the mask BCE / Dice terms;
- policy: REINFORCE (policy.py) with reward −(Gaussian BCE + Gaussian Dice), the batch's sum (the paper)
  or each [SEG]'s own;
- total = ce_weight·ce + (bce_weight·ΣBCE + dice_weight·ΣDice) / num_masks + policy_weight·policy
  + pointing_weight·pointing.

NOT IN THE PAPER, `pointing` (config.pointing_weight; 0 gives the paper's losses exactly): the [SEG] state's
raw dot products with the image tokens as logits of a softmax over the tokens, cross-entropy against the
share of the target in each token's cell. The paper fine-tunes a pretrained LLaVA whose [SEG] state already
tells objects apart; ours starts from a 4.5M-parameter VLM, and with the paper's losses alone (measured:
1750 CPU steps) the similarity map learnt "every shape" — the same map, correlation 1.00, for every
expression about one still — and its Gaussian BCE never moved (1.19 from step 175 on): a min–max map in
[0, 1] taken as logits gives a weak, saturating signal. The softmax makes the target's tokens compete with
the other shapes' tokens directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nodes.shapes_vlm.data import IGNORE_INDEX
from nodes.uground.config import REWARD_BATCH, UGroundConfig
from nodes.uground.policy import LayerChoice, LayerPolicy

DICE_SCALE = 1000.0  # LISA's dice_loss divides the probabilities and targets by this
EPS = 1e-6
MIN_KERNEL = 3
REFLECT = "reflect"


def answer_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next token on the answer positions: logits (B, T, V), labels (B, T)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def mask_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, H, W) logits and {0, 1} targets → (N,) mean per-pixel BCE of each mask."""
    return F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").flatten(1).mean(1)


def mask_dice(logits: torch.Tensor, targets: torch.Tensor, scale: float = DICE_SCALE) -> torch.Tensor:
    """(N, H, W) logits and targets → (N,) Dice loss 1 − (2|p·t| + ε)/(|p| + |t| + ε) of each mask."""
    probs, targets = logits.sigmoid().flatten(1) / scale, targets.float().flatten(1)  # (N, HW) each
    return 1.0 - (2.0 * (probs * targets).sum(-1) + EPS) / (probs.sum(-1) + targets.sum(-1) / scale + EPS)


def gaussian_kernel(size: int, sigma: float, image_hw: tuple[int, int]) -> torch.Tensor:
    """(1, 1, k, k) normalised Gaussian; k odd, shrunk to fit the image as the paper's code does."""
    k = size + 1 - size % 2
    k = min(k, min(image_hw))
    if k % 2 == 0:
        k = max(MIN_KERNEL, k - 1)
    coords = torch.arange(k, dtype=torch.float32) - (k - 1) / 2  # (k,)
    kernel = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2.0 * sigma**2))  # (k, k)
    return (kernel / kernel.sum())[None, None]


def gaussian_heat(targets: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(N, H, W) binary masks → (N, H, W) soft targets: smoothed, each max-normalised to 1."""
    kernel = gaussian_kernel(size, sigma, tuple(targets.shape[-2:])).to(targets.device)
    x = targets.float()[:, None]  # (N, 1, H, W)
    pad = min(kernel.shape[-1] // 2, min(x.shape[-2:]) // 2)
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode=REFLECT)
    heat = F.conv2d(x, kernel)[:, 0]  # (N, H, W)
    return heat / heat.flatten(1).amax(1).clamp_min(EPS)[:, None, None]


@dataclass
class SimilarityLoss:
    """The similarity map's Gaussian BCE and Dice, each (N,): one figure per [SEG]."""

    bce: torch.Tensor
    dice: torch.Tensor

    @property
    def reward(self) -> torch.Tensor:
        """(N,) −(BCE + Dice), detached: the policy's reward for each [SEG]'s layer."""
        return -(self.bce + self.dice).detach()


def similarity_loss(maps: torch.Tensor, targets: torch.Tensor, *, kernel: int, sigma: float) -> SimilarityLoss:
    """(N, H, W) min–max similarity maps in [0, 1] (taken as logits, as the paper's code does) against
    (N, H, W) binary targets."""
    heat = gaussian_heat(targets, kernel, sigma).flatten(1)  # (N, HW)
    logits = maps.flatten(1)  # (N, HW)
    pos_weight = ((1.0 - heat).sum(1) / heat.sum(1).clamp_min(EPS))[:, None]  # (N, 1)
    bce = F.binary_cross_entropy_with_logits(logits, heat, reduction="none", pos_weight=pos_weight).mean(1)
    probs, weighted = logits.sigmoid(), heat * pos_weight  # (N, HW) each
    dice = 1.0 - (2.0 * (probs * weighted).sum(1) + EPS) / (probs.sum(1) + weighted.sum(1) + EPS)
    return SimilarityLoss(bce, dice)


def token_shares(targets: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) binary masks → (N, T) share of each grid cell's area the target covers, T = h·w row-major,
    the grid laid over the image padded square at the right and bottom (how the VLM saw it)."""
    h, w = targets.shape[-2:]
    side = max(h, w)
    x = F.pad(targets.float()[:, None], (0, side - w, 0, side - h))  # (N, 1, S, S)
    return F.adaptive_avg_pool2d(x, grid_hw).flatten(1)  # (N, T)


def pointing_loss(token_scores: torch.Tensor, targets: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(N, T) raw [SEG]·token scores and (N, H, W) targets → (N,) cross-entropy of softmax(scores) against the
    target's normalised token shares."""
    shares = token_shares(targets, grid_hw)  # (N, T)
    wanted = shares / shares.sum(1, keepdim=True).clamp_min(EPS)  # (N, T), rows sum to 1
    return -(wanted * F.log_softmax(token_scores.float(), dim=1)).sum(1)


@dataclass
class Losses:
    """The total and its parts (detached but `total`), for the optimiser and the training log."""

    total: torch.Tensor
    ce: torch.Tensor
    mask_bce: torch.Tensor  # SAM's masks, mean over [SEG]s
    mask_dice: torch.Tensor
    similarity_bce: torch.Tensor
    similarity_dice: torch.Tensor
    pointing: torch.Tensor
    policy: torch.Tensor
    reward: torch.Tensor  # the batch's mean reward

    def log(self) -> dict[str, float]:
        names = ("total", "ce", "mask_bce", "mask_dice", "similarity_bce", "similarity_dice", "pointing", "policy",
                 "reward")
        return {name: float(getattr(self, name).detach()) for name in names}


def total_loss(config: UGroundConfig, *, logits: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor,
               similarity: torch.Tensor, token_scores: torch.Tensor, grid_hw: tuple[int, int],
               targets: torch.Tensor, choice: LayerChoice, policy: LayerPolicy) -> Losses:
    """logits (B, T, V), labels (B, T); for the N [SEG]s with a target: SAM's mask logits (N, H, W), the
    similarity maps (N, H, W), the raw token scores (N, P) on the (h, w) image grid and the targets
    (N, H, W); the layers the policy chose for them."""
    ce = answer_ce(logits, labels)
    n = mask_logits.shape[0]
    zero = ce.new_zeros(())
    if n == 0:  # every sample of the batch had an empty target: only the answer is learnt
        return Losses(config.ce_weight * ce, ce.detach(), zero, zero, zero, zero, zero, zero, zero)
    bce, dice = mask_bce(mask_logits, targets), mask_dice(mask_logits, targets)  # (N,) each
    sim = similarity_loss(similarity, targets, kernel=config.similarity_kernel, sigma=config.similarity_sigma)
    mask = (config.bce_weight * (bce + sim.bce).sum() + config.dice_weight * (dice + sim.dice).sum()) / n
    reward = sim.reward.sum() if config.reward == REWARD_BATCH else sim.reward  # () or (N,)
    policy_loss = policy.reinforce_loss(choice.log_probs, reward) if choice.log_probs is not None else zero
    pointing = pointing_loss(token_scores, targets, grid_hw).mean() if config.pointing_weight else zero
    total = config.ce_weight * ce + mask + config.policy_weight * policy_loss + config.pointing_weight * pointing
    return Losses(total, ce.detach(), bce.mean().detach(), dice.mean().detach(), sim.bce.mean().detach(),
                  sim.dice.mean().detach(), pointing.detach(), policy_loss.detach(), reward.mean().detach())
