"""Packs (compact demo files) and the vectorized window sampler agree with the demo directory reader."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.dataset import DemoDataset, WindowSampler, demo_files, load_episodes
from nodes.action_expert.pack import PackError, pack_demos, read_pack


@pytest.fixture(scope="module")
def pack_path(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "pick.npz"
    pack_demos(demo_files(demo_dir), out, n_points=32)
    return out


def test_pack_keeps_what_the_expert_reads(demo_dir: Path, pack_path: Path):
    packed = dict(read_pack(pack_path))
    files = demo_files(demo_dir)
    assert sorted(packed) == sorted(f"{f.parent.name}/{f.stem}" for f in files)  # failed seeds left out
    for path in files:
        arrays = packed[f"{path.parent.name}/{path.stem}"]
        with np.load(path) as original:
            for key in ("ee_pose", "gripper", "action", "waypoints_base", "T_base_camera"):
                np.testing.assert_array_equal(arrays[key], original[key])
            cloud = original["cloud_xyz"]  # (T, 64, 3)
        assert arrays["cloud_xyz"].shape == (len(cloud), 32, 3)
        # every packed point is one of that step's points, to the 1 mm quantum
        distance = np.linalg.norm(arrays["cloud_xyz"][:, :, None] - cloud[:, None], axis=-1).min(axis=-1)
        assert distance.max() <= np.sqrt(3) * 0.0005 + 1e-6


def test_training_reads_a_pack_like_the_directory(demo_dir: Path, pack_path: Path, tiny_config: ActionExpertConfig):
    from_dir = load_episodes([demo_dir], tiny_config, load_point_cloud=True)
    from_pack = load_episodes([pack_path], tiny_config, load_point_cloud=True)
    assert [ep.name for ep in from_pack] == [ep.name for ep in from_dir]
    for a, b in zip(from_dir, from_pack):
        np.testing.assert_array_equal(a.state, b.state)
        np.testing.assert_array_equal(a.guidance, b.guidance)
        np.testing.assert_array_equal(a.action, b.action)
        assert b.points_base.shape == (len(a.action), 32, 3)


def test_damaged_or_foreign_pack_is_named(pack_path: Path, tmp_path: Path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(pack_path.read_bytes()[: pack_path.stat().st_size // 2])
    with pytest.raises(PackError, match="truncated.npz"):
        list(read_pack(truncated))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, format_version=np.int32(99))
    with pytest.raises(PackError, match="format_version 99"):
        list(read_pack(foreign))


def test_sampler_windows_equal_the_dataset_items(demo_dir: Path, tiny_config: ActionExpertConfig):
    config = dataclasses.replace(tiny_config, n_points=64)  # the whole cloud: only the order may differ
    dataset = DemoDataset(load_episodes([demo_dir], config, load_point_cloud=True), config, use_point_cloud=True)
    sampler = WindowSampler(dataset, torch.device("cpu"))
    assert len(sampler) == len(dataset)
    batch = sampler.windows(torch.arange(len(dataset)))
    for i in range(len(dataset)):
        item = dataset[i]
        for key in ("state", "guidance", "action"):
            torch.testing.assert_close(batch[key][i], item[key], rtol=0, atol=0)
        for step in range(config.n_obs_steps):  # same points, each step its own order
            sort = lambda p: p[torch.argsort(p[:, 0] * 1e6 + p[:, 1] * 1e3 + p[:, 2])]  # noqa: E731
            torch.testing.assert_close(sort(batch["points"][i, step]), sort(item["points"][step]))


@pytest.mark.parametrize("n_points", [16, 100])
def test_sampler_subsets_and_repeats_points(demo_dir: Path, tiny_config: ActionExpertConfig, n_points: int):
    config = dataclasses.replace(tiny_config, n_points=n_points)
    dataset = DemoDataset(load_episodes([demo_dir], config, load_point_cloud=True), config, use_point_cloud=True)
    batch = WindowSampler(dataset, torch.device("cpu")).sample(8)
    assert batch["points"].shape == (8, config.n_obs_steps, n_points, 3)
    assert batch["action"].shape == (8, config.horizon, 7)
    if n_points < 64:  # a subset draws each point at most once
        assert all(len(torch.unique(batch["points"][b, 0], dim=0)) == n_points for b in range(8))
