"""Point-cloud node: a camera frame (RGB-D + intrinsics + segmentation) in, the workspace cloud out.

Depth is back-projected in the camera frame (OpenCV axes); pixels of background segments (table,
ground, robot base, goal markers — the same crop as the demos the expert learned from) and pixels
outside an optional workspace box (robot base frame) are dropped; the rest is farthest-point sampled
to `n_points` with open3d. Points on the target segment are flagged `is_target` — or, with
`target_from: mask`, the pixels of the grounding node's newest mask of the frame's episode: a frame
waits only for its episode's first mask, so grounding (a learned model) never holds up the control
loop, at the price of flags one grounding old on a moving target. The cloud keeps the camera's
frame_id and carries the camera → base transform, so every consumer can move it exactly.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import Frame, Mask, PointCloud
from pipeline.node import Node
from sim.pointcloud import backproject_depth, crop_box, farthest_point_indices, transform_points
from sim.tasks import BACKGROUND_NAMES


class PointCloudParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_points: int = Field(1024, ge=1)
    target: str = Field("cube", description="segment name of the object to flag as target")
    background: list[str] = Field(default_factory=lambda: list(BACKGROUND_NAMES))
    workspace_low: tuple[float, float, float] | None = None  # base frame, metres
    workspace_high: tuple[float, float, float] | None = None
    target_from: Literal["segmentation", "mask"] = Field(
        "segmentation", description="the target's pixels: its segment (`target`), or the newest `mask` of the frame's episode")


TARGET_FROM_MASK = "mask"


class PointCloudNode(Node):
    Params = PointCloudParams
    inputs = {"frame": Frame, "mask": Mask}
    outputs = {"cloud": PointCloud}

    def setup(self) -> None:
        self.mask: Mask | None = None  # the newest grounding
        self.waiting: Frame | None = None  # the newest frame of an episode with no grounding yet

    def on_frame(self, msg: Frame) -> None:
        if self.params.target_from != TARGET_FROM_MASK:
            target_ids = [i for i, name in msg.segment_names.items() if name == self.params.target]
            self._cloud(msg, None if msg.segmentation is None else np.isin(msg.segmentation, target_ids))
        elif self.mask is None or self.mask.episode != msg.episode:
            self.waiting = msg
        else:
            self._cloud(msg, self._pixels(self.mask))

    def on_mask(self, msg: Mask) -> None:
        self.mask, waiting = msg, self.waiting
        if waiting is not None and waiting.episode == msg.episode:
            self.waiting = None
            self._cloud(waiting, self._pixels(msg))

    @staticmethod
    def _pixels(mask: Mask) -> np.ndarray | None:
        return np.asarray(mask.masks).any(axis=0) if len(mask.masks) else None

    def _cloud(self, msg: Frame, target_pixels: np.ndarray | None) -> None:
        """Emit the cloud of `msg`, flagging the points whose pixel is set in `target_pixels` (H, W)."""
        if msg.depth is None or msg.intrinsics is None:
            self.count("frames_without_depth")
            self.log.error("frame seq %d from %s has no depth or intrinsics: no cloud", msg.seq, msg.stream)
            return
        keep = np.isfinite(msg.depth)
        if msg.segmentation is not None:
            background = [i for i, name in msg.segment_names.items() if name in self.params.background]
            keep &= (msg.segmentation != 0) & ~np.isin(msg.segmentation, background)
        points, pixels = backproject_depth(np.nan_to_num(msg.depth, nan=0.0, posinf=0.0, neginf=0.0), msg.intrinsics, keep)
        if self.params.workspace_low is not None and self.params.workspace_high is not None:
            if msg.T_base_frame is None:
                raise ValueError(f"frame from {msg.stream}: a workspace box needs T_base_frame")
            inside = crop_box(transform_points(msg.T_base_frame, points), np.asarray(self.params.workspace_low),
                              np.asarray(self.params.workspace_high))
            points, pixels = points[inside], pixels[inside]
        if len(points) == 0:
            self.count("empty_clouds")
            self.log.warning("frame seq %d: no points left after the crop", msg.seq)
            return
        chosen = farthest_point_indices(points, self.params.n_points)
        is_target = (target_pixels.reshape(-1)[pixels[chosen]] if target_pixels is not None
                     else np.zeros(len(chosen), bool))
        self.emit("cloud", PointCloud(
            stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, xyz=points[chosen],
            rgb=msg.image.reshape(-1, 3)[pixels[chosen]], is_target=is_target,
            T_base_frame=msg.T_base_frame, episode=msg.episode, step=msg.step))
