"""Waypoint guidance for the action expert: sparse waypoints → dense B-spline path → a pose relative to the ee.

Why relative: the expert acts in pd_ee_delta_pose (translation deltas along the base axes, rotation
deltas about base-aligned axes at the ee), so a guidance expressed as "where to go from here" maps
almost directly onto the action; the earlier prototype, conditioned on absolute goal positions,
grasped but failed to carry the cube.

The same `GuidanceTracker` labels the demos at training time (replayed over the recorded ee poses)
and serves inference (fed the live ee pose, waypoints converted from the camera frame), so the
guidance the policy sees at run time is computed exactly as during training.

Guidance vector (GUIDANCE_DIM = 10), all in the robot base axes, metres / radians:
    [0:3] look-ahead point on the dense path − ee position
    [3:6] current target waypoint − ee position
    [6:9] rotation vector of R_target · R_eeᵀ
    [9]   target waypoint gripper command (+1 open, −1 close)
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.interpolate import make_interp_spline
from scipy.spatial.transform import Rotation

from nodes.action_expert.config import GUIDANCE_DIM

_DUPLICATE_EPS_M = 1e-4  # consecutive path points closer than this are merged (the spline needs distinct knots)


def rotation_from_wxyz(quat_wxyz: np.ndarray) -> Rotation:
    """scipy wants xyzw; our data is wxyz."""
    quat_wxyz = np.asarray(quat_wxyz, dtype=np.float64)
    return Rotation.from_quat(quat_wxyz[..., [1, 2, 3, 0]])


def waypoints_camera_to_base(waypoints_camera: np.ndarray, T_base_camera: np.ndarray) -> np.ndarray:
    """(K, 8) xyz + quat wxyz + gripper in the camera frame → the same in the robot base frame."""
    waypoints_camera = np.asarray(waypoints_camera, dtype=np.float64)
    T = np.asarray(T_base_camera, dtype=np.float64)
    xyz_base = waypoints_camera[:, :3] @ T[:3, :3].T + T[:3, 3]  # (K, 3)
    rot_base = Rotation.from_matrix(T[:3, :3]) * rotation_from_wxyz(waypoints_camera[:, 3:7])
    quat_xyzw = rot_base.as_quat()  # (K, 4)
    quat_wxyz = quat_xyzw[:, [3, 0, 1, 2]]
    return np.concatenate([xyz_base, quat_wxyz, waypoints_camera[:, 7:8]], axis=1)


class DensePath:
    """An interpolating B-spline through the start position and the waypoint positions, resampled by arc length.

    `degree` 1 follows straight segments (our motion-planning demos move in screw motions: a cubic
    through pre-grasp → grasp → lift dips below the grasp, up to 8 cm off the demonstrated path, while
    degree 1 stays within 3 mm on average); 3 gives the smooth path of a free-form (VLM) plan.
    """

    def __init__(self, waypoint_xyz: np.ndarray, start_xyz: np.ndarray, resolution_m: float, degree: int) -> None:
        points = np.concatenate([np.asarray(start_xyz, np.float64)[None], np.asarray(waypoint_xyz, np.float64)])
        # merge coincident consecutive points, remembering which distinct knot each waypoint lands on
        knots = [points[0]]
        knot_of_point = [0]
        for p in points[1:]:
            if np.linalg.norm(p - knots[-1]) > _DUPLICATE_EPS_M:
                knots.append(p)
            knot_of_point.append(len(knots) - 1)
        knots_arr = np.stack(knots)  # (U, 3)

        if len(knots_arr) == 1:
            self.xyz = knots_arr.copy()  # (1, 3)
            self.arc = np.zeros(1)
            self.waypoint_arc = np.zeros(len(waypoint_xyz))
            return

        chord = np.linalg.norm(np.diff(knots_arr, axis=0), axis=1)
        u = np.concatenate([[0.0], np.cumsum(chord)])  # chord-length parameterisation, (U,)
        spline = make_interp_spline(u, knots_arr, k=min(degree, len(knots_arr) - 1))
        # knots are always samples, so corners (degree 1) are kept exactly
        n_fine = max(8, int(np.ceil(u[-1] / resolution_m)) * 8)
        u_fine = np.union1d(np.linspace(0.0, u[-1], n_fine), u)
        xyz_fine = spline(u_fine)  # (F, 3)
        arc_fine = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xyz_fine, axis=0), axis=1))])
        knot_arc = np.interp(u, u_fine, arc_fine)  # (U,)

        n_dense = max(2, int(np.ceil(arc_fine[-1] / resolution_m)) + 1)
        self.arc = np.union1d(np.linspace(0.0, arc_fine[-1], n_dense), knot_arc)  # (M,)
        self.xyz = np.stack([np.interp(self.arc, arc_fine, xyz_fine[:, d]) for d in range(3)], axis=1)  # (M, 3)
        self.waypoint_arc = knot_arc[np.asarray(knot_of_point[1:])]  # (K,)

    def point_at(self, arc: float) -> np.ndarray:
        """Position at arc length `arc` (clipped to the path)."""
        if len(self.arc) == 1:
            return self.xyz[0].copy()
        return np.array([np.interp(arc, self.arc, self.xyz[:, d]) for d in range(3)])

    def segment(self, target_index: int) -> tuple[float, float]:
        """Arc-length span of the segment that ends at waypoint `target_index`."""
        seg_start = self.waypoint_arc[target_index - 1] if target_index > 0 else 0.0
        return seg_start, self.waypoint_arc[target_index]

    def project(self, ee_xyz: np.ndarray, target_index: int) -> float:
        """Arc length of the ee's nearest point on the segment that ends at waypoint `target_index`.

        Restricting the projection to the current segment keeps it unambiguous where the path doubles
        back (pre-grasp → grasp → lift).
        """
        seg_start, seg_end = self.segment(target_index)
        candidates = np.flatnonzero((self.arc >= seg_start - 1e-9) & (self.arc <= seg_end + 1e-9))
        if len(candidates) < 2:
            return seg_end
        a, b = self.xyz[candidates[:-1]], self.xyz[candidates[1:]]  # (S, 3) consecutive dense samples
        ab = b - a
        t = np.clip(np.einsum("sd,sd->s", ee_xyz - a, ab) / np.maximum(np.einsum("sd,sd->s", ab, ab), 1e-12), 0.0, 1.0)
        nearest = np.argmin(np.linalg.norm(a + t[:, None] * ab - ee_xyz, axis=1))
        arc_a, arc_b = self.arc[candidates[nearest]], self.arc[candidates[nearest + 1]]
        return arc_a + t[nearest] * (arc_b - arc_a)

    def lookahead_point(self, ee_xyz: np.ndarray, target_index: int, lookahead_m: float) -> np.ndarray:
        """Project the ee onto the current segment, step `lookahead_m` along it; clipping at the target
        waypoint makes the guidance stop there, where the gripper must act."""
        _, seg_end = self.segment(target_index)
        return self.point_at(min(self.project(ee_xyz, target_index) + lookahead_m, seg_end))


def guidance_features(ee_pose: np.ndarray, lookahead_xyz: np.ndarray, target_waypoint: np.ndarray) -> np.ndarray:
    """The (GUIDANCE_DIM,) vector for one step: look-ahead point and target waypoint relative to the ee pose."""
    ee_pose = np.asarray(ee_pose, dtype=np.float64)
    target_waypoint = np.asarray(target_waypoint, dtype=np.float64)
    rel_rot = rotation_from_wxyz(target_waypoint[3:7]) * rotation_from_wxyz(ee_pose[3:7]).inv()
    out = np.empty(GUIDANCE_DIM, dtype=np.float32)
    out[0:3] = np.asarray(lookahead_xyz) - ee_pose[:3]
    out[3:6] = target_waypoint[:3] - ee_pose[:3]
    out[6:9] = rel_rot.as_rotvec()
    out[9] = target_waypoint[7]
    return out


class GuidanceTracker:
    """Follows one plan: which waypoint is next, and the guidance vector for the current ee pose.

    Progress only moves forward, past a waypoint once the ee
    - comes within `reach_tolerance_m` of it (how the motion-planned demos, precise to 4 mm, pass), or
    - has gone past it along the path (its projection on the segment is the waypoint itself) while
      within `pass_radius_m` of it: a learned policy that misses a waypoint by a centimetre and goes
      on must not be sent back to it, or
    - has stalled within `pass_radius_m` of it: moved less than `stall_motion_m` over the last
      `stall_steps` steps (a cube or the table can stop the gripper short of a grasp pose).
    Labelling the demos, the third rule never fires and the second rarely (28 of 200 PickCube demos
    stop ~8 mm beside a pre-grasp and are relabelled a few steps early), so the labels barely change.
    The last waypoint stays the target for the rest of the episode.
    """

    def __init__(
        self,
        waypoints_base: np.ndarray,
        start_pose: np.ndarray,
        *,
        lookahead_m: float,
        reach_tolerance_m: float,
        resolution_m: float,
        spline_degree: int,
        pass_radius_m: float = 0.02,
        stall_steps: int = 10,
        stall_motion_m: float = 0.003,
    ) -> None:
        self.lookahead_m = lookahead_m
        self.reach_tolerance_m = reach_tolerance_m
        self.resolution_m = resolution_m
        self.spline_degree = spline_degree
        self.pass_radius_m = pass_radius_m
        self.stall_steps = stall_steps
        self.stall_motion_m = stall_motion_m
        self._set_plan(waypoints_base, start_pose)
        self.target_index = 0
        self._recent_xyz: list[np.ndarray] = []  # ee positions since the target last changed

    def _set_plan(self, waypoints_base: np.ndarray, start_pose: np.ndarray) -> None:
        waypoints_base = np.asarray(waypoints_base, dtype=np.float64)
        if waypoints_base.ndim != 2 or waypoints_base.shape[1] != 8 or len(waypoints_base) == 0:
            raise ValueError(f"waypoints must have shape (K>=1, 8), got {waypoints_base.shape}")
        self.waypoints = waypoints_base  # (K, 8)
        self.start_pose = np.asarray(start_pose, dtype=np.float64)
        self.path = DensePath(waypoints_base[:, :3], self.start_pose[:3], self.resolution_m, self.spline_degree)

    def replace_waypoints(self, waypoints_base: np.ndarray, start_pose: np.ndarray) -> None:
        """A re-sent plan with as many waypoints keeps the progress (and the path's start); another restarts.

        Planners re-send (and refine) the same plan every frame; restarting it would send the arm back
        to the first waypoint.
        """
        if np.shape(waypoints_base) == self.waypoints.shape:
            self._set_plan(waypoints_base, self.start_pose)
        else:
            self._set_plan(waypoints_base, start_pose)
            self.target_index = 0
            self._recent_xyz = []

    def _passed_target(self, ee_xyz: np.ndarray) -> bool:
        distance = np.linalg.norm(self.waypoints[self.target_index, :3] - ee_xyz)
        if distance < self.reach_tolerance_m:
            return True
        if distance >= self.pass_radius_m:
            return False
        _, seg_end = self.path.segment(self.target_index)
        if self.path.project(ee_xyz, self.target_index) >= seg_end - 1e-6:
            return True
        recent = self._recent_xyz[-self.stall_steps :]
        return len(recent) == self.stall_steps and np.linalg.norm(np.ptp(np.stack(recent), axis=0)) < self.stall_motion_m

    def update(self, ee_pose: np.ndarray) -> np.ndarray:
        """Advance past reached waypoints, then return the (GUIDANCE_DIM,) guidance for `ee_pose`."""
        ee_xyz = np.asarray(ee_pose, dtype=np.float64)[:3]
        self._recent_xyz.append(ee_xyz)
        last = len(self.waypoints) - 1
        while self.target_index < last and self._passed_target(ee_xyz):
            self.target_index += 1
            self._recent_xyz = [ee_xyz]
        del self._recent_xyz[: -self.stall_steps]
        look = self.path.lookahead_point(ee_xyz, self.target_index, self.lookahead_m)
        return guidance_features(ee_pose, look, self.waypoints[self.target_index])


def episode_guidance(
    ee_pose: np.ndarray,
    waypoints_base: np.ndarray,
    *,
    lookahead_m: float,
    reach_tolerance_m: float,
    resolution_m: float,
    spline_degree: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Training labels: replay a tracker over a demo's (T, 7) ee poses → (T, GUIDANCE_DIM) guidance, (T,) target index."""
    tracker = GuidanceTracker(
        waypoints_base,
        ee_pose[0],
        lookahead_m=lookahead_m,
        reach_tolerance_m=reach_tolerance_m,
        resolution_m=resolution_m,
        spline_degree=spline_degree,
    )
    guidance = np.empty((len(ee_pose), GUIDANCE_DIM), dtype=np.float32)
    target = np.empty(len(ee_pose), dtype=np.int64)
    for t, pose in enumerate(ee_pose):
        guidance[t] = tracker.update(pose)
        target[t] = tracker.target_index
    return guidance, target


def perturb_guidance(guidance_normalized: torch.Tensor, noise_scale: float) -> torch.Tensor:
    """Training-time Gaussian noise on the normalized guidance (paper: scale 0.1), so the expert
    tolerates imprecise waypoints from a VLM planner at run time."""
    if noise_scale <= 0:
        return guidance_normalized
    return guidance_normalized + noise_scale * torch.randn_like(guidance_normalized)
