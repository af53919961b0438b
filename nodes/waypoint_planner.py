"""The geometric waypoint planner: the target's segmented points in, sparse 3D waypoints out.

It "thinks" the way the demos' motion planner did, but from what the camera sees instead of the
simulator's state: the grasp is top-down at the target's centre, closing across the side of the
target's footprint (minimum-area rectangle of its points seen from above) nearest the gripper's
current closing axis; then pre-grasp above it, lift, and the goal (pick), a push line (push) or the
placement above the base cube (stack). Waypoints are emitted in the camera frame with the camera →
base transform, as a VLM planner would give them. A target with too few visible points gets an
invalid plan that says so, and no motion follows from it; when a grounding node (the `target` input)
found no target for the instruction, the plan says that instead.

The target is one rigid object, so its flagged points are narrowed to their largest connected cluster
(points within `cluster_radius_m` of each other) before planning: a learned grounder's mask that spills
onto a neighbouring cube then plans for the cube it mostly covers, not for the space between them. The
2.5 cm default lies between the farthest nearest neighbour of one cube's points in a 1024-point cloud
(1.55 cm measured over seeds 1000–1005) and the narrowest gap between two GroundedPickCube cubes
(8.5 cm apart at the centres less two 2.8 cm half-diagonals: 2.9 cm); exact segmentation is one cluster.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import Mask, PointCloud, RobotState, Waypoints
from pipeline.node import Node
from sim.pointcloud import invert_transform, matrix_to_pose, pose_to_matrix, transform_points

GRIPPER_OPEN, GRIPPER_CLOSED = 1.0, -1.0
APPROACH_OFFSET_M = 0.05  # pre-grasp height above the grasp (the demos' value)
LIFT_HEIGHT_M = 0.08
FINGER_LENGTH_M = 0.025
PUSH_BACKOFF_M = 0.05  # TCP behind the object's centre when the push starts
PUSH_CLEARANCE_M = 0.05
PUSH_CONTACT_M = 0.03
YAW_SEARCH = np.linspace(0.0, np.pi / 2, 91, endpoint=False)  # rectangle orientations tried, 1° apart


class PlannerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: Literal["pick", "push", "stack"] = "pick"
    min_target_points: int = Field(8, ge=1, description="fewer visible target points than this: no plan")
    replan_each_frame: bool = False
    cluster_radius_m: float | None = Field(0.025, gt=0, description="keep the largest cluster of target points "
                                                                   "linked within this distance (None: all points)")


def footprint(points_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) and the two in-plane axes (2, 2) of the minimum-area rectangle around the points."""
    xy = points_base[:, :2]
    best = None
    for angle in YAW_SEARCH:
        axes = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])  # rows: u, v
        local = xy @ axes.T  # (N, 2)
        low, high = local.min(axis=0), local.max(axis=0)
        area = float(np.prod(high - low))
        if best is None or area < best[0]:
            best = (area, axes, (low + high) / 2)
    _, axes, centre_local = best
    return centre_local @ axes, axes


def top_down_grasp(points_base: np.ndarray, tcp_closing: np.ndarray) -> np.ndarray:
    """4×4 TCP pose (base frame) for a top-down grasp of the object the points belong to."""
    centre_xy, axes = footprint(points_base)
    top = float(points_base[:, 2].max())
    z = max(top / 2.0, top - FINGER_LENGTH_M)  # the centre of a box standing on the table, or finger depth
    dots = axes @ tcp_closing[:2]
    axis = axes[int(np.argmax(np.abs(dots)))]
    closing = np.array([*(axis * np.sign(dots[np.argmax(np.abs(dots))] or 1.0)), 0.0])
    approaching = np.array([0.0, 0.0, -1.0])
    T = np.eye(4)
    T[:3, :3] = np.stack([np.cross(closing, approaching), closing, approaching], axis=1)
    T[:3, 3] = [centre_xy[0], centre_xy[1], z]
    return T


def _row(T: np.ndarray, gripper: float) -> np.ndarray:
    return np.concatenate([matrix_to_pose(T), [gripper]]).astype(np.float32)


def _lifted(T: np.ndarray, dz: float) -> np.ndarray:
    out = T.copy()
    out[2, 3] += dz
    return out


def _moved_to(T: np.ndarray, position: np.ndarray) -> np.ndarray:
    out = T.copy()
    out[:3, 3] = position
    return out


