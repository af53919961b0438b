"""Synthetic demos in the `groundloop sim demos` format, and a tiny expert config, for fast tests.

The episodes imitate a pick: the ee walks to pre-grasp, grasp (closes), lift, goal, with
pd_ee_delta_pose-style actions (0.1 m per unit) and a cloud of table + cube points seen by a
tilted camera. They are geometry-consistent, not physics: enough to exercise every code path.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from nodes.action_expert.config import ActionExpertConfig

N_CLOUD = 64
DOWN_WXYZ = np.array([0.0, 1.0, 0.0, 0.0])  # gripper pointing down


def camera_pose() -> np.ndarray:
    """A camera 0.6 m in front of and above the base, looking down at the table (camera → base)."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", [-150.0, 0.0, -90.0], degrees=True).as_matrix()
    T[:3, 3] = [0.6, 0.0, 0.5]
    return T


def _episode(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cube = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), 0.02])
    goal = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), rng.uniform(0.1, 0.3)])
    up = np.array([0.0, 0.0, 0.1])
    targets = [(cube + up, 1.0), (cube, -1.0), (cube + up, -1.0), (goal, -1.0)]
    waypoints_base = np.array([[*xyz, *DOWN_WXYZ, cmd] for xyz, cmd in targets], dtype=np.float32)

    ee, grip, held_cmd = np.array([0.0, 0.0, 0.3]), 1.0, 1.0  # a waypoint's gripper cmd applies on arrival
    ee_poses, grippers, actions, steps = [], [], [], []
    for xyz, cmd in targets:
        while True:
            delta = xyz - ee
            move = delta if np.linalg.norm(delta) < 0.03 else delta / np.linalg.norm(delta) * 0.03
            closing = cmd < 0 and grip > 0.3 and np.linalg.norm(delta) < 1e-6
            if np.linalg.norm(delta) < 1e-6 and not closing:
                break
            ee_poses.append([*ee, *DOWN_WXYZ])
            grippers.append(grip)
            actions.append([*(np.zeros(3) if closing else move / 0.1), 0.0, 0.0, 0.0, cmd if closing else held_cmd])
            if closing:
                grip = max(0.25, grip - 0.25)
            else:
                ee = ee + move
        steps.append(len(actions))
        held_cmd = cmd
    for _ in range(3):  # hold at the goal
        ee_poses.append([*ee, *DOWN_WXYZ])
        grippers.append(grip)
        actions.append([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    T = len(actions)

    ee_xyz = np.array(ee_poses)[:, :3]
    cube_track = np.where((np.arange(T) >= steps[1])[:, None], ee_xyz, cube)  # carried after the grasp
    table = np.stack([rng.uniform(-0.3, 0.3, (T, N_CLOUD - 16)), rng.uniform(-0.3, 0.3, (T, N_CLOUD - 16)),
                      np.zeros((T, N_CLOUD - 16))], axis=-1)
    cube_pts = cube_track[:, None, :] + rng.uniform(-0.01, 0.01, (T, 16, 3))
    cloud_base = np.concatenate([table, cube_pts], axis=1)  # (T, N, 3)
    T_bc = camera_pose()
    T_cb = np.linalg.inv(T_bc)
    cloud_camera = cloud_base @ T_cb[:3, :3].T + T_cb[:3, 3]
    is_target = np.zeros((T, N_CLOUD), bool)
    is_target[:, -16:] = True
    wp_cam_xyz = waypoints_base[:, :3] @ T_cb[:3, :3].T + T_cb[:3, 3]
    wp_cam_rot = (Rotation.from_matrix(T_cb[:3, :3]) * Rotation.from_quat(waypoints_base[:, [4, 5, 6, 3]])).as_quat()
    waypoints_camera = np.concatenate([wp_cam_xyz, wp_cam_rot[:, [3, 0, 1, 2]], waypoints_base[:, 7:]], axis=1)
    return {
        "cloud_xyz": cloud_camera.astype(np.float32),
        "cloud_rgb": np.full((T, N_CLOUD, 3), 128, np.uint8),
        "cloud_is_target": is_target,
        "T_base_camera": T_bc.astype(np.float32),
        "qpos": rng.normal(size=(T, 9)).astype(np.float32),
        "ee_pose": np.array(ee_poses, np.float32),
        "gripper": np.array(grippers, np.float32),
        "action": np.array(actions, np.float32),
        "waypoints_base": waypoints_base,
        "waypoints_camera": waypoints_camera.astype(np.float32),
        "waypoint_names": np.array(["pre_grasp", "grasp", "lift", "goal"]),
        "waypoint_step": np.array(steps, np.int32),
        "goal_pos": goal.astype(np.float32),
        "success": np.array(True),
        "seed": np.array(seed),
    }


def write_demos(directory: Path, seeds: list[int]) -> Path:
    """Write synthetic episodes and a meta.json the way `groundloop sim demos` lays them out."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for seed in seeds:
        episode = _episode(seed)
        np.savez(directory / f"episode_{seed:06d}.npz", **episode)
        entries.append({"seed": seed, "status": "success", "success": True, "length": len(episode["action"]),
                        "file": f"episode_{seed:06d}.npz"})
    entries.append({"seed": len(seeds), "status": "plan_failed", "success": False, "length": 3, "file": None})
    (directory / "meta.json").write_text(json.dumps({"task": "PickCube-v1", "episodes": entries}))
    return directory


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demos(tmp_path_factory.mktemp("demos") / "PickCube-v1", list(range(6)))


@pytest.fixture
def tiny_config() -> ActionExpertConfig:
    """The real architecture, narrowed so a training step takes milliseconds."""
    return ActionExpertConfig(
        n_points=32,
        point_mlp_dims=(16, 32),
        point_feature_dim=16,
        state_mlp_dims=(16, 16),
        guidance_mlp_dims=(16, 16),
        down_dims=(16, 32),
        diffusion_step_embed_dim=16,
    )
