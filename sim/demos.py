"""Motion-planning experts that act in `pd_ee_delta_pose`, so demos need no conversion afterwards.

Each task is a short script of key poses (pre-grasp, grasp, lift, goal, ...) written like ManiSkill's
own mplib solutions. Every segment is planned with mplib from the robot's *current* joint state
(screw motion, RRT-Connect as fallback) into a joint path timed at the control rate; the path is then
executed by closed-loop tracking: at each control step the planned joint state's TCP pose (mplib's
forward kinematics, base frame) becomes the target of one ee-delta action. That exact action is what
a recorder sees with the observation it was computed from, and the key poses become the demo's
sparse waypoints. Replaying joint-space demos through ManiSkill's converter costs ~15 s a demo; this
costs nothing beyond the rollout itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from robot.interface import RobotObservation
from sim.maniskill_robot import GRIPPER_CLOSED, GRIPPER_OPEN, ManiSkillRobot
from sim.tasks import GROUNDED_PICK_CUBE, PICK_CUBE, PUSH_CUBE, STACK_CUBE

#: called with each observation and the action then executed
StepCallback = Callable[[RobotObservation, np.ndarray], None]

# Waypoint names (the dataset's `waypoint_names`)
PRE_GRASP, GRASP, LIFT, GOAL = "pre_grasp", "grasp", "lift", "goal"
PRE_PUSH, PUSH_START, PUSH_END = "pre_push", "push_start", "push_end"
PLACE = "place"

FINGER_LENGTH = 0.025  # ManiSkill's Panda solutions grasp this deep
APPROACH_OFFSET = 0.05  # pre-grasp stands off this far along the approach axis
LIFT_HEIGHT = 0.08
PUSH_BACKOFF = 0.05  # TCP behind the cube's centre at the push start (2 cm short of contact)
PUSH_CLEARANCE = 0.05  # pre-push height above the push start
PUSH_CONTACT = 0.03  # TCP to cube centre while pushing (half the cube + half a fingertip)
#: how far short of the ring's centre the cube may stop, best first: the far end of the goal range
#: is beyond the Panda's top-down reach at table height, so we push as deep as a straight path allows
PUSH_SHORTFALLS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09)
GRIPPER_STEPS = 6  # control steps the gripper gets to open/close, as in ManiSkill's solutions
POS_TOLERANCE = 0.004  # m: a key pose counts as reached within this...
ROT_TOLERANCE = 0.03  # rad: ...and this
#: mplib's screw paths are first-order and end up to ~1 cm short even when the target is reachable
#: (tracking then closes the gap); a path ending farther off has stalled against the reach limit
PLAN_POS_TOLERANCE = 0.015
PLAN_ROT_TOLERANCE = 0.05
#: a stalling screw path also shows as a very long one (hundreds of steps); real segments take < 70
MAX_PLAN_STEPS = 120
MAX_SETTLE_STEPS = 10  # extra steps to converge on a key pose after its path ends
MAX_FINAL_STEPS = 20  # steps to wait for the success condition (e.g. "robot static") at the end

PLAN_OK, PLAN_FAILED, TASK_FAILED, TIMED_OUT = "success", "plan_failed", "task_failed", "timeout"


@dataclass
class Segment:
    """Move the TCP to `pose` (world), then set the gripper to `gripper` (1 open, -1 closed)."""

    name: str
    pose: Any  # sapien.Pose, world frame
    gripper: float


@dataclass
class Waypoint:
    """A key pose as reached in an episode: base-frame pose, gripper command, and the step it was reached."""

    name: str
    pose_base: np.ndarray  # (7,) xyz + quat wxyz
    gripper: float
    step: int


@dataclass
class ExpertResult:
    """Outcome of one expert episode."""

    seed: int
    status: str  # PLAN_OK, PLAN_FAILED (no plan for a key pose), TASK_FAILED, TIMED_OUT
    n_steps: int
    waypoints: list[Waypoint] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.status == PLAN_OK


class _PlanFailure(Exception):
    """mplib found no path to a key pose."""


class MotionPlanningExpert:
    """mplib planning + ee-delta tracking for the supported tasks, on one connected ManiSkillRobot."""

    def __init__(self, robot: ManiSkillRobot) -> None:
        from mani_skill.examples.motionplanning.panda.motionplanner import PandaArmMotionPlanningSolver

        self.robot = robot
        env = robot.env
        # ManiSkill's solver configures mplib for this robot (URDF, SRDF, base pose, 0.9× limits);
        # we use its planner and execute the plans ourselves in ee-delta mode.
        solver = PandaArmMotionPlanningSolver(
            env, vis=False, print_env_info=False, base_pose=env.agent.robot.pose,
            visualize_target_grasp_pose=False,
        )
        self.planner = solver.planner
        self._ee_index = self.planner.link_name_2_idx[self.planner.move_group]
        self._script = {PICK_CUBE: _pick_cube, GROUNDED_PICK_CUBE: _pick_cube, PUSH_CUBE: _push_cube,
                        STACK_CUBE: _stack_cube}[robot.spec.name]  # grounded: env.cube is the named target
        self._on_step: StepCallback | None = None

    # ------------------------------------------------------------------ episode
    def run(self, seed: int, on_step: StepCallback | None = None) -> ExpertResult:
        """Reset to `seed` and execute the task's script; `on_step` sees every (observation, action)."""
        robot = self.robot
        robot.reset(seed=seed)
        self._on_step = on_step
        waypoints: list[Waypoint] = []
        status = PLAN_OK
        script = self._script(robot.env, self._can_reach)
        gripper = GRIPPER_CLOSED if robot.spec.name == PUSH_CUBE else GRIPPER_OPEN
        try:
            for seg in script:
                target_world = np.concatenate([seg.pose.p, seg.pose.q])
                target_base = robot.world_to_base_pose(target_world)
                self._move(target_world, target_base, gripper)
                waypoints.append(Waypoint(seg.name, target_base, seg.gripper, self._steps()))
                if seg.gripper != gripper:
                    gripper = seg.gripper
                    for _ in range(GRIPPER_STEPS):
                        self._act(target_base, gripper)
            # at least one step after the last key pose, so every waypoint_step indexes a recorded step
            for _ in range(MAX_FINAL_STEPS):
                self._act(waypoints[-1].pose_base, gripper)
                if robot.is_success():
                    break
            status = PLAN_OK if robot.is_success() else TASK_FAILED
        except _PlanFailure:
            status = PLAN_FAILED
        except _OutOfSteps:
            status = TIMED_OUT
        finally:
            self._on_step = None
        return ExpertResult(seed=seed, status=status, n_steps=self._steps(), waypoints=waypoints)

    def _steps(self) -> int:
        return int(self.robot.env.elapsed_steps[0])

    # ------------------------------------------------------------------ planning
    def _qpos(self) -> np.ndarray:
        return self.robot.env.agent.robot.get_qpos()[0].cpu().numpy().astype(np.float64)

    def _plan(self, target_world: np.ndarray, screw_only: bool = False) -> dict[str, Any] | None:
        """A timed joint path to a world-frame TCP pose: screw motion, else RRT-Connect.

        mplib's screw planner reports success for paths that stall short of an out-of-reach target
        (it wanders in the null space), so a path counts only if it ends near the target in
        a plausible number of steps.
        """
        dt = self.robot.env.control_timestep
        target_base = self.robot.world_to_base_pose(target_world)
        attempts = [lambda: self.planner.plan_screw(target_world, self._qpos(), time_step=dt)]
        if not screw_only:
            attempts.append(
                lambda: self.planner.plan_qpos_to_pose(target_world, self._qpos(), time_step=dt, wrt_world=True)
            )
        for attempt in attempts:
            result = attempt()
            if (result["status"] == "Success" and len(result["position"]) <= MAX_PLAN_STEPS
                    and _close(self._fk(result["position"][-1]), target_base, PLAN_POS_TOLERANCE, PLAN_ROT_TOLERANCE)):
                return result
        return None

    def _can_reach(self, pose: Any) -> bool:
        """Whether a straight (screw) path to a world-frame sapien pose exists from the current state."""
        return self._plan(np.concatenate([pose.p, pose.q]), screw_only=True) is not None

    def _fk(self, arm_qpos: np.ndarray) -> np.ndarray:
        """Base-frame TCP pose of an arm configuration (fingers at their current opening)."""
        qpos = self._qpos()
        qpos[: len(arm_qpos)] = arm_qpos
        self.planner.pinocchio_model.compute_forward_kinematics(qpos)
        return np.asarray(self.planner.pinocchio_model.get_link_pose(self._ee_index), dtype=np.float64)

    # ------------------------------------------------------------------ execution
    def _move(self, target_world: np.ndarray, target_base: np.ndarray, gripper: float) -> None:
        plan = self._plan(target_world)
        if plan is None:
            raise _PlanFailure(target_world)
        for arm_qpos in plan["position"][1:]:
            self._act(self._fk(arm_qpos), gripper)
        for _ in range(MAX_SETTLE_STEPS):
            if _close(self.robot.ee_pose(), target_base, POS_TOLERANCE, ROT_TOLERANCE):
                break
            self._act(target_base, gripper)

    def _act(self, target_base: np.ndarray, gripper: float) -> None:
        robot = self.robot
        if self._steps() >= robot.max_episode_steps:
            raise _OutOfSteps()
        action = robot.action_toward(target_base, gripper)
        if self._on_step is not None:
            self._on_step(robot.get_observation(), action)
        robot.send_action(action)


