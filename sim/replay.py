"""Replay a recorded demo's actions in ManiSkill and measure how far the replayed TCP drifts from the recording.

The env is reset with the episode's seed and the recorded `action` rows are sent in order; the TCP pose
before each action (observation t, as in the dataset contract) is compared with the recorded `ee_pose[t]`.
On the CPU backend (physx_cpu) physics is deterministic, so a faithful replay shows near-zero divergence;
a large one means the actions alone do not reproduce the episode (controller state, env settings, seeds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.maniskill_robot import ManiSkillRobot
from sim.pointcloud import quat_multiply

#: position error (m) above which a step counts as diverged
DEFAULT_THRESHOLD_M = 0.005
#: no episode of the demo contract is longer than this (sim.dataset.MAX_DEMO_STEPS)
REPLAY_MAX_STEPS = 300
QUAT_CONJUGATE = np.array([1.0, -1.0, -1.0, -1.0])


@dataclass(frozen=True)
class ReplayReport:
    """Per-step divergence of one replayed episode from its recording."""

    seed: int
    pos_error: np.ndarray  # (T,) metres, replayed vs recorded TCP position before action t
    rot_error: np.ndarray  # (T,) radians, angle of the relative rotation
    threshold_m: float
    recorded_success: bool
    replay_success: bool

    @property
    def first_exceed(self) -> int | None:
        """The first step whose position error exceeds the threshold, or None."""
        over = np.flatnonzero(self.pos_error > self.threshold_m)
        return int(over[0]) if len(over) else None

    @property
    def success_matches(self) -> bool:
        return self.recorded_success == self.replay_success

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures: max/mean errors, first exceeding step, success of both runs."""
        return {
            "seed": self.seed,
            "steps": len(self.pos_error),
            "max_pos_error_m": float(self.pos_error.max()),
            "mean_pos_error_m": float(self.pos_error.mean()),
            "max_rot_error_rad": float(self.rot_error.max()),
            "mean_rot_error_rad": float(self.rot_error.mean()),
            "threshold_m": self.threshold_m,
            "first_exceed_step": self.first_exceed,
            "recorded_success": self.recorded_success,
            "replay_success": self.replay_success,
        }


def rotation_error(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (rad) of the rotation between unit quaternions wxyz `a` and `b` (sign-invariant)."""
    rel = quat_multiply(np.asarray(a, dtype=np.float64) * QUAT_CONJUGATE, np.asarray(b, dtype=np.float64))
    return float(2.0 * np.arctan2(np.linalg.norm(rel[1:]), abs(rel[0])))


def replay_episode(
    arrays: dict[str, np.ndarray],
    task: str,
    *,
    seed: int | None = None,
    threshold_m: float = DEFAULT_THRESHOLD_M,
    robot: ManiSkillRobot | None = None,
) -> ReplayReport:
    """Reset `task` to the episode's seed (or `seed`), send its actions in order, compare TCP poses.

    `robot` reuses a connected state-only robot (creating an env costs ~5 s); by default one is made
    and closed here.
    """
    seed = int(arrays["seed"]) if seed is None else seed
    actions, recorded = arrays["action"], arrays["ee_pose"].astype(np.float64)
    own = robot is None
    if own:
        robot = ManiSkillRobot(task, max_episode_steps=max(REPLAY_MAX_STEPS, len(actions)), camera=None)
        robot.connect()
    elif robot.spec.name != task:
        raise ValueError(f"replay_episode: robot runs {robot.spec.name}, the episode is {task}")
    try:
        robot.reset(seed=seed)
        poses = []
        for action in actions:
            poses.append(robot.ee_pose())
            robot.send_action(action)
        replay_success = robot.is_success()
    finally:
        if own:
            robot.disconnect()
    poses = np.array(poses)
    return ReplayReport(
        seed=seed,
        pos_error=np.linalg.norm(poses[:, :3] - recorded[:, :3], axis=1),
        rot_error=np.array([rotation_error(p[3:], r[3:]) for p, r in zip(poses, recorded)]),
        threshold_m=threshold_m,
        recorded_success=bool(arrays["success"]),
        replay_success=replay_success,
    )
