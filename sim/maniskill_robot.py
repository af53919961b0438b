"""A ManiSkill3 tabletop task as a `Robot`, so one robot node drives simulation and hardware alike.

The env runs on the CPU (physx_cpu + the cpu renderer, see the platform notes) in `pd_ee_delta_pose`:
the action is a normalised 7-vector (dx dy dz drx dry drz gripper) in [-1, 1]. Observations carry one
fixed camera whose resolution and pose are chosen so the 4 cm cube covers a few hundred pixels
(ManiSkill's default 128×128 camera gives it 3–16). Everything geometric is expressed in the robot
base frame, which is *not* the world origin in ManiSkill (the Panda stands at x = -0.615).
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot.interface import CameraObservation, Robot, RobotObservation
from sim.pointcloud import (
    canonical_quat,
    invert_transform,
    pose_to_matrix,
    quat_to_matrix,
    transform_points,
    transform_pose,
)
from sim.tasks import get_task

CONTROL_MODE = "pd_ee_delta_pose"
ACTION_NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
GRIPPER_OPEN = 1.0
GRIPPER_CLOSED = -1.0
#: the Panda's finger joints travel 0..0.04 m each; their sum over this is the opening in [0, 1]
FINGER_SPAN_M = 0.08
#: the default step limit; PickCube's registered limit (50) is shorter than its demos (~80)
DEFAULT_MAX_EPISODE_STEPS = 200
SIM_BACKEND = "physx_cpu"
RENDER_BACKEND = "cpu"
DEPTH_UNITS_PER_M = 1000.0  # ManiSkill's default shader delivers depth as int16 millimetres
#: base-frame hemisphere for TCP quaternions: the TCP pointing straight down at its home yaw. A
#: top-down TCP has w ~ 0, where "w >= 0" would flip signs from step to step.
TCP_QUAT_REFERENCE = np.array([0.0, 1.0, 0.0, 0.0])


@dataclass(frozen=True)
class CameraSpec:
    """A fixed camera looking at the table, eye and target in the world (table) frame, metres.

    The default sees the whole PickCube workspace (cube spawn square, goals up to 0.32 m high) from
    the front-left: the cube covers 230–360 of the 65k pixels at 256×256 (128×128 gave it 3–16),
    and a step with rendering takes ~40 ms on 2 idle CPU cores (~25 steps/s).
    """

    name: str = "base_camera"
    width: int = 256
    height: int = 256
    fov: float = 1.0  # radians
    eye: tuple[float, float, float] = (0.4, 0.4, 0.45)
    target: tuple[float, float, float] = (0.05, 0.0, 0.12)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (for dataset metadata)."""
        return {"name": self.name, "width": self.width, "height": self.height, "fov": self.fov,
                "eye": list(self.eye), "target": list(self.target)}


