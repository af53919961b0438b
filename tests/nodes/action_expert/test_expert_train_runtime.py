"""Two-stage training on synthetic demos, and the runtime the node wraps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nodes.action_expert.checkpoint import MissingCheckpointError
from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.policy_runtime import NoWaypointsError, load_policy
from nodes.action_expert.train import TrainOptions, main, train_action_expert


def _options(demo_dir: Path, tmp_path: Path, **overrides) -> TrainOptions:
    values = dict(
        data_dirs=[demo_dir], out=tmp_path / "expert.pt", ckpt_dir=tmp_path / "run",
        stage1_steps=60, stage2_steps=10, stage1_batch_size=32, stage2_batch_size=16, lr=1e-3,
        log_every=10, eval_every=30, checkpoint_every=30, threads=1, progress=False,
    )
    values.update(overrides)
    return TrainOptions(**values)


@pytest.fixture(scope="module")
def trained(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, TrainOptions]:
    config = ActionExpertConfig(
        n_points=32, point_mlp_dims=(16, 32), point_feature_dim=16, state_mlp_dims=(16, 16),
        guidance_mlp_dims=(16, 16), down_dims=(16, 32), diffusion_step_embed_dim=16,
    )
    options = _options(demo_dir, tmp_path_factory.mktemp("train"))
    return train_action_expert(options, config), options


def test_two_stage_training_reduces_loss_and_writes_checkpoints(trained):
    summary, options = trained
    stage1, stage2 = summary["stages"][1], summary["stages"][2]
    assert stage1[-1]["loss"] < 0.7 * stage1[0]["loss"]
    assert len(stage2) == 1 and np.isfinite(stage2[0]["loss"])
    assert "val_action_mse" in stage1[-1]
    assert options.out.is_file() and (options.run_dir / "stage1.pt").is_file()
    assert options.out.stat().st_size < 1e6
    rows = [json.loads(line) for line in (options.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [1] * 6 + [2]


def test_resume_continues_where_the_run_stopped(trained, demo_dir: Path):
    _, options = trained
    more = _options(demo_dir, options.run_dir.parent, stage2_steps=20, resume=True)
    summary = train_action_expert(more, ActionExpertConfig())  # the checkpoint's network wins over this config
    assert 1 not in summary["stages"]
    assert [r["step"] for r in summary["stages"][2]] == [10, 20]


def test_runtime_returns_action_chunks_and_rejects_bad_input(trained, demo_dir: Path):
    _, options = trained
    runtime = load_policy(options.out, device="cpu")
    episode = np.load(sorted(demo_dir.glob("episode_*.npz"))[0])
    obs = dict(ee_pose=episode["ee_pose"][0], gripper=float(episode["gripper"][0]),
               cloud_xyz=episode["cloud_xyz"][0], T_base_camera=episode["T_base_camera"])
    with pytest.raises(NoWaypointsError):
        runtime.act(**obs)
    runtime.set_waypoints(episode["waypoints_camera"], episode["T_base_camera"])
    chunk = runtime.act(**obs)
    assert chunk.shape == (8, 7) and chunk.dtype == np.float32 and np.isfinite(chunk).all()
    assert runtime.target_index == 0

    bad_cloud = obs["cloud_xyz"].copy()
    bad_cloud[3, 1] = np.nan
    with pytest.raises(ValueError, match="cloud_xyz contains NaN"):
        runtime.act(**{**obs, "cloud_xyz": bad_cloud})
    with pytest.raises(ValueError, match="ee_pose contains NaN"):
        runtime.act(**{**obs, "ee_pose": np.full(7, np.inf)})
    with pytest.raises(ValueError, match="waypoints_camera contains NaN"):
        runtime.set_waypoints(np.full((4, 8), np.nan), episode["T_base_camera"])


def test_missing_checkpoint_names_the_path_and_the_training_command(tmp_path: Path):
    path = tmp_path / "models" / "action_expert_pickcube.pt"
    with pytest.raises(MissingCheckpointError, match=rf"{path}.*groundloop train action-expert --data"):
        load_policy(path)


def test_cli_reports_a_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture):
    code = main(["action-expert", "--data", str(tmp_path / "PickCube-v1"), "--out", str(tmp_path / "x.pt"),
                 "--ckpt-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "PickCube-v1") in err and "groundloop sim demos --task PickCube-v1 -n 200" in err
