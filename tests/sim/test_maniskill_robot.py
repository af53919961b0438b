"""ManiSkillRobot against the simulator's ground truth: camera geometry, frames, seeds, actions."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sim.maniskill_robot import CameraSpec, ManiSkillRobot, matrix_to_euler_xyz
from sim.pointcloud import (
    backproject_depth,
    invert_transform,
    matrix_to_quat,
    project_points,
    quat_to_matrix,
    transform_points,
)
from sim.tasks import UnsupportedTaskError

CUBE_HALF = 0.02


def test_unknown_task_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedTaskError) as err:
        ManiSkillRobot("PickBanana-v1")
    message = str(err.value)
    assert "PickBanana-v1" in message
    for task in ("PickCube-v1", "PushCube-v1", "StackCube-v1"):
        assert task in message


def test_importing_sim_loads_no_simulator() -> None:
    code = ("import sys, sim, sim.maniskill_robot, sim.demos, sim.dataset, sim.evaluate, sim.cli, sim.pointcloud; "
            "heavy = [m for m in ('mani_skill', 'sapien', 'mplib', 'open3d', 'torch') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_euler_convention_matches_maniskill() -> None:
    import torch
    from mani_skill.utils.geometry.rotation_conversions import euler_angles_to_matrix

    rng = np.random.default_rng(0)
    for _ in range(20):
        angles = rng.uniform(-1.0, 1.0, size=3)
        R = euler_angles_to_matrix(torch.tensor(angles)[None], "XYZ")[0].numpy()
        np.testing.assert_allclose(matrix_to_euler_xyz(R), angles, atol=1e-9)


@pytest.mark.slow
def test_cube_projects_onto_its_segmentation(pick_robot: ManiSkillRobot) -> None:
    obs = pick_robot.reset(seed=3)
    cam = obs.cameras[pick_robot.camera.name]
    cube_ids = pick_robot.segmentation_ids(["cube"])
    cube_pixels = np.isin(cam.segmentation, cube_ids)
    assert cube_pixels.sum() > 150  # the camera is chosen so the cube is well resolved
    cube_base = obs.extras["target_pose"][:3]
    u, v = project_points(cam.intrinsics, transform_points(invert_transform(cam.T_base_camera), cube_base))
    assert cube_pixels[int(round(v)), int(round(u))]
    # the whole cube (its 8 corners) projects inside the image, around the cube's pixels
    rows, cols = np.nonzero(cube_pixels)
    assert cols.min() - 2 <= u <= cols.max() + 2 and rows.min() - 2 <= v <= rows.max() + 2


@pytest.mark.slow
def test_camera_and_ee_are_in_the_robot_base_frame(pick_robot: ManiSkillRobot) -> None:
    obs = pick_robot.reset(seed=3)
    env = pick_robot.env
    base_world = env.agent.robot.pose.p[0].numpy()
    assert abs(base_world[0]) > 0.1  # the Panda is not at the world origin, so this test bites
    spec: CameraSpec = pick_robot.camera
    T = obs.cameras[spec.name].T_base_camera
    np.testing.assert_allclose(T[:3, 3], np.array(spec.eye) - base_world, atol=1e-5)
    optical_axis = np.array(spec.target) - np.array(spec.eye)
    np.testing.assert_allclose(T[:3, 2], optical_axis / np.linalg.norm(optical_axis), atol=1e-5)
    assert T[:3, 1] @ [0, 0, 1] < 0  # OpenCV y points down in the image, so away from world up
    np.testing.assert_allclose(obs.ee_pose[:3], env.agent.tcp.pose.p[0].numpy() - base_world, atol=1e-5)


@pytest.mark.slow
def test_depth_backprojects_onto_the_cube(pick_robot: ManiSkillRobot) -> None:
    obs = pick_robot.reset(seed=5)
    cam = obs.cameras[pick_robot.camera.name]
    mask = np.isin(cam.segmentation, pick_robot.segmentation_ids(["cube"]))
    points_cam, _ = backproject_depth(cam.depth, cam.intrinsics, mask)
    points_base = transform_points(cam.T_base_camera, points_cam)
    cube = obs.extras["target_pose"]
    local = (points_base - cube[:3]) @ quat_to_matrix(cube[3:])  # into the cube's own axes
    assert np.abs(local).max() <= CUBE_HALF + 0.004  # every point on (within depth quantisation of) the cube
    assert np.linalg.norm(points_base.mean(0) - cube[:3]) < 0.015  # visible faces pull the mean ~1 cm
    center = (local.min(0) + local.max(0)) / 2  # the visible faces span the cube on x/y
    assert np.abs(center[:2]).max() < 0.01


@pytest.mark.slow
def test_observation_contents(pick_robot: ManiSkillRobot) -> None:
    obs = pick_robot.reset(seed=1)
    cam = obs.cameras[pick_robot.camera.name]
    h, w = pick_robot.camera.height, pick_robot.camera.width
    assert cam.rgb.shape == (h, w, 3) and cam.rgb.dtype == np.uint8
    assert cam.depth.shape == (h, w) and cam.depth.dtype == np.float32
    assert 0.2 < np.median(cam.depth[cam.depth > 0]) < 2.0  # metres
    assert cam.segmentation.shape == (h, w) and "cube" in cam.segmentation_labels.values()
    assert obs.qpos.shape == (9,) and obs.qvel.shape == (9,) and obs.ee_pose.shape == (7,)
    assert abs(np.linalg.norm(obs.ee_pose[3:]) - 1) < 1e-5
    assert 0.9 < obs.gripper <= 1.0  # starts open
    assert set(obs.extras) >= {"goal_pos", "target_pose", "success", "elapsed_steps"}
    frame = pick_robot.render_frame()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8


@pytest.mark.slow
def test_reset_is_deterministic_by_seed(pick_robot: ManiSkillRobot) -> None:
    a = pick_robot.reset(seed=7)
    b = pick_robot.reset(seed=7)
    np.testing.assert_array_equal(a.qpos, b.qpos)
    np.testing.assert_array_equal(a.extras["target_pose"], b.extras["target_pose"])
    np.testing.assert_array_equal(a.extras["goal_pos"], b.extras["goal_pos"])
    name = pick_robot.camera.name
    np.testing.assert_array_equal(a.cameras[name].rgb, b.cameras[name].rgb)
    c = pick_robot.reset(seed=8)
    assert not np.allclose(a.extras["target_pose"][:3], c.extras["target_pose"][:3])


@pytest.mark.slow
def test_action_toward_reaches_a_pose(pick_robot: ManiSkillRobot) -> None:
    """Translation and rotation signs of the normalised ee-delta action (ManiSkill scales rotation by a
    negative bound) are right if closed-loop commands converge."""
    obs = pick_robot.reset(seed=2)
    start = obs.ee_pose.astype(np.float64)
    yaw = 0.2
    q_yaw = np.array([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])
    R_target = quat_to_matrix(q_yaw) @ quat_to_matrix(start[3:])
    target = np.concatenate([start[:3] + [0.03, -0.02, 0.04], matrix_to_quat(R_target)])
    for _ in range(25):
        pick_robot.send_action(pick_robot.action_toward(target, 1.0))
    end = pick_robot.get_observation().ee_pose
    assert np.linalg.norm(end[:3] - target[:3]) < 0.005
    R_err = quat_to_matrix(end[3:]) @ R_target.T
    assert np.arccos(np.clip((np.trace(R_err) - 1) / 2, -1, 1)) < 0.02


@pytest.mark.slow
def test_send_action_rejects_bad_actions(pick_robot: ManiSkillRobot) -> None:
    pick_robot.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        pick_robot.send_action(np.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        pick_robot.send_action(np.array([np.nan, 0, 0, 0, 0, 0, 1]))


@pytest.mark.slow
def test_unknown_camera_is_a_clear_error() -> None:
    robot = ManiSkillRobot("PushCube-v1", camera=CameraSpec(name="wrist_cam"))
    with pytest.raises(ValueError, match="wrist_cam.*PushCube-v1|PushCube-v1.*wrist_cam"):
        robot.connect()
    robot.disconnect()
