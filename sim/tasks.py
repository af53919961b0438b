"""The ManiSkill tasks groundloop supports, and what each one's target and goal are.

One table of facts per task, so the robot wrapper, the demo generator and the evaluator agree on
which object is "the target" (for `cloud_is_target`), where the goal is, and what the camera should
crop away. Goal functions take the unwrapped ManiSkill env and return a world-frame position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

PICK_CUBE = "PickCube-v1"
PUSH_CUBE = "PushCube-v1"
STACK_CUBE = "StackCube-v1"
GROUNDED_PICK_CUBE = "GroundedPickCube-v1"  # defined in sim/grounded_pick.py

#: segmentation names removed by the workspace crop: scene, robot base, flat goal markers
BACKGROUND_NAMES: tuple[str, ...] = ("ground", "table-workspace", "panda_link0", "goal_region", "goal_site")


def _first(tensor: Any) -> np.ndarray:
    """Row 0 of a batched ManiSkill tensor as float64 numpy (we run one env per process)."""
    return tensor[0].detach().cpu().numpy().astype(np.float64)


def _pick_goal(env: Any) -> np.ndarray:
    """PickCube: the goal site the cube's centre must reach."""
    return _first(env.goal_site.pose.p)


def _push_goal(env: Any) -> np.ndarray:
    """PushCube: the centre of the target ring, at the height of the cube's centre on the table."""
    goal = _first(env.goal_region.pose.p)
    goal[2] = float(env.cube_half_size)
    return goal


def _stack_goal(env: Any) -> np.ndarray:
    """StackCube: where cubeA's centre must end, one cube height above cubeB's centre."""
    return _first(env.cubeB.pose.p) + np.array([0.0, 0.0, 2 * float(env.cube_half_size[2])])


@dataclass(frozen=True)
class TaskSpec:
    """What a task manipulates and where to: the facts the rest of sim/ needs about it."""

    name: str
    target_actor: str  # the object the expert moves; its points are `cloud_is_target`
    goal_fn: Callable[[Any], np.ndarray]  # unwrapped env -> world-frame goal position of the target
    env_module: str | None = None  # a module whose import registers the task (None: one of ManiSkill's own)
    has_instruction: bool = False  # the env says in words which object is the target (`env.instruction`)

    def goal_world(self, env: Any) -> np.ndarray:
        """World-frame goal position (3,) for the env's current episode."""
        return self.goal_fn(env)

    def target_pose_world(self, env: Any) -> np.ndarray:
        """World-frame pose `xyz + quat wxyz` of the target object."""
        return _first(getattr(env, self.target_attribute).pose.raw_pose)

    @property
    def target_attribute(self) -> str:
        """The env attribute holding the target actor (PushCube calls its cube `obj`)."""
        return "obj" if self.name == PUSH_CUBE else self.target_actor


TASKS: dict[str, TaskSpec] = {
    PICK_CUBE: TaskSpec(PICK_CUBE, target_actor="cube", goal_fn=_pick_goal),
    PUSH_CUBE: TaskSpec(PUSH_CUBE, target_actor="cube", goal_fn=_push_goal),
    STACK_CUBE: TaskSpec(STACK_CUBE, target_actor="cubeA", goal_fn=_stack_goal),
    # the env points its `cube` at the instructed cube each episode; the pixels are named by colour
    GROUNDED_PICK_CUBE: TaskSpec(GROUNDED_PICK_CUBE, target_actor="cube", goal_fn=_pick_goal,
                                 env_module="sim.grounded_pick", has_instruction=True),
}


class UnsupportedTaskError(ValueError):
    """A task name groundloop has no spec (targets, goal, expert) for."""


def get_task(name: str) -> TaskSpec:
    """The spec of a supported task; an unknown name is an error that lists the supported ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnsupportedTaskError(
            f"unsupported ManiSkill task {name!r}; supported tasks: {', '.join(sorted(TASKS))}"
        ) from None
