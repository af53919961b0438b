"""Guidance geometry: frames, relative pose, dense path, tracker progress."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from nodes.action_expert.guidance import (
    DensePath,
    GuidanceTracker,
    episode_guidance,
    guidance_features,
    perturb_guidance,
    waypoints_camera_to_base,
)

DOWN = [0.0, 1.0, 0.0, 0.0]  # wxyz, 180° about x


def _wxyz(rot: Rotation) -> np.ndarray:
    return rot.as_quat()[[3, 0, 1, 2]]


def test_guidance_is_relative_to_the_ee_pose():
    ee = np.array([0.1, 0.2, 0.3, *DOWN])
    yaw90 = Rotation.from_euler("z", 90, degrees=True)
    target_rot = yaw90 * Rotation.from_quat([1.0, 0.0, 0.0, 0.0])  # xyzw of DOWN
    target = np.array([0.2, 0.2, 0.25, *_wxyz(target_rot), -1.0])
    g = guidance_features(ee, lookahead_xyz=np.array([0.15, 0.2, 0.3]), target_waypoint=target)
    np.testing.assert_allclose(g[0:3], [0.05, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(g[3:6], [0.1, 0.0, -0.05], atol=1e-6)
    np.testing.assert_allclose(g[6:9], [0.0, 0.0, np.pi / 2], atol=1e-5)  # base-axis rotation still to do
    assert g[9] == -1.0


def test_guidance_does_not_depend_on_where_the_ee_is():
    """The same relative situation anywhere in the workspace gives the same guidance."""
    offset = np.array([0.3, -0.2, 0.1])
    a = guidance_features(np.array([0, 0, 0.3, *DOWN]), np.array([0, 0, 0.25]), np.array([0, 0, 0.2, *DOWN, 1]))
    b = guidance_features(np.array([*offset + [0, 0, 0.3], *DOWN]), offset + [0, 0, 0.25],
                          np.array([*offset + [0, 0, 0.2], *DOWN, 1]))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_waypoints_camera_to_base_uses_the_extrinsics():
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    T[:3, 3] = [1.0, 2.0, 3.0]
    wp_cam = np.array([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]])  # identity orientation
    wp_base = waypoints_camera_to_base(wp_cam, T)
    np.testing.assert_allclose(wp_base[0, :3], [1.0, 3.0, 3.0], atol=1e-9)  # x_cam → y_base
    np.testing.assert_allclose(np.abs(wp_base[0, 3:7]), np.abs(_wxyz(Rotation.from_euler("z", 90, degrees=True))), atol=1e-9)
    assert wp_base[0, 7] == 1.0


@pytest.mark.parametrize("degree", [1, 3])
def test_dense_path_passes_through_the_waypoints(degree: int):
    wps = np.array([[0.1, 0.0, 0.2], [0.1, 0.0, 0.05], [0.1, 0.0, 0.2], [0.0, 0.2, 0.3]])
    path = DensePath(wps, start_xyz=np.array([0.0, 0.0, 0.3]), resolution_m=0.005, degree=degree)
    for xyz, s in zip(wps, path.waypoint_arc):
        np.testing.assert_allclose(path.point_at(s), xyz, atol=2e-3)
    assert np.all(np.diff(path.waypoint_arc) > 0)
    if degree == 1:  # straight segments: pre-grasp → grasp never dips below the grasp
        assert path.xyz[:, 2].min() >= 0.05 - 1e-9


def test_lookahead_on_a_straight_segment_and_clipped_at_the_waypoint():
    path = DensePath(np.array([[0.0, 0.0, 0.0]]), start_xyz=np.array([0.0, 0.0, 0.3]), resolution_m=0.005, degree=1)
    np.testing.assert_allclose(path.lookahead_point(np.array([0.0, 0.0, 0.2]), 0, 0.05), [0, 0, 0.15], atol=1e-3)
    np.testing.assert_allclose(path.lookahead_point(np.array([0.0, 0.0, 0.02]), 0, 0.05), [0, 0, 0.0], atol=1e-3)


def test_tracker_advances_only_when_a_waypoint_is_reached():
    wps = np.array([[0.0, 0.0, 0.2, *DOWN, 1.0], [0.0, 0.0, 0.1, *DOWN, -1.0], [0.1, 0.0, 0.2, *DOWN, -1.0]])
    tracker = GuidanceTracker(wps, np.array([0.0, 0.0, 0.3, *DOWN]), lookahead_m=0.05, reach_tolerance_m=0.01,
                              resolution_m=0.005, spline_degree=1)
    g = tracker.update(np.array([0.0, 0.0, 0.3, *DOWN]))
    assert tracker.target_index == 0 and g[9] == 1.0
    tracker.update(np.array([0.0, 0.0, 0.205, *DOWN]))
    assert tracker.target_index == 1
    tracker.update(np.array([0.0, 0.0, 0.3, *DOWN]))  # moving away does not undo progress
    assert tracker.target_index == 1
    tracker.replace_waypoints(wps + [0.001, 0, 0, 0, 0, 0, 0, 0], np.zeros(7))  # re-sent plan keeps progress
    assert tracker.target_index == 1
    tracker.replace_waypoints(wps[:2], np.array([0.0, 0.0, 0.3, *DOWN]))  # a new plan restarts
    assert tracker.target_index == 0



def _descending_tracker() -> tuple[GuidanceTracker, np.ndarray]:
    """Start 0.3 m up, pre-grasp at 0.2 m, grasp at 0.1 m, then aside: a pick's first segments."""
    wps = np.array([[0.0, 0.0, 0.2, *DOWN, 1.0], [0.0, 0.0, 0.1, *DOWN, -1.0], [0.1, 0.0, 0.2, *DOWN, -1.0]])
    return GuidanceTracker(wps, np.array([0.0, 0.0, 0.3, *DOWN]), lookahead_m=0.05, reach_tolerance_m=0.006,
                           resolution_m=0.005, spline_degree=1, pass_radius_m=0.02, stall_steps=5,
                           stall_motion_m=0.003), wps


