"""The physical side's one abstraction: a `Robot` that a node can drive, simulated or real.

Small on purpose (LeRobot's shape): connect, reset, get_observation, send_action, disconnect. Everything a
policy needs to know about the robot travels in the observation dict; everything it asks of the robot
in the action array. Safety limits are enforced by the controller before `send_action` and again by
bridges that accept commands from the network.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CameraObservation:
    """One camera's view; geometry in OpenCV camera axes (x right, y down, z forward)."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32, metres along the optical axis; 0 where unknown
    intrinsics: np.ndarray  # (3, 3) K
    T_base_camera: np.ndarray  # (4, 4) camera pose in the robot base frame (camera -> base)
    segmentation: np.ndarray | None = None  # (H, W) int32 per-pixel actor/link id
    segmentation_labels: dict[int, str] = field(default_factory=dict)  # id -> name


@dataclass
class RobotObservation:
    """State of the robot and its cameras at one instant (monotonic capture time)."""

    stamp_ns: int
    qpos: np.ndarray  # (n_joints,) float32
    qvel: np.ndarray  # (n_joints,) float32
    ee_pose: np.ndarray  # (7,) position xyz + quaternion wxyz, base frame
    gripper: float  # opening in [0, 1] (0 closed)
    cameras: dict[str, CameraObservation] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # task info: goal position, success, ...


class Robot(abc.ABC):
    """A robot arm with cameras, simulated or real."""

    #: names of the action's components, e.g. ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
    action_names: tuple[str, ...] = ()
    #: the control mode the action is in (e.g. "pd_ee_delta_pose")
    control_mode: str = ""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection (or create the simulation)."""

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> RobotObservation:
        """Start an episode: a simulator rebuilds its scene from `seed`, a real arm moves home."""

    @abc.abstractmethod
    def get_observation(self) -> RobotObservation:
        """The newest observation."""

    @abc.abstractmethod
    def send_action(self, action: np.ndarray) -> None:
        """Execute one action of shape (len(action_names),)."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Release the robot; safe to call twice."""

    def __enter__(self) -> "Robot":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