class _OutOfSteps(Exception):
    """The episode hit the robot's step limit before the script finished."""


def _close(a: np.ndarray, b: np.ndarray, pos_tol: float, rot_tol: float) -> bool:
    """Whether poses `xyz + quat wxyz` agree within pos_tol metres and rot_tol radians."""
    dot = abs(float(np.dot(a[3:7], b[3:7])) / (np.linalg.norm(a[3:7]) * np.linalg.norm(b[3:7])))
    angle = 2.0 * float(np.arccos(min(dot, 1.0)))
    return float(np.linalg.norm(a[:3] - b[:3])) <= pos_tol and angle <= rot_tol


# ---------------------------------------------------------------------- task scripts
def _top_down_grasp(env: Any, actor: Any, use_obb_center: bool) -> Any:
    """ManiSkill's top-down grasp for a box: close across the axis nearest the current TCP's."""
    from mani_skill.examples.motionplanning.base_motionplanner.utils import (
        compute_grasp_info_by_obb,
        get_actor_obb,
    )

    target_closing = env.agent.tcp.pose.to_transformation_matrix()[0, :3, 1].cpu().numpy()
    info = compute_grasp_info_by_obb(
        get_actor_obb(actor), approaching=np.array([0, 0, -1]), target_closing=target_closing,
        depth=FINGER_LENGTH,
    )
    center = info["center"] if use_obb_center else actor.pose.sp.p
    return env.agent.build_grasp_pose(np.array([0, 0, -1]), info["closing"], center)