def test_tracker_moves_on_past_a_waypoint_it_missed_by_a_centimetre():
    tracker, _ = _descending_tracker()
    tracker.update(np.array([0.012, 0.0, 0.205, *DOWN]))  # 1.3 cm beside, still above: not there yet
    assert tracker.target_index == 0
    tracker.update(np.array([0.012, 0.0, 0.195, *DOWN]))  # below the pre-grasp, 1.2 cm beside: passed
    assert tracker.target_index == 1
    far, _ = _descending_tracker()
    far.update(np.array([0.05, 0.0, 0.19, *DOWN]))  # past it, but 5 cm away: not a pass
    assert far.target_index == 0


def test_tracker_moves_on_when_the_arm_stalls_near_the_waypoint():
    tracker, _ = _descending_tracker()
    tracker.update(np.array([0.0, 0.0, 0.2, *DOWN]))  # pre-grasp reached
    stalled = np.array([0.0, 0.012, 0.112, *DOWN])  # stopped 1.7 cm from the grasp (the cube is in the way)
    for _ in range(4):
        tracker.update(stalled)
    assert tracker.target_index == 1  # not yet: four still steps are not a stall
    tracker.update(stalled + [0.001, 0, 0, 0, 0, 0, 0])
    assert tracker.target_index == 2
    moving, _ = _descending_tracker()
    moving.update(np.array([0.0, 0.0, 0.2, *DOWN]))
    for z in np.linspace(0.13, 0.115, 8):  # still approaching, 1.5–3 cm away: no stall
        moving.update(np.array([0.0, 0.012, z, *DOWN]))
    assert moving.target_index == 1

def test_episode_guidance_labels_every_step():
    ee = np.array([[0.0, 0.0, z, *DOWN] for z in np.linspace(0.3, 0.1, 21)])
    wps = np.array([[0.0, 0.0, 0.2, *DOWN, 1.0], [0.0, 0.0, 0.1, *DOWN, -1.0]])
    g, target = episode_guidance(ee, wps, lookahead_m=0.05, reach_tolerance_m=0.005, resolution_m=0.005,
                                 spline_degree=3)
    assert g.shape == (21, 10) and g.dtype == np.float32
    assert target[0] == 0 and target[-1] == 1 and np.all(np.diff(target) >= 0)
    np.testing.assert_allclose(g[-1, 3:6], 0.0, atol=1e-6)


def test_perturb_guidance_scale():
    torch.manual_seed(0)
    x = torch.zeros(10_000, 10)
    assert torch.equal(perturb_guidance(x, 0.0), x)
    assert perturb_guidance(x, 0.1).std().item() == pytest.approx(0.1, rel=0.05)
