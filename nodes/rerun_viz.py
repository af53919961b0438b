"""Visualization: what flows through a graph, logged to Rerun on one timeline — camera images (depth,
segmentation, masks), point clouds, waypoints, the robot's end effector and goal, action chunks and
commands — written to an .rrd file (`rerun FILE.rrd` opens it) or streamed to a viewer.

A sink: connect the inputs you want to see and leave the rest. Every message is logged at its capture
stamp (timeline `capture_time`: the monotonic stamp_ns, as a duration) and, when it belongs to a robot
step, at that step (timeline `step`, which restarts each episode), so a camera image, the cloud made
from it, the chunk that answered it and the command sent for it line up. Geometry is drawn in the
robot's base frame (`world`): a camera frame `world/<frame_id>` gets each message's camera → base
transform, and images hang under their pinhole (`world/<frame_id>/image`), so clouds and waypoints in
the camera frame land where they are and masks overlay their image. Nothing touches the network
unless `connect` names a viewer, and no viewer is ever spawned.

rerun-sdk 0.23.1 cannot build class descriptions under numpy < 2 (its ClassId calls
`np.asarray(copy=...)`), so segment names go to a text document beside the segmentation instead of an
annotation context, and rotations go in as matrices, not quaternions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.messages import ActionChunk, Command, Frame, Mask, Message, PointCloud, RobotState, Waypoints
from pipeline.node import Node
from sim.pointcloud import quat_to_matrix

TIMELINE_STAMP = "capture_time"
TIMELINE_STEP = "step"
WORLD = "world"  # the robot base frame
BASE_FRAME_IDS = ("", "base")
IMAGE = "image"  # a camera's pinhole; its rgb, depth, segmentation and mask hang under it
LOG = "log"  # text: invalid plans, holds, episode ends
POINT_RADIUS_M = 0.002
TARGET_COLOR = np.array([255, 0, 255], np.uint8)  # target points of a cloud
OPEN_COLOR, CLOSED_COLOR = (0, 200, 0), (220, 0, 0)  # waypoints by their gripper command
APPROACH_M = np.array([0.0, 0.0, 0.04])  # the gripper's approach axis, drawn at each waypoint
AXIS_LENGTH_M = 0.05


class RerunVizParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rrd_path: str | None = Field(None, description="write the recording to this .rrd file")
    connect: str | None = Field(None, description="stream to a running viewer at this gRPC URL, "
                                                  "e.g. rerun+http://127.0.0.1:9876/proxy")
    application_id: str = "groundloop"

    @model_validator(mode="after")
    def _one_sink(self) -> "RerunVizParams":
        if (self.rrd_path is None) == (self.connect is None):
            raise ValueError("set exactly one of rrd_path (a file) or connect (a viewer's URL)")
        return self


class RerunViz(Node):
    Params = RerunVizParams
    inputs = {"frame": Frame, "cloud": PointCloud, "mask": Mask, "waypoints": Waypoints,
              "actions": ActionChunk, "state": RobotState, "command": Command}

    def setup(self) -> None:
        import rerun as rr  # here, not at import: loading a graph should not cost a rerun import

        self.rr = rr
        self.rec = rr.RecordingStream(self.params.application_id)
        if self.params.rrd_path is not None:
            Path(self.params.rrd_path).parent.mkdir(parents=True, exist_ok=True)
            self.rec.save(self.params.rrd_path)
        else:
            self.rec.connect_grpc(self.params.connect)
        self.rec.log(WORLD, rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)  # the base frame is z-up
        self._segment_names: dict[str, dict[int, str]] = {}  # entity -> names last logged

    def close(self) -> None:
        rec = getattr(self, "rec", None)
        if rec is not None:
            rec.flush(blocking=True)
            rec.disconnect()  # the file is complete once this returns

    # ---- handlers -------------------------------------------------------------------------------

    def on_frame(self, msg: Frame) -> None:
        rr = self.rr
        image = f"{self._at(msg, msg.step, msg.T_base_frame)}/{IMAGE}"
        height, width = msg.image.shape[:2]
        if msg.intrinsics is not None:
            self.rec.log(image, rr.Pinhole(image_from_camera=msg.intrinsics, resolution=[width, height]))
        self.rec.log(f"{image}/rgb", rr.Image(msg.image))
        if msg.depth is not None:
            self.rec.log(f"{image}/depth", rr.DepthImage(msg.depth, meter=1.0))
        if msg.segmentation is not None:
            self._log_segment_names(f"{image}/segmentation", msg.segment_names)
            self.rec.log(f"{image}/segmentation", rr.SegmentationImage(msg.segmentation))

    def on_cloud(self, msg: PointCloud) -> None:
        space = self._at(msg, msg.step, msg.T_base_frame)
        colors = np.array(msg.rgb if msg.rgb is not None else np.full((len(msg.xyz), 3), 128, np.uint8), np.uint8)
        if msg.is_target is not None:
            colors[np.asarray(msg.is_target, bool)] = TARGET_COLOR
        self.rec.log(f"{space}/cloud", self.rr.Points3D(msg.xyz, colors=colors, radii=POINT_RADIUS_M))

    def on_mask(self, msg: Mask) -> None:
        """Masks of one image as one label image (mask i is label i + 1; a later mask wins an overlap)."""
        labels = np.zeros(msg.masks.shape[1:], np.uint16)
        for index, mask in enumerate(msg.masks):
            labels[mask] = index + 1
        entity = f"{self._at(msg, None, None)}/{IMAGE}/mask"
        names = {i + 1: f"{label} {score:.2f}" for i, (label, score) in enumerate(zip(msg.labels, msg.scores))}
        self._log_segment_names(entity, names)
        self.rec.log(entity, self.rr.SegmentationImage(labels))

    def on_waypoints(self, msg: Waypoints) -> None:
        rr = self.rr
        entity = f"{self._at(msg, None, msg.T_base_frame)}/waypoints"
        if not msg.valid:
            self.rec.log(entity, rr.Clear(recursive=True))
            self.rec.log(LOG, rr.TextLog(f"no valid waypoints: {msg.reason}", level="WARN"))
            return
        poses = np.asarray(msg.poses, np.float64)
        xyz = poses[:, :3]
        approach = np.stack([quat_to_matrix(q) @ APPROACH_M for q in poses[:, 3:7]]) if len(poses) else np.zeros((0, 3))
        colors = np.array([OPEN_COLOR if g > 0 else CLOSED_COLOR for g in poses[:, 7]], np.uint8).reshape(-1, 3)
        self.rec.log(f"{entity}/path", rr.LineStrips3D([xyz]))
        self.rec.log(f"{entity}/poses", rr.Arrows3D(origins=xyz, vectors=approach, colors=colors,
                                                    labels=list(msg.names) or None))

    def on_state(self, msg: RobotState) -> None:
        rr = self.rr
        space = self._at(msg, msg.step, None)
        pose = np.asarray(msg.ee_pose, np.float64)
        self.rec.log(f"{space}/ee", rr.Transform3D(translation=pose[:3], mat3x3=quat_to_matrix(pose[3:7]),
                                                   axis_length=AXIS_LENGTH_M))
        if msg.goal_pos is not None:
            self.rec.log(f"{space}/goal", rr.Points3D(np.asarray(msg.goal_pos, np.float64).reshape(1, 3),
                                                      labels=["goal"]))
        self.rec.log("robot/gripper", rr.Scalars(np.array([msg.gripper], np.float64)))
        self.rec.log("robot/qpos", rr.Scalars(np.asarray(msg.qpos, np.float64)))
        if msg.done:
            outcome = "success" if msg.success else "failure"
            self.rec.log(LOG, rr.TextLog(f"episode {msg.episode} ends at step {msg.step}: {outcome}"))

    def on_actions(self, msg: ActionChunk) -> None:
        """The chunk's first action: the one meant for the step it answers."""
        self._at(msg, msg.start_step, None)
        if len(msg.actions):
            self.rec.log("actions/first", self.rr.Scalars(np.asarray(msg.actions[0], np.float64)))

    def on_command(self, msg: Command) -> None:
        rr = self.rr
        self._at(msg, msg.step, None)
        self.rec.log("command/action", rr.Scalars(np.asarray(msg.action, np.float64)))
        self.rec.log("command/hold", rr.Scalars(np.array([float(msg.hold)])))
        if msg.hold:
            self.rec.log(LOG, rr.TextLog(f"hold at step {msg.step}: {msg.reason}", level="WARN"))

    # ---- helpers ---------------------------------------------------------------------------------

    def _at(self, msg: Message, step: int | None, T_base_frame: np.ndarray | None) -> str:
        """Set the timelines to `msg`'s stamp (and `step`, if it has one); the entity of its frame,
        placed by `T_base_frame` when given."""
        self.rec.reset_time()
        self.rec.set_time(TIMELINE_STAMP, duration=np.timedelta64(msg.stamp_ns, "ns"))
        if step is not None and step >= 0:
            self.rec.set_time(TIMELINE_STEP, sequence=step)
        if msg.frame_id in BASE_FRAME_IDS:
            return WORLD
        space = f"{WORLD}/{self.rr.escape_entity_path_part(msg.frame_id)}"
        if T_base_frame is not None:
            T = np.asarray(T_base_frame, np.float64)
            self.rec.log(space, self.rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]))
        return space

    def _log_segment_names(self, entity: str, names: dict[Any, str]) -> None:
        """Segment id -> name as a text document beside `entity`, when they change."""
        names = {int(k): v for k, v in names.items()}
        if names and self._segment_names.get(entity) != names:
            self._segment_names[entity] = names
            text = "\n".join(f"{i}: {name}" for i, name in sorted(names.items()))
            self.rec.log(f"{entity}/names", self.rr.TextDocument(text))
