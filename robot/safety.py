"""Safety limits for commanding an arm with end-effector delta actions, and the one function that
applies them. The controller calls it for every command; robot bridges call it again on whatever a
client sends. A graph can narrow the limits (`SafetyLimits.narrowed`) but never widen them past the
hard limits of the robot, and nothing can turn them off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: pd_ee_delta_pose scales a normalised action of 1.0 to this many metres / radians per step
ACTION_SCALE_M = 0.1
ACTION_SCALE_RAD = 0.1
N_ACTION = 7  # dx dy dz drx dry drz gripper
GRIPPER_INDEX = 6


@dataclass(frozen=True)
class SafetyLimits:
    """Limits in the robot base frame. Defaults are the Panda's table-top workspace."""

    workspace_low: tuple[float, float, float] = (-0.10, -0.45, 0.005)
    workspace_high: tuple[float, float, float] = (0.80, 0.45, 0.70)
    max_step_m: float = 0.05  # translation per control step
    max_step_rad: float = 0.10  # rotation per control step
    gripper_low: float = -1.0
    gripper_high: float = 1.0

    def narrowed(self, **changes: float | tuple[float, float, float]) -> "SafetyLimits":
        """A copy with tighter limits; a looser value than this one raises ValueError."""
        narrowed = {**self.__dict__, **changes}
        for key, value in changes.items():
            if key not in self.__dict__:
                raise ValueError(f"unknown safety limit {key!r}")
            mine = np.asarray(getattr(self, key))
            lower_bound = key in ("workspace_low", "gripper_low")
            if np.any(np.asarray(value) < mine) if lower_bound else np.any(np.asarray(value) > mine):
                raise ValueError(f"safety limit {key}={value} is looser than the robot's hard limit {mine}")
        return SafetyLimits(**narrowed)


HARD_LIMITS = SafetyLimits()


@dataclass
class SafetyResult:
    action: np.ndarray  # the action to execute (a hold if rejected)
    rejected: str = ""  # why the whole action was replaced by a hold
    clamps: list[str] = field(default_factory=list)  # which limits changed it


def hold_action(gripper: float) -> np.ndarray:
    """Stay where you are, keep the gripper as it is."""
    action = np.zeros(N_ACTION, np.float32)
    action[GRIPPER_INDEX] = gripper
    return action


def enforce(action: np.ndarray, ee_position: np.ndarray, limits: SafetyLimits, hold_gripper: float) -> SafetyResult:
    """`action` made safe for an arm whose end effector is at `ee_position` (base frame)."""
    action = np.asarray(action, dtype=np.float64)
    if action.shape != (N_ACTION,):
        return SafetyResult(hold_action(hold_gripper), rejected=f"action shape {action.shape}, expected ({N_ACTION},)")
    if not np.all(np.isfinite(action)):
        return SafetyResult(hold_action(hold_gripper), rejected="non-finite action (NaN or inf)")
    if not np.all(np.isfinite(ee_position)):
        return SafetyResult(hold_action(hold_gripper), rejected="non-finite end-effector position")
    clamps: list[str] = []
    step = action[:3] * ACTION_SCALE_M
    target = ee_position + step
    inside = np.clip(target, limits.workspace_low, limits.workspace_high)
    if not np.allclose(inside, target):
        clamps.append("workspace")  # stop at the wall; from outside (pushed there), only back in
        step = inside - ee_position
    norm = float(np.linalg.norm(step))
    if norm > limits.max_step_m:
        step *= limits.max_step_m / norm
        clamps.append("max_step_m")
    rotation = action[3:6] * ACTION_SCALE_RAD
    angle = float(np.linalg.norm(rotation))
    if angle > limits.max_step_rad:
        rotation *= limits.max_step_rad / angle
        clamps.append("max_step_rad")
    gripper = float(np.clip(action[GRIPPER_INDEX], limits.gripper_low, limits.gripper_high))
    if gripper != action[GRIPPER_INDEX]:
        clamps.append("gripper")
    safe = np.concatenate([step / ACTION_SCALE_M, rotation / ACTION_SCALE_RAD, [gripper]]).astype(np.float32)
    return SafetyResult(safe, clamps=clamps)
