"""The Stochastic Skip Connection policy: REINFORCE against an EMA baseline raises the probability of the
layer that is rewarded, lowers one rewarded below the baseline, and never reaches the VLM's states."""
from __future__ import annotations

import pytest
import torch

from nodes.uground.policy import LayerPolicy

L, D, N = 4, 8, 32
REWARDED = 2


def test_the_policy_starts_from_ones_and_reads_detached_states() -> None:
    policy = LayerPolicy(L, D)
    assert torch.equal(policy.weight, torch.ones(L, D)) and float(policy.baseline) == 0.0
    states = torch.randn(N, L, D, requires_grad=True)
    assert torch.allclose(policy.logits(states), states.detach().sum(-1))
    choice = policy.choose(states, sample=True)
    assert choice.layers.shape == choice.log_probs.shape == (N,) and choice.probs.shape == (N, L)
    policy.reinforce_loss(choice.log_probs, torch.ones(N)).backward()
    assert states.grad is None and policy.weight.grad is not None  # only the policy learns from its reward
    greedy = policy.choose(states, sample=False)
    assert torch.equal(greedy.layers, choice.probs.argmax(-1))


def test_one_update_moves_a_layer_by_the_sign_of_its_advantage() -> None:
    """Reward above the baseline: the chosen layer's probability rises; below: it falls. The states are small
    so no row's softmax saturates (where it does, a step on Σ log p need not raise the mean of p)."""
    torch.manual_seed(0)
    states = 0.3 * torch.randn(N, L, D)
    layers = torch.full((N,), REWARDED)
    for reward, direction in ((1.0, 1), (-1.0, -1)):
        policy = LayerPolicy(L, D, ema_decay=0.5)
        optimizer = torch.optim.SGD(policy.parameters(), lr=1e-2)
        before = torch.softmax(policy.logits(states), -1)[:, REWARDED].mean()
        log_probs = torch.distributions.Categorical(logits=policy.logits(states)).log_prob(layers)
        policy.reinforce_loss(log_probs, torch.tensor(reward)).backward()
        optimizer.step()
        after = torch.softmax(policy.logits(states), -1)[:, REWARDED].mean()
        assert float(policy.baseline) == pytest.approx(0.5 * reward)  # b ← 0.5·0 + 0.5·r, before the advantage
        assert direction * (after - before) > 0


def test_reinforce_on_a_toy_reward_learns_the_rewarded_layer() -> None:
    """Reward 1 when the policy picks layer 2, else 0: against the EMA baseline the policy converges there."""
    torch.manual_seed(0)
    policy = LayerPolicy(L, D, init=0.0)  # uniform start: every layer as likely
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.05)
    states = torch.randn(1, L, D) + 0.1 * torch.randn(N, L, D)  # one layer layout, a little noise per [SEG]
    with torch.no_grad():
        start = float(torch.softmax(policy.logits(states), -1)[:, REWARDED].mean())
    for _ in range(100):
        choice = policy.choose(states, sample=True)
        reward = (choice.layers == REWARDED).float()  # (N,)
        optimizer.zero_grad()
        policy.reinforce_loss(choice.log_probs, reward).backward()
        optimizer.step()
    with torch.no_grad():
        end = float(torch.softmax(policy.logits(states), -1)[:, REWARDED].mean())
    assert start == pytest.approx(1 / L) and end > 0.9
    assert 0.5 < float(policy.baseline) <= 1.0  # the baseline followed the rising reward


def test_fixed_and_last_layers_and_an_empty_batch() -> None:
    policy = LayerPolicy(L, D)
    assert policy.last(3, torch.device("cpu")).layers.tolist() == [L - 1] * 3
    assert policy.fixed(-2, 2, torch.device("cpu")).layers.tolist() == [L - 2] * 2
    with pytest.raises(ValueError, match="outside"):
        policy.fixed(L, 1, torch.device("cpu"))
    empty = torch.zeros(0, requires_grad=True)
    assert float(policy.reinforce_loss(empty, torch.zeros(0)).detach()) == 0.0 and float(policy.baseline) == 0.0
