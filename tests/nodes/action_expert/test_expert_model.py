"""Normalizer, network shapes, dataset windows, checkpoint round trip."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.action_expert.checkpoint import load_policy_checkpoint, save_policy
from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.dataset import DemoDataset, MissingDemosError, load_episodes
from nodes.action_expert.model import ActionExpertPolicy
from nodes.action_expert.normalizer import LinearNormalizer


@pytest.mark.parametrize("mode", ["limits", "gaussian"])
def test_normalizer_round_trip(mode: str):
    rng = np.random.default_rng(0)
    data = {"action": rng.uniform(-1, 1, (500, 7)), "state": rng.normal(3.0, 5.0, (50, 4, 8))}
    data["action"][:, 3] = 0.25  # a constant channel must not blow up
    norm = LinearNormalizer().fit(data, mode=mode)
    for key, values in data.items():
        x = torch.as_tensor(values, dtype=torch.float32)
        y = norm.normalize(key, x)
        torch.testing.assert_close(norm.unnormalize(key, y), x, atol=1e-5, rtol=1e-5)
        assert torch.isfinite(y).all()
    if mode == "limits":
        y = norm.normalize("state", torch.as_tensor(data["state"], dtype=torch.float32))
        assert y.min().item() == pytest.approx(-1, abs=1e-5) and y.max().item() == pytest.approx(1, abs=1e-5)
    rebuilt = LinearNormalizer.from_state_dict(norm.state_dict())
    x = torch.randn(3, 7)
    torch.testing.assert_close(rebuilt.normalize("action", x), norm.normalize("action", x))


def _policy(config: ActionExpertConfig, demo_dir: Path) -> tuple[ActionExpertPolicy, DemoDataset]:
    episodes = load_episodes([demo_dir], config, load_point_cloud=True)
    dataset = DemoDataset(episodes, config, use_point_cloud=config.use_point_cloud)
    return ActionExpertPolicy(config, LinearNormalizer().fit(dataset.normalizer_data())), dataset


def test_dataset_windows_and_padding(tiny_config: ActionExpertConfig, demo_dir: Path):
    episodes = load_episodes([demo_dir], tiny_config, load_point_cloud=True)
    dataset = DemoDataset(episodes, tiny_config, use_point_cloud=True)
    assert len(dataset) == sum(len(ep.action) for ep in episodes)  # one window per step
    item = dataset[0]
    assert item["state"].shape == (2, 8) and item["guidance"].shape == (2, 10)
    assert item["action"].shape == (16, 7) and item["points"].shape == (2, 32, 3)
    assert torch.equal(item["state"][0], item["state"][1])  # episode start: first obs repeated
    last = dataset[len(episodes[0].action) - 1]  # last window of episode 0: obs at the final step
    assert torch.all(last["action"][-1, :6] == 0)  # padded with hold actions
    # points are ee-relative: subtracting the ee puts the cloud around the origin, not around the base
    assert last["points"].abs().max() < 1.0
    no_pc = DemoDataset(episodes, tiny_config, use_point_cloud=False)
    assert "points" not in no_pc[0]


def test_policy_shapes_and_loss(tiny_config: ActionExpertConfig, demo_dir: Path):
    policy, dataset = _policy(tiny_config, demo_dir)
    batch = {k: torch.stack([dataset[i][k] for i in range(4)]) for k in dataset[0]}
    loss = policy.compute_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    actions = policy.eval().predict_action({k: v for k, v in batch.items() if k != "action"})
    assert actions.shape == (4, tiny_config.n_action_steps, 7)


def test_stage1_and_baseline_ignore_their_disabled_inputs(tiny_config: ActionExpertConfig, demo_dir: Path):
    config = dataclasses.replace(tiny_config, use_point_cloud=False, use_guidance=False)
    policy, dataset = _policy(config, demo_dir)
    obs = {k: v[None] for k, v in dataset[5].items() if k != "action"}
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = policy.eval().predict_action(obs, generator=gen())
    obs["guidance"] = obs["guidance"] + 5.0
    torch.testing.assert_close(policy.predict_action(obs, generator=gen()), a)


def test_stage2_starts_where_stage1_ended(tiny_config: ActionExpertConfig, demo_dir: Path):
    stage2, dataset = _policy(tiny_config, demo_dir)
    stage1 = ActionExpertPolicy(dataclasses.replace(tiny_config, use_point_cloud=False), stage2.normalizer)
    stage2.load_state_dict(stage1.state_dict())
    stage2.obs_encoder.point_encoder.silence()
    obs = {k: v[None] for k, v in dataset[7].items() if k != "action"}
    expected = stage1.eval().predict_action(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(stage2.eval().predict_action(obs, generator=torch.Generator().manual_seed(0)), expected)


def test_default_network_fits_the_shipping_budget():
    config = ActionExpertConfig()
    norm = LinearNormalizer().fit({k: np.zeros((2, d)) for k, d in
                                   [("state", 8), ("guidance", 10), ("points", 3), ("action", 7)]})
    n_params = sum(p.numel() for p in ActionExpertPolicy(config, norm).parameters())
    assert n_params * 2 < 10e6  # float16 weights in the shipped checkpoint: well under 20 MB


def test_checkpoint_round_trip_gives_equal_actions(tiny_config: ActionExpertConfig, demo_dir: Path, tmp_path: Path):
    policy, dataset = _policy(tiny_config, demo_dir)
    with torch.no_grad():  # the checkpoint stores float16 weights: compare against the rounded original
        for p in policy.parameters():
            p.copy_(p.half().float())
    save_policy(policy, tmp_path / "expert.pt", meta={"stage": 2})
    loaded, meta = load_policy_checkpoint(tmp_path / "expert.pt")
    assert meta == {"stage": 2} and loaded.config == tiny_config
    obs = {k: v[None] for k, v in dataset[3].items() if k != "action"}
    expected = policy.eval().predict_action(obs, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.predict_action(obs, generator=torch.Generator().manual_seed(1)), expected)


def test_missing_demo_dir_names_the_command(tiny_config: ActionExpertConfig, tmp_path: Path):
    with pytest.raises(MissingDemosError, match=r"PushCube-v1 does not exist.*groundloop sim demos --task PushCube-v1 -n 200"):
        load_episodes([tmp_path / "PushCube-v1"], tiny_config, load_point_cloud=False)
