"""A scripted stand-in for the action expert (a test double): drives the TCP straight at each waypoint
in turn. With it, a closed-loop test checks the loop itself — robot node, point clouds, planner,
controller, safety — independently of how well a learned expert is trained."""
from __future__ import annotations

import numpy as np

from pipeline.messages import ActionChunk, PointCloud, RobotState, Waypoints
from pipeline.node import Node
from sim.maniskill_robot import matrix_to_euler_xyz
from sim.pointcloud import pose_to_matrix, quat_to_matrix

POS_SCALE, ROT_SCALE = 0.1, -0.1  # pd_ee_delta_pose: metres and radians per unit action (rotation sign as ManiSkill 3.0.1)
REACHED_M = 0.006
GRIPPER_WAIT_STEPS = 6


class WaypointFollower(Node):
    inputs = {"cloud": PointCloud, "state": RobotState, "waypoints": Waypoints}
    outputs = {"actions": ActionChunk}

    def setup(self) -> None:
        self.episode, self.waypoints, self.index, self.wait, self.gripper = -1, None, 0, 0, 1.0

    def on_cloud(self, msg: PointCloud) -> None:
        pass

    def on_waypoints(self, msg: Waypoints) -> None:
        if msg.valid:
            self.waypoints = np.stack([pose_to_matrix(r[:7]) for r in msg.poses])
            self.waypoints = np.einsum("ij,kjl->kil", msg.T_base_frame, self.waypoints)
            self.commands, self.index, self.wait, self.gripper = msg.poses[:, 7], 0, 0, 1.0

    def on_state(self, msg: RobotState) -> None:
        if msg.episode != self.episode:
            self.episode, self.waypoints = msg.episode, None
        if self.waypoints is None or msg.done:
            return
        target = self.waypoints[min(self.index, len(self.waypoints) - 1)]
        current = msg.ee_pose.astype(np.float64)
        error = target[:3, 3] - current[:3]
        if np.linalg.norm(error) < REACHED_M and self.index < len(self.waypoints):
            self.gripper = float(self.commands[self.index])
            self.wait, self.index = GRIPPER_WAIT_STEPS, self.index + 1
        drot = matrix_to_euler_xyz(target[:3, :3] @ quat_to_matrix(current[3:7]).T) / ROT_SCALE
        action = np.concatenate([np.clip(error / POS_SCALE, -1, 1), np.clip(drot, -1, 1), [self.gripper]])
        if self.wait > 0:
            self.wait -= 1
            action[:6] = 0.0
        self.emit("actions", ActionChunk(actions=action[None].astype(np.float32), stamps_ns=np.array([msg.stamp_ns]),
                                         start_step=msg.step, episode=msg.episode))