class ManiSkillRobot(Robot):
    """One ManiSkill env (one sub-scene) behind the `Robot` interface.

    `camera=None` renders no camera (state only), which is what the motion-planning oracle needs.
    ManiSkill is imported in `connect`, so constructing this object is cheap and validates the task.
    """

    action_names = ACTION_NAMES
    control_mode = CONTROL_MODE

    def __init__(
        self,
        task: str = "PickCube-v1",
        *,
        max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
        camera: CameraSpec | None = CameraSpec(),
    ) -> None:
        self.spec = get_task(task)
        self.max_episode_steps = max_episode_steps
        self.camera = camera
        self._gym_env: Any = None
        self._obs: Any = None
        self._truncated = False
        self._seg_labels: dict[int, str] = {}

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        """Create the env (import of ManiSkill happens here, ~2 s; env creation ~4 s)."""
        if self._gym_env is not None:
            return
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the tasks)
        from mani_skill.utils import sapien_utils

        if self.spec.env_module is not None:
            importlib.import_module(self.spec.env_module)  # registers a task of our own

        kwargs: dict[str, Any] = dict(
            obs_mode="state",
            control_mode=CONTROL_MODE,
            sim_backend=SIM_BACKEND,
            render_backend=RENDER_BACKEND,
            max_episode_steps=self.max_episode_steps,
            render_mode="rgb_array",  # costs nothing until render_frame() asks for a frame
        )
        if self.camera is not None:
            cam = self.camera
            pose = sapien_utils.look_at(eye=list(cam.eye), target=list(cam.target))
            kwargs["obs_mode"] = "rgb+depth+segmentation"
            kwargs["sensor_configs"] = {
                cam.name: dict(width=cam.width, height=cam.height, fov=cam.fov, pose=pose)
            }
        try:
            self._gym_env = gym.make(self.spec.name, **kwargs)
        except AttributeError as exc:  # ManiSkill reads an unknown camera name as a config attribute
            if self.camera is None:
                raise
            raise ValueError(
                f"ManiSkillRobot({self.spec.name}): camera {self.camera.name!r} is not one of the task's "
                f"cameras (the supported tasks have 'base_camera'): {exc}"
            ) from exc
        self._seg_labels = {int(i): obj.name for i, obj in self.env.segmentation_id_map.items()}
        self.reset()

    def disconnect(self) -> None:
        """Close the env; safe to call twice."""
        if self._gym_env is not None:
            self._gym_env.close()
            self._gym_env = None
            self._obs = None

    @property
    def env(self) -> Any:
        """The unwrapped ManiSkill env (for planners and task facts)."""
        return self._require().unwrapped

    def _require(self) -> Any:
        if self._gym_env is None:
            raise RuntimeError(f"ManiSkillRobot({self.spec.name}) is not connected; call connect() first")
        return self._gym_env

    # ------------------------------------------------------------------ acting
    def reset(self, seed: int | None = None) -> RobotObservation:
        """Start a new episode; the same seed gives the same initial scene."""
        self._obs, _ = self._require().reset(seed=seed)
        self._truncated = False
        return self.get_observation()

    def send_action(self, action: np.ndarray) -> None:
        """Step the sim by one control period (50 ms sim time) with a normalised ee-delta action."""
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (len(ACTION_NAMES),) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"ManiSkillRobot.send_action: expected a finite action of shape ({len(ACTION_NAMES)},) "
                f"{ACTION_NAMES}, got shape {action.shape} with values {action}"
            )
        self._obs, _, _, truncated, _ = self._require().step(action)
        self._truncated = bool(truncated)

    def action_toward(self, target_ee_pose: np.ndarray, gripper: float) -> np.ndarray:
        """The normalised action that asks the controller for `target_ee_pose` (base frame) now.

        The controller adds the action's translation to the current ee position and pre-multiplies
        its XYZ-Euler rotation onto the current orientation (root-aligned), after scaling by its
        configured limits. ManiSkill 3.0.1 scales rotation by `rot_lower` (negative), so reading the
        scales from the controller keeps the sign right. Components beyond the limits are clipped.
        """
        arm = self.env.agent.controller.controllers["arm"].config
        current = self.ee_pose()
        dpos = (np.asarray(target_ee_pose[:3]) - current[:3]) / float(arm.pos_upper)
        R_delta = quat_to_matrix(target_ee_pose[3:7]) @ quat_to_matrix(current[3:7]).T
        drot = matrix_to_euler_xyz(R_delta) / float(arm.rot_lower)
        norm = np.linalg.norm(drot)
        if norm > 1.0:
            drot = drot / norm
        return np.concatenate([np.clip(dpos, -1.0, 1.0), drot, [gripper]]).astype(np.float32)

    # ------------------------------------------------------------------ observing
    def T_world_base(self) -> np.ndarray:
        """Pose of the robot base in the world (4×4)."""
        return pose_to_matrix(self.env.agent.robot.pose.raw_pose[0].cpu().numpy())

    def to_base(self, world_points: np.ndarray) -> np.ndarray:
        """World-frame points (..., 3) in the robot base frame."""
        return transform_points(invert_transform(self.T_world_base()), np.asarray(world_points, dtype=np.float64))

    def ee_pose(self) -> np.ndarray:
        """TCP pose in the base frame: xyz + quat wxyz in the hemisphere of TCP_QUAT_REFERENCE."""
        return self.world_to_base_pose(self.env.agent.tcp.pose.raw_pose[0].cpu().numpy())

    def world_to_base_pose(self, pose_world: np.ndarray) -> np.ndarray:
        """A world-frame pose in the base frame, quaternion in the hemisphere of TCP_QUAT_REFERENCE."""
        pose = transform_pose(invert_transform(self.T_world_base()), pose_world)
        return np.concatenate([pose[:3], canonical_quat(pose[3:7], TCP_QUAT_REFERENCE)])

    def get_observation(self) -> RobotObservation:
        """State, camera and task info of the current sim state."""
        agent = self.env.agent
        qpos = agent.robot.get_qpos()[0].cpu().numpy().astype(np.float32)
        qvel = agent.robot.get_qvel()[0].cpu().numpy().astype(np.float32)
        cameras = {} if self.camera is None else {self.camera.name: self._camera_observation()}
        return RobotObservation(
            stamp_ns=time.monotonic_ns(),
            qpos=qpos,
            qvel=qvel,
            ee_pose=self.ee_pose().astype(np.float32),
            gripper=float(np.clip(qpos[-2:].sum() / FINGER_SPAN_M, 0.0, 1.0)),
            cameras=cameras,
            extras=self.task_info,
        )

    def _camera_observation(self) -> CameraObservation:
        name = self.camera.name
        data, params = self._obs["sensor_data"][name], self._obs["sensor_param"][name]
        T_camera_world = np.eye(4)
        T_camera_world[:3, :] = params["extrinsic_cv"][0].cpu().numpy()
        return CameraObservation(
            rgb=data["rgb"][0].cpu().numpy().astype(np.uint8),
            depth=data["depth"][0, ..., 0].cpu().numpy().astype(np.float32) / DEPTH_UNITS_PER_M,
            intrinsics=params["intrinsic_cv"][0].cpu().numpy().astype(np.float64),
            T_base_camera=invert_transform(self.T_world_base()) @ invert_transform(T_camera_world),
            segmentation=data["segmentation"][0, ..., 0].cpu().numpy().astype(np.int32),
            segmentation_labels=self.segmentation_labels,
        )

    def is_success(self) -> bool:
        """Whether the task's success condition holds now."""
        return bool(self.env.evaluate()["success"][0])

    @property
    def task_info(self) -> dict[str, Any]:
        """Goal and target (base frame), success, the task's own evaluation (why an episode failed: e.g.
        PickCube's is_grasped, is_obj_placed, is_robot_static) and episode progress: the observation's `extras`."""
        evaluation = {name: float(value[0]) for name, value in self.env.evaluate().items() if value.numel() == 1}
        instruction = {"instruction": self.env.instruction} if self.spec.has_instruction else {}
        return {
            **instruction,
            "task": self.spec.name,
            "target_name": self.spec.target_actor,
            "target_pose": self.world_to_base_pose(self.spec.target_pose_world(self.env)),
            "goal_pos": self.to_base(self.spec.goal_world(self.env)),
            "success": bool(evaluation["success"]),
            "evaluation": evaluation,
            "elapsed_steps": int(self.env.elapsed_steps[0]),
            "truncated": self._truncated,
        }

    @property
    def segmentation_labels(self) -> dict[int, str]:
        """Segmentation id -> actor/link name for this scene (fixed once connected)."""
        return dict(self._seg_labels)

    def segmentation_ids(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        """Segmentation ids of the named actors/links (names that do not occur in the scene are skipped)."""
        return np.array([i for i, n in self._seg_labels.items() if n in names], dtype=np.int32)

    def render_frame(self) -> np.ndarray:
        """An RGB frame (H, W, 3) uint8 of ManiSkill's human render camera (512×512), for videos."""
        return self._require().render()[0].cpu().numpy().astype(np.uint8)


def matrix_to_euler_xyz(R: np.ndarray) -> np.ndarray:
    """Angles (a, b, c) with R = Rx(a) @ Ry(b) @ Rz(c), ManiSkill's "XYZ" convention for delta rotations."""
    b = np.arcsin(np.clip(R[0, 2], -1.0, 1.0))
    a = np.arctan2(-R[1, 2], R[2, 2])
    c = np.arctan2(-R[0, 1], R[0, 0])
    return np.array([a, b, c])