def plan_waypoints(task: str, target_base: np.ndarray, ee_pose: np.ndarray, goal_pos: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(K, 8) base-frame waypoints (xyz, quat wxyz, gripper) and their names, for `task`."""
    tcp = pose_to_matrix(ee_pose)
    if task == "push":
        centre = np.array([*footprint(target_base)[0], target_base[:, 2].max() / 2.0])
        start = _moved_to(tcp, centre + [-PUSH_BACKOFF_M, 0.0, 0.0])
        end = _moved_to(tcp, np.array([goal_pos[0] - PUSH_CONTACT_M, goal_pos[1], start[2, 3]]))
        rows = [_row(_lifted(start, PUSH_CLEARANCE_M), GRIPPER_CLOSED), _row(start, GRIPPER_CLOSED), _row(end, GRIPPER_CLOSED)]
        return np.stack(rows), ["pre_push", "push_start", "push_end"]
    grasp = top_down_grasp(target_base, tcp[:3, 1])
    lift = _lifted(grasp, LIFT_HEIGHT_M)
    if task == "stack":  # carry the held cube by the offset that puts its centre on the goal
        final = _moved_to(lift, lift[:3, 3] + (goal_pos - grasp[:3, 3]))
        names, final_gripper = ["pre_grasp", "grasp", "lift", "place"], GRIPPER_OPEN
    else:
        final = _moved_to(grasp, goal_pos)
        names, final_gripper = ["pre_grasp", "grasp", "lift", "goal"], GRIPPER_CLOSED
    rows = [_row(_lifted(grasp, APPROACH_OFFSET_M), GRIPPER_OPEN), _row(grasp, GRIPPER_CLOSED),
            _row(lift, GRIPPER_CLOSED), _row(final, final_gripper)]
    return np.stack(rows), names


def largest_cluster(points: np.ndarray, radius_m: float) -> np.ndarray:
    """(N, 3) points → the (M, 3) points of their largest single-linkage cluster at `radius_m` (ties: the
    cluster of the earliest point)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return points
    pairs = cKDTree(points).query_pairs(radius_m, output_type="ndarray")  # (P, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(points), len(points)))
    _, labels = connected_components(graph, directed=False)
    return points[labels == np.argmax(np.bincount(labels))]


class GeometricPlanner(Node):
    Params = PlannerParams
    inputs = {"cloud": PointCloud, "state": RobotState, "target": Mask}
    outputs = {"waypoints": Waypoints}

    def setup(self) -> None:
        self.state: RobotState | None = None
        self.planned_episode = -1
        self.absent: tuple[int, str] | None = None  # (episode, why) while the grounding finds no target

    def on_state(self, msg: RobotState) -> None:
        self.state = msg

    def on_target(self, msg: Mask) -> None:
        self.absent = (msg.episode, msg.reason) if len(msg.masks) == 0 else None

    def on_cloud(self, msg: PointCloud) -> None:
        state = self.state
        if state is None or state.episode != msg.episode:
            self.count("clouds_without_state")
            return
        if self.planned_episode == msg.episode and not self.params.replan_each_frame:
            return
        if msg.T_base_frame is None or msg.is_target is None:
            self._invalid(msg, "the cloud has no camera pose or no target segmentation")
            return
        target = msg.xyz[msg.is_target]
        target = target[np.all(np.isfinite(target), axis=1)]
        if self.params.cluster_radius_m is not None:
            kept = largest_cluster(target, self.params.cluster_radius_m)
            if len(kept) < len(target):
                self.count("target_points_off_cluster", len(target) - len(kept))
            target = kept
        if len(target) < self.params.min_target_points:
            grounded = self.absent is not None and self.absent[0] == msg.episode
            self._invalid(msg, f"grounding: {self.absent[1]}" if grounded else
                          f"target not visible: {len(target)} points (need {self.params.min_target_points})")
            return
        if state.goal_pos is None or not np.all(np.isfinite(state.goal_pos)):
            self._invalid(msg, "no goal position in the robot state")
            return
        rows_base, names = plan_waypoints(self.params.task, transform_points(msg.T_base_frame, target),
                                          np.asarray(state.ee_pose, np.float64), np.asarray(state.goal_pos, np.float64))
        T_camera_base = invert_transform(msg.T_base_frame)
        rows_camera = np.stack([_row(T_camera_base @ pose_to_matrix(r[:7]), r[7]) for r in rows_base])
        self.planned_episode = msg.episode
        self.emit("waypoints", Waypoints(stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, poses=rows_camera, names=names,
                                         T_base_frame=msg.T_base_frame, episode=msg.episode))

    def _invalid(self, msg: PointCloud, reason: str) -> None:
        self.count("invalid_plans")
        self.log.warning("episode %d step %d: no plan: %s", msg.episode, msg.step, reason)
        self.emit("waypoints", Waypoints(stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, poses=np.zeros((0, 8), np.float32),
                                         valid=False, reason=reason, episode=msg.episode))
