"""UGround's Stochastic Skip Connection: a policy over the VLM's layers, trained with REINFORCE.

Which layer's [SEG] state best says where the target is differs by expression (an attribute may be
settled early, a relation late), so instead of always the last layer a small head picks one per [SEG]
(reference/papers.md §2, `model/PPM.py`):
- logits s_{n,l} = ⟨h_n^(l), w_l⟩ over the L hidden states of [SEG] n, the states detached (the policy
  learns only from its reward, the VLM only from its losses), W ∈ R^{L×D} initialised to ones;
- a Categorical(logits) sample per [SEG] while training, its log-probability kept; at inference the
  paper uses the last layer (mode 1); a mode-3 inference here takes the most probable layer;
- REINFORCE with an exponential-moving-average baseline: b ← decay·b + (1 − decay)·r, then
  loss = −mean((r − b)·log π(l_n)). The baseline is updated before the advantage is taken, as the code
  does, and lives in a buffer so a checkpoint and a resumed run carry it.
The reward (−(Gaussian BCE + Gaussian Dice) of the similarity map) is made by `losses`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerChoice:
    """The layer picked for each [SEG] and what the policy thought of it."""

    layers: torch.Tensor  # (N,) int64 in 0..L-1
    log_probs: torch.Tensor | None  # (N,) log π(layer); None when no policy chose (mode 1, a fixed layer)
    probs: torch.Tensor | None  # (N, L) the policy's distribution, detached


class LayerPolicy(nn.Module):
    """A categorical over the L hidden layers per [SEG], and its REINFORCE loss against an EMA baseline."""

    def __init__(self, num_layers: int, hidden_size: int, *, init: float = 1.0, ema_decay: float = 0.9):
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_layers, hidden_size), float(init)))  # (L, D)
        self.ema_decay = ema_decay
        self.register_buffer("baseline", torch.zeros(()))  # the EMA of the rewards seen

    @property
    def num_layers(self) -> int:
        return self.weight.shape[0]

    def logits(self, seg_states: torch.Tensor) -> torch.Tensor:
        """(N, L, D) [SEG] states at every layer → (N, L) layer logits; no gradient reaches the states."""
        return torch.einsum("nld,ld->nl", seg_states.detach(), self.weight)

    def choose(self, seg_states: torch.Tensor, *, sample: bool) -> LayerChoice:
        """A layer per [SEG]: drawn from the policy (training), or its most probable one (inference)."""
        dist = torch.distributions.Categorical(logits=self.logits(seg_states))
        layers = dist.sample() if sample else dist.probs.argmax(dim=-1)  # (N,)
        return LayerChoice(layers, dist.log_prob(layers), dist.probs.detach())

    def last(self, count: int, device: torch.device) -> LayerChoice:
        """Mode 1: the last layer for every [SEG], no policy involved."""
        return self.fixed(self.num_layers - 1, count, device)

    def fixed(self, layer: int, count: int, device: torch.device) -> LayerChoice:
        """One given layer for every [SEG] (layer-by-layer evaluation)."""
        if not -self.num_layers <= layer < self.num_layers:
            raise ValueError(f"layer {layer} outside the {self.num_layers} hidden layers")
        return LayerChoice(torch.full((count,), layer % self.num_layers, dtype=torch.long, device=device), None, None)

    def reinforce_loss(self, log_probs: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """−mean((r − b)·log π) with b the EMA baseline, updated with this batch's mean reward first.

        `reward` is one figure for the batch (the paper) or one per [SEG] (N,); it is detached here."""
        if log_probs.numel() == 0:
            return log_probs.sum()  # no [SEG] in the batch: a zero that keeps the graph
        reward = reward.detach().to(log_probs.dtype)
        with torch.no_grad():
            self.baseline.mul_(self.ema_decay).add_((1.0 - self.ema_decay) * reward.mean())
        advantage = (reward - self.baseline).expand_as(log_probs)  # (N,)
        return -(advantage * log_probs).mean()