def _pick_cube(env: Any, can_reach: Callable[[Any], bool]) -> Iterator[Segment]:
    import sapien

    grasp = _top_down_grasp(env, env.cube, use_obb_center=False)
    yield Segment(PRE_GRASP, grasp * sapien.Pose([0, 0, -APPROACH_OFFSET]), GRIPPER_OPEN)
    yield Segment(GRASP, grasp, GRIPPER_CLOSED)
    lift = sapien.Pose([0, 0, LIFT_HEIGHT]) * grasp
    yield Segment(LIFT, lift, GRIPPER_CLOSED)
    yield Segment(GOAL, sapien.Pose(env.goal_site.pose.sp.p, grasp.q), GRIPPER_CLOSED)


def _push_cube(env: Any, can_reach: Callable[[Any], bool]) -> Iterator[Segment]:
    import sapien

    q = env.agent.tcp.pose.sp.q
    start = env.obj.pose.sp.p + np.array([-PUSH_BACKOFF, 0.0, 0.0])
    yield Segment(PRE_PUSH, sapien.Pose(start + np.array([0.0, 0.0, PUSH_CLEARANCE]), q), GRIPPER_CLOSED)
    yield Segment(PUSH_START, sapien.Pose(start, q), GRIPPER_CLOSED)
    goal = env.goal_region.pose.sp.p
    for shortfall in PUSH_SHORTFALLS:
        end = sapien.Pose(np.array([goal[0] - PUSH_CONTACT - shortfall, goal[1], start[2]]), q)
        if can_reach(end):
            break
    yield Segment(PUSH_END, end, GRIPPER_CLOSED)


def _stack_cube(env: Any, can_reach: Callable[[Any], bool]) -> Iterator[Segment]:
    import sapien
    from transforms3d.euler import euler2quat

    grasp = _top_down_grasp(env, env.cubeA, use_obb_center=True)
    # as ManiSkill's solution: try yaw 0, then ±90° about the approach axis, for a reachable grasp
    for angle in (0.0, np.pi / 2, -np.pi / 2):
        candidate = grasp * sapien.Pose(q=euler2quat(0, 0, angle))
        if can_reach(candidate):
            grasp = candidate
            break
    yield Segment(PRE_GRASP, grasp * sapien.Pose([0, 0, -APPROACH_OFFSET]), GRIPPER_OPEN)
    yield Segment(GRASP, grasp, GRIPPER_CLOSED)
    lift = sapien.Pose([0, 0, LIFT_HEIGHT]) * grasp
    yield Segment(LIFT, lift, GRIPPER_CLOSED)
    # move cubeA (now held) by the offset that puts it one cube height above cubeB
    goal = (env.cubeB.pose * sapien.Pose([0, 0, 2 * float(env.cube_half_size[2])])).sp.p
    offset = goal - env.cubeA.pose.sp.p
    yield Segment(PLACE, sapien.Pose(lift.p + offset, lift.q), GRIPPER_OPEN)
