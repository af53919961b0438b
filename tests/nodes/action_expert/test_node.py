"""The ActionExpert node through the harness: pairing inputs by step, chunks out, bad input refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodes.action_expert.checkpoint import MissingCheckpointError
from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.node import ActionExpert
from nodes.action_expert.train import TrainOptions, train_action_expert
from pipeline.harness import NodeHarness, TimedInput
from pipeline.messages import PointCloud, RobotState, Waypoints
from tests.nodes.action_expert.conftest import DOWN_WXYZ, camera_pose


@pytest.fixture(scope="module")
def checkpoint(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("node")
    options = TrainOptions(data_dirs=[demo_dir], out=tmp / "expert.pt", ckpt_dir=tmp / "run", stage1_steps=10,
                           stage2_steps=4, stage1_batch_size=16, stage2_batch_size=8, log_every=5, eval_every=10,
                           checkpoint_every=10, threads=1, progress=False)
    config = ActionExpertConfig(n_points=32, point_mlp_dims=(16, 32), point_feature_dim=16, state_mlp_dims=(16, 16),
                                guidance_mlp_dims=(16, 16), down_dims=(16, 32), diffusion_step_embed_dim=16)
    train_action_expert(options, config)
    return options.out


def _inputs(step: int, nan: bool = False) -> tuple[RobotState, PointCloud]:
    state = RobotState(qpos=np.zeros(9, np.float32), qvel=np.zeros(9, np.float32),
                       ee_pose=np.array([0.0, 0.0, 0.3, *DOWN_WXYZ], np.float32), gripper=1.0, step=step)
    xyz = np.random.default_rng(step).normal([0.0, 0.0, 0.6], 0.05, (64, 3)).astype(np.float32)
    if nan:
        xyz[3, 1] = np.nan
    return state, PointCloud(xyz=xyz, T_base_frame=camera_pose(), step=step)


def _plan(valid: bool = True) -> Waypoints:
    poses = np.array([[0.1, 0.0, 0.6, 1, 0, 0, 0, 1.0], [0.1, 0.0, 0.55, 1, 0, 0, 0, -1.0]], np.float32)
    return Waypoints(poses=poses if valid else np.zeros((0, 8), np.float32), T_base_frame=camera_pose(), valid=valid,
                     reason="" if valid else "target not visible")


def test_one_chunk_per_step_once_cloud_state_and_waypoints_are_in(checkpoint):
    harness = NodeHarness(ActionExpert, {"checkpoint": str(checkpoint), "device": "cpu"})
    state0, cloud0 = _inputs(0)
    state1, cloud1 = _inputs(1)
    out = harness.run([TimedInput(0.00, "cloud", cloud0), TimedInput(0.01, "state", state0),  # no plan yet: wait
                       TimedInput(0.02, "waypoints", _plan()),  # now step 0 can be answered
                       TimedInput(0.03, "state", state1), TimedInput(0.04, "cloud", cloud1),
                       TimedInput(0.05, "cloud", cloud1)])  # a repeated cloud does not act twice
    assert [o.message.start_step for o in out] == [0, 1]
    chunk = out[0].message
    assert chunk.actions.shape == (8, 7) and chunk.actions.dtype == np.float32 and np.all(np.isfinite(chunk.actions))
    assert chunk.stamp_ns == state0.stamp_ns  # stamped with the capture time it answers


def test_invalid_plans_and_nan_points_give_no_motion(checkpoint):
    harness = NodeHarness(ActionExpert, {"checkpoint": str(checkpoint), "device": "cpu"})
    state, cloud = _inputs(0)
    assert harness.run([TimedInput(0, "waypoints", _plan(valid=False)), TimedInput(0, "state", state),
                        TimedInput(0, "cloud", cloud)]) == []
    state, bad_cloud = _inputs(1, nan=True)
    assert harness.run([TimedInput(1.0, "state", state), TimedInput(1.1, "cloud", bad_cloud),
                        TimedInput(1.2, "waypoints", _plan())]) == []
    assert harness.metrics["counters"] == {"invalid_plans": 1, "rejected_observations": 1}


def test_a_missing_checkpoint_names_the_training_command(tmp_path):
    with pytest.raises(MissingCheckpointError, match="groundloop train action-expert"):
        NodeHarness(ActionExpert, {"checkpoint": str(tmp_path / "none.pt")}).setup()


def test_act_every_samples_a_chunk_every_n_steps_and_observes_the_rest(checkpoint):
    harness = NodeHarness(ActionExpert, {"checkpoint": str(checkpoint), "device": "cpu", "act_every": 3})
    inputs = [TimedInput(0.0, "waypoints", _plan())]
    for step in range(5):
        state, cloud = _inputs(step)
        inputs += [TimedInput(0.01 * (2 * step + 1), "state", state), TimedInput(0.01 * (2 * step + 2), "cloud", cloud)]
    out = harness.run(inputs)
    assert [o.message.start_step for o in out] == [0, 3]
    # step 4 sampled nothing but went into the observation history the next chunk is conditioned on
    assert harness.node.observed_step == 4 and harness.node.acted_step == 3


def test_act_every_longer_than_a_chunk_is_refused(checkpoint):
    with pytest.raises(ValueError, match="n_action_steps=8"):
        NodeHarness(ActionExpert, {"checkpoint": str(checkpoint), "device": "cpu", "act_every": 9}).run([])
