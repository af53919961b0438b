"""The robot as a node: camera frames and robot state out, commands in — simulated or real alike.

Episodes are step-driven: the node emits the state and the camera frame of step t and executes the
command answering step t (a command for another step or episode is stale and ignored), then emits
step t + 1. An episode ends on success or at its step limit; the next tick starts the next episode
with the next seed, and after the last one the source is finished. Per-episode results (success,
length, seed) go to the node's counters and, with `results_path`, to a JSON-lines file; with
`video_path` the camera frames of the first episode are written to an MP4.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.messages import Command, Frame, Instruction, RobotState
from pipeline.node import Node
from robot.interface import Robot, RobotObservation

ROBOT_MANISKILL = "maniskill"
ROBOT_BRIDGE = "bridge"  # a robot server across the network (robot/BRIDGE_PROTOCOL.md)
VIDEO_FPS = 20


class RobotNodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    robot: Literal["maniskill", "bridge"] = ROBOT_MANISKILL
    task: str = "PickCube-v1"
    episodes: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, description="seed of the first episode; episode k uses seed + k")
    max_episode_steps: int = Field(150, ge=1)
    camera_width: int = Field(256, ge=16)
    camera_height: int = Field(256, ge=16)
    results_path: str | None = None
    video_path: str | None = None
    # robot: bridge — the task and camera are the server's; tcp:// is CURVE-authenticated unless insecure
    endpoint: str | None = Field(None, description="the robot server's command endpoint, tcp://HOST:PORT or ipc://PATH")
    keys_dir: str | None = Field(None, description="CURVE keys made by `groundloop keys DIR`")
    insecure: bool = Field(False, description="plain tcp without CURVE, for a trusted network only")

    @model_validator(mode="after")
    def _bridge_needs_endpoint(self) -> "RobotNodeParams":
        if self.robot == ROBOT_BRIDGE and not self.endpoint:
            raise ValueError("endpoint: robot: bridge needs the robot server's endpoint (e.g. tcp://127.0.0.1:5555)")
        return self


def make_robot(params: RobotNodeParams) -> Robot:
    """The robot the params name (imported here, so loading a graph stays cheap)."""
    if params.robot == ROBOT_BRIDGE:
        from robot.bridge import BridgeRobot

        return BridgeRobot(params.endpoint, keys_dir=params.keys_dir, insecure=params.insecure)
    from sim.maniskill_robot import CameraSpec, ManiSkillRobot

    camera = CameraSpec(width=params.camera_width, height=params.camera_height)
    return ManiSkillRobot(params.task, max_episode_steps=params.max_episode_steps, camera=camera)


class RobotNode(Node):
    Params = RobotNodeParams
    inputs = {"command": Command}
    outputs = {"state": RobotState, "frame": Frame, "instruction": Instruction}  # a task's, at each episode's start

    def setup(self) -> None:
        self.robot = make_robot(self.params)
        self.robot.connect()
        self.episode = -1
        self.step = 0
        self.running = False
        self.episode_started = 0.0
        self.video_frames: list[np.ndarray] = []
        self.results: list[dict[str, Any]] = []
        self.last_extras: dict[str, Any] = {}

    def tick(self) -> bool | None:
        if self.running:
            return None  # idle: the episode advances on commands
        if self.episode + 1 >= self.params.episodes:
            return False
        self.episode += 1
        self.step = 0
        self.running = True
        self.episode_started = time.monotonic()
        observation = self.robot.reset(seed=self.params.seed + self.episode)
        self._publish(observation)
        return True

    def on_command(self, msg: Command) -> None:
        if not self.running or msg.episode != self.episode or msg.step != self.step:
            self.count("stale_commands")
            return
        self.robot.send_action(np.asarray(msg.action, np.float32))
        self.count("holds_executed" if msg.hold else "actions_executed")
        self.step += 1
        self._publish(self.robot.get_observation())

    def _publish(self, observation: RobotObservation) -> None:
        extras = observation.extras
        if self.step == 0 and extras.get("instruction") is not None:  # before the step's frame: grounding needs it
            self.emit("instruction", Instruction(stamp_ns=observation.stamp_ns, text=str(extras["instruction"]),
                                                 episode=self.episode))
        success = bool(extras.get("success", False))
        done = success or self.step >= self.params.max_episode_steps
        self.last_extras = extras
        goal = extras.get("goal_pos")
        self.emit("state", RobotState(
            stamp_ns=observation.stamp_ns, frame_id="base", qpos=observation.qpos, qvel=observation.qvel,
            ee_pose=observation.ee_pose, gripper=observation.gripper, episode=self.episode, step=self.step,
            success=success, done=done, goal_pos=None if goal is None else np.asarray(goal, np.float32)))
        for name, camera in observation.cameras.items():
            if self.params.video_path and self.episode == 0:
                self.video_frames.append(camera.rgb)
            if not done:
                self.emit("frame", Frame(
                    stamp_ns=observation.stamp_ns, frame_id=name, image=camera.rgb, intrinsics=camera.intrinsics,
                    depth=camera.depth, segmentation=camera.segmentation, segment_names=camera.segmentation_labels,
                    T_base_frame=camera.T_base_camera, episode=self.episode, step=self.step))
        if done:
            self._finish_episode(success)

    def _finish_episode(self, success: bool) -> None:
        self.running = False
        result = {"episode": self.episode, "seed": self.params.seed + self.episode, "success": success,
                  "steps": self.step, "seconds": time.monotonic() - self.episode_started,
                  **_final_figures(self.last_extras)}
        self.results.append(result)
        self.count("episodes")
        self.count("successes", int(success))
        self.log.info("episode %d (seed %d): %s after %d steps", self.episode, result["seed"],
                      "success" if success else "failure", self.step)
        if self.params.results_path:
            with open(self.params.results_path, "a") as f:
                f.write(json.dumps(result) + "\n")
        if self.params.video_path and self.episode == 0 and self.video_frames:
            write_mp4(self.params.video_path, self.video_frames, VIDEO_FPS)
            self.video_frames = []

    def close(self) -> None:
        robot = getattr(self, "robot", None)
        if robot is not None:
            robot.disconnect()


def write_mp4(path: str | Path, frames: list[np.ndarray], fps: int) -> Path:
    """H.264 MP4 of RGB frames (all the same size)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: stream.height, : stream.width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _final_figures(extras: dict[str, Any]) -> dict[str, Any]:
    """What the robot reported at the episode's end that explains a failure: the task's evaluation
    (ManiSkill's is_grasped, is_obj_placed, ...) and the target's distance to the goal."""
    figures: dict[str, Any] = {}
    if "evaluation" in extras:
        figures["evaluation"] = dict(extras["evaluation"])
    target, goal = extras.get("target_pose"), extras.get("goal_pos")
    if target is not None and goal is not None:
        figures["target_goal_distance_m"] = float(np.linalg.norm(np.asarray(target)[:3] - np.asarray(goal)[:3]))
    return figures

