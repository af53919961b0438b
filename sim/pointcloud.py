"""Point-cloud and rigid-transform utilities shared by demo generation and the point-cloud node.

Pure numpy + open3d so a node can reuse them on live camera data without ManiSkill. Conventions:
camera geometry in OpenCV axes (x right, y down, z forward); poses as 7-vectors `xyz + quaternion wxyz`
or 4×4 homogeneous matrices `T_a_b` that map points from frame b into frame a.
"""
from __future__ import annotations

import numpy as np

QUAT_EPS = 1e-12


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a quaternion wxyz (normalised here, so slightly off inputs are fine)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / max(np.linalg.norm(q), QUAT_EPS)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Quaternion wxyz (w >= 0) of a rotation matrix, by Shepperd's method (stable for all angles)."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s])
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = np.array([(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s])
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = np.array([(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = np.array([(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s])
    return canonical_quat(q)


def canonical_quat(q: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Unit quaternion in the hemisphere of `reference` (default: w >= 0).

    q and -q are the same rotation; learning wants one of them, chosen continuously. w >= 0 is
    ambiguous near w = 0 — exactly where a top-down gripper lives — so callers with such poses pass a
    reference orientation near their working range instead.
    """
    q = np.asarray(q, dtype=np.float64)
    q = q / max(np.linalg.norm(q), QUAT_EPS)
    ref = np.array([1.0, 0.0, 0.0, 0.0]) if reference is None else np.asarray(reference, dtype=np.float64)
    return -q if np.dot(q, ref) < 0 else q


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a ⊗ b of quaternions wxyz (rotation b, then a)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ])


def pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """4×4 matrix of a pose `xyz + quat wxyz`."""
    pose = np.asarray(pose, dtype=np.float64)
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(pose[3:7])
    T[:3, 3] = pose[:3]
    return T


def matrix_to_pose(T: np.ndarray) -> np.ndarray:
    """Pose `xyz + quat wxyz` (w >= 0) of a 4×4 matrix."""
    T = np.asarray(T, dtype=np.float64)
    return np.concatenate([T[:3, 3], matrix_to_quat(T[:3, :3])])


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4×4 transform (exact, without a general matrix inverse)."""
    T = np.asarray(T, dtype=np.float64)
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inv


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4×4 transform to (..., 3) points; keeps the input dtype."""
    points = np.asarray(points)
    out = points.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    return out.astype(points.dtype if points.dtype.kind == "f" else np.float64)


def transform_pose(T: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Express a pose `xyz + quat wxyz` given in frame b in frame a, with T = T_a_b.

    The quaternion is multiplied, not re-derived from a matrix, so its sign follows the input's: poses
    kept in one hemisphere stay in one (rotated) hemisphere.
    """
    T = np.asarray(T, dtype=np.float64)
    pose = np.asarray(pose, dtype=np.float64)
    q = quat_multiply(matrix_to_quat(T[:3, :3]), pose[3:7])
    return np.concatenate([T[:3, :3] @ pose[:3] + T[:3, 3], q / np.linalg.norm(q)])


def project_points(K: np.ndarray, points_camera: np.ndarray) -> np.ndarray:
    """Pixel coordinates (u, v) of camera-frame points (OpenCV axes); points must have z > 0."""
    points_camera = np.asarray(points_camera, dtype=np.float64)
    uvw = points_camera @ np.asarray(K, dtype=np.float64).T
    return uvw[..., :2] / uvw[..., 2:3]


def backproject_depth(depth: np.ndarray, K: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points (M, 3) of the pixels with depth > 0 (and mask, if given).

    Returns the points and the flat pixel indices they came from, so per-pixel attributes (rgb,
    segmentation) can be gathered with `attr.reshape(-1, ...)[pixel_index]`. Pixel centres are at
    integer coordinates, matching OpenCV's and SAPIEN's intrinsics.
    """
    depth = np.asarray(depth, dtype=np.float32)
    valid = depth > 0
    if mask is not None:
        valid &= mask
    pixel_index = np.flatnonzero(valid)
    v, u = np.divmod(pixel_index, depth.shape[1])
    z = depth.reshape(-1)[pixel_index]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    points = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1).astype(np.float32)
    return points, pixel_index


def crop_box(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Boolean mask of the points inside the axis-aligned box [low, high] (same frame as the points)."""
    return np.all((points >= low) & (points <= high), axis=-1)


def farthest_point_indices(points: np.ndarray, n: int) -> np.ndarray:
    """Indices of `n` points chosen by farthest-point sampling, padded by repetition if fewer exist.

    Uses open3d's legacy `farthest_point_down_sample` (the tensor API is ~100× slower). open3d returns
    points, not indices, so each point's index rides along in the normals channel, which the sampler
    copies exactly. Starting from point 0 keeps the result deterministic.
    """
    import open3d as o3d

    m = len(points)
    if m == 0:
        raise ValueError("farthest_point_indices: the point cloud is empty (nothing survived the crop)")
    if m <= n:
        return np.resize(np.arange(m), n)
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64))
    carrier = np.zeros((m, 3))
    carrier[:, 0] = np.arange(m)
    cloud.normals = o3d.utility.Vector3dVector(carrier)
    sampled = cloud.farthest_point_down_sample(n)
    return np.asarray(sampled.normals)[:, 0].astype(np.int64)


def segmented_cloud(
    depth: np.ndarray,
    K: np.ndarray,
    segmentation: np.ndarray,
    keep_ids: np.ndarray,
    n_points: int,
    rgb: np.ndarray | None = None,
    target_ids: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The camera-frame cloud of the pixels whose segmentation id is in `keep_ids`, FPS-sampled to n.

    Returns `xyz` (n, 3) float32, plus `rgb` (n, 3) uint8 and `is_target` (n,) bool when asked for.
    This is the workspace crop of the demos: background (table, ground, robot base) is whatever id is
    not kept.
    """
    mask = np.isin(segmentation, keep_ids)
    points, pixel_index = backproject_depth(depth, K, mask)
    chosen = farthest_point_indices(points, n_points)
    out = {"xyz": points[chosen]}
    if rgb is not None:
        out["rgb"] = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)[pixel_index[chosen]]
    if target_ids is not None:
        out["is_target"] = np.isin(segmentation.reshape(-1)[pixel_index[chosen]], target_ids)
    return out
