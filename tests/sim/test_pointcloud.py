"""Transforms and cloud helpers, exact against constructed poses (no simulator)."""
from __future__ import annotations

import numpy as np
import pytest

from sim.pointcloud import (
    backproject_depth,
    canonical_quat,
    crop_box,
    farthest_point_indices,
    invert_transform,
    matrix_to_pose,
    matrix_to_quat,
    pose_to_matrix,
    project_points,
    quat_to_matrix,
    segmented_cloud,
    transform_points,
    transform_pose,
)

K = np.array([[200.0, 0.0, 64.0], [0.0, 210.0, 60.0], [0.0, 0.0, 1.0]])


def random_quat(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return q / np.linalg.norm(q)


def test_quaternion_matrix_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = canonical_quat(random_quat(rng))
        R = quat_to_matrix(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
        np.testing.assert_allclose(matrix_to_quat(R), q, atol=1e-9)


def test_known_rotation() -> None:
    # 90° about z: x -> y
    q = np.array([np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(quat_to_matrix(q) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_canonical_quat_uses_reference_hemisphere() -> None:
    down = np.array([0.0, 1.0, 0.0, 0.0])
    q = np.array([0.001, -0.99, 0.1, 0.0])  # w ~ 0: "w >= 0" would keep the sign, the reference flips it
    out = canonical_quat(q, down)
    assert np.dot(out, down) > 0
    np.testing.assert_allclose(quat_to_matrix(out), quat_to_matrix(q), atol=1e-12)


def test_transforms_compose_and_invert() -> None:
    rng = np.random.default_rng(1)
    T_ab = pose_to_matrix(np.concatenate([rng.normal(size=3), random_quat(rng)]))
    T_bc = pose_to_matrix(np.concatenate([rng.normal(size=3), random_quat(rng)]))
    np.testing.assert_allclose(invert_transform(T_ab) @ T_ab, np.eye(4), atol=1e-12)
    pts = rng.normal(size=(10, 3))
    np.testing.assert_allclose(transform_points(T_ab, transform_points(T_bc, pts)), transform_points(T_ab @ T_bc, pts), atol=1e-12)
    pose_c = matrix_to_pose(T_bc)
    np.testing.assert_allclose(pose_to_matrix(transform_pose(T_ab, pose_c)), T_ab @ T_bc, atol=1e-12)


def test_transform_pose_keeps_quaternion_hemisphere_continuous() -> None:
    rng = np.random.default_rng(2)
    T = pose_to_matrix(np.concatenate([rng.normal(size=3), random_quat(rng)]))
    q = canonical_quat(random_quat(rng))
    a = transform_pose(T, np.concatenate([[0, 0, 0], q]))
    b = transform_pose(T, np.concatenate([[0, 0, 0], q + 1e-4]))
    assert np.dot(a[3:], b[3:]) > 0.99  # nearby inputs give nearby outputs, never a sign flip


def test_backproject_then_project_returns_the_pixels() -> None:
    depth = np.zeros((120, 128), np.float32)
    depth[10:20, 30:50] = 0.5
    depth[70:80, 90:100] = 1.25
    points, pixel_index = backproject_depth(depth, K)
    assert len(points) == 10 * 20 + 10 * 10
    v, u = np.divmod(pixel_index, depth.shape[1])
    np.testing.assert_allclose(project_points(K, points), np.stack([u, v], 1), atol=1e-4)
    np.testing.assert_allclose(points[:, 2], depth.reshape(-1)[pixel_index])


def test_crop_box() -> None:
    pts = np.array([[0, 0, 0], [1, 1, 1], [0.5, 2, 0.5]], dtype=np.float32)
    assert crop_box(pts, np.zeros(3), np.ones(3)).tolist() == [True, True, False]


def test_farthest_point_indices_deterministic_spread_and_padded() -> None:
    rng = np.random.default_rng(3)
    pts = rng.uniform(size=(5000, 3))
    a = farthest_point_indices(pts, 64)
    assert np.array_equal(a, farthest_point_indices(pts, 64))
    assert len(set(a.tolist())) == 64
    # FPS spreads out: its minimum pairwise distance beats a random subset's
    def min_dist(x: np.ndarray) -> float:
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return float(d[np.triu_indices(len(x), 1)].min())
    assert min_dist(pts[a]) > min_dist(pts[rng.choice(5000, 64, replace=False)])
    padded = farthest_point_indices(pts[:10], 25)
    assert len(padded) == 25 and set(padded.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="empty"):
        farthest_point_indices(np.zeros((0, 3)), 8)


def test_segmented_cloud_crops_and_flags_targets() -> None:
    depth = np.full((120, 128), 1.0, np.float32)
    seg = np.full((120, 128), 1, np.int32)  # background id 1
    seg[40:60, 40:60] = 7  # arm
    seg[80:84, 80:84] = 9  # target
    rgb = np.zeros((120, 128, 3), np.uint8)
    rgb[seg == 9] = (255, 0, 0)
    cloud = segmented_cloud(depth, K, seg, keep_ids=np.array([7, 9]), n_points=100, rgb=rgb, target_ids=np.array([9]))
    assert cloud["xyz"].shape == (100, 3) and cloud["xyz"].dtype == np.float32
    assert cloud["rgb"].dtype == np.uint8 and cloud["is_target"].dtype == bool
    assert cloud["is_target"].any()
    assert (cloud["rgb"][cloud["is_target"]] == (255, 0, 0)).all()
    assert (cloud["rgb"][~cloud["is_target"]] == 0).all()
    uv = project_points(K, cloud["xyz"])
    assert (uv[:, 0] >= 39.5).all()  # nothing from the background columns left of the arm
