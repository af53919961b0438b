"""Typed messages: dataclasses with a header, turned into wire payloads and back.

Every message carries `stream` (producer "node/port"), `seq` (per-stream counter), `stamp_ns` (capture
time, monotonic clock) and `frame_id` (the coordinate frame its geometry is in). numpy fields travel as
raw buffers; every other field must be a plain value (str, int, float, bool, None, list, dict).
Message classes register themselves by class name, so a receiver can rebuild the right type.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from streaming.codec import CodecError, Payload

HEADER_FIELDS = ("stream", "seq", "stamp_ns", "frame_id")


@dataclass(kw_only=True)
class Message:
    """Base of every message type; the header fields."""

    stream: str = ""
    seq: int = -1
    stamp_ns: int = field(default_factory=time.monotonic_ns)
    frame_id: str = ""

    registry: ClassVar[dict[str, type["Message"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        existing = Message.registry.get(cls.__name__)
        if existing is not None and existing.__module__ != cls.__module__:
            raise TypeError(f"message type name {cls.__name__} defined twice: {existing.__module__} and {cls.__module__}")
        Message.registry[cls.__name__] = cls

    def to_payload(self) -> Payload:
        fields: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                arrays[f.name] = value
            elif isinstance(value, np.generic):
                fields[f.name] = value.item()
            else:
                fields[f.name] = value
        return Payload(type(self).__name__, fields, arrays)

    @staticmethod
    def from_payload(payload: Payload) -> "Message":
        cls = Message.registry.get(payload.type_name)
        if cls is None:
            raise CodecError(f"unknown message type {payload.type_name!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {**payload.fields, **payload.arrays}
        unknown = set(values) - names
        if unknown:
            raise CodecError(f"{payload.type_name}: unknown fields {sorted(unknown)}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise CodecError(f"{payload.type_name}: {exc}") from exc

    def frozen_view(self) -> "Message":
        """A shallow copy whose arrays are read-only views: what a receiver gets over a socket too."""
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray) and value.flags.writeable:
                view = value.view()
                view.flags.writeable = False
                changes[f.name] = view
        return dataclasses.replace(self, **changes) if changes else self


# ---- the message vocabulary shared by the node library -------------------------------------------


@dataclass(kw_only=True)
class Tick(Message):
    """A counter, e.g. for timers and toy graphs."""

    value: int = 0


@dataclass(kw_only=True)
class Blob(Message):
    """An array with no further meaning: benchmarks and tests of the transport."""

    data: np.ndarray


@dataclass(kw_only=True)
class Frame(Message):
    """One camera image; `intrinsics` is K (3×3) when known."""

    image: np.ndarray  # (H, W, 3) uint8
    intrinsics: np.ndarray | None = None  # (3, 3)
    depth: np.ndarray | None = None  # (H, W) float32 metres
    segmentation: np.ndarray | None = None  # (H, W) int32
    segment_names: dict[int, str] = field(default_factory=dict)  # segmentation id -> actor/link name
    T_base_frame: np.ndarray | None = None  # (4, 4) camera -> robot base, for a robot's camera
    index: int = -1  # frame index in its video, -1 for a live camera
    pts_s: float = 0.0  # presentation time in its video, seconds
    episode: int = 0
    step: int = -1  # the robot step it was captured at


@dataclass(kw_only=True)
class FrameScores(Message):
    """Per-frame relevance scores, e.g. from a CLIP prescan."""

    frame_indices: np.ndarray  # (N,) int64
    times_s: np.ndarray  # (N,) float64
    scores: np.ndarray  # (N,) float32
    query: str = ""


@dataclass(kw_only=True)
class Selection(Message):
    """Frames and spans chosen for a question, with reasons."""

    frame_indices: np.ndarray  # (K,) int64
    spans_s: np.ndarray  # (S, 2) float64 start/end seconds
    reasons: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class Mask(Message):
    """Binary masks for one image, with a score each. A grounding sets `query` (what was asked for) and,
    when it found nothing (M = 0), `reason`; `episode` and `step` tie it to a robot's step."""

    masks: np.ndarray  # (M, H, W) bool
    scores: np.ndarray  # (M,) float32
    labels: list[str] = field(default_factory=list)
    query: str = ""
    reason: str = ""  # why there is no mask, e.g. "absent: no green pixels"
    episode: int = 0
    step: int = -1


@dataclass(kw_only=True)
class Instruction(Message):
    """What the operator asked for, in words, for one episode ("pick the green cube")."""

    text: str = ""
    episode: int = 0


@dataclass(kw_only=True)
class PointCloud(Message):
    """Points in `frame_id`; `T_base_frame` maps them to the robot base frame."""

    xyz: np.ndarray  # (N, 3) float32
    rgb: np.ndarray | None = None  # (N, 3) uint8
    is_target: np.ndarray | None = None  # (N,) bool
    T_base_frame: np.ndarray | None = None  # (4, 4)
    episode: int = 0
    step: int = -1


@dataclass(kw_only=True)
class Waypoints(Message):
    """Sparse poses in `frame_id`: (K, 8) rows of xyz, quaternion wxyz, gripper command."""

    poses: np.ndarray  # (K, 8) float32
    names: list[str] = field(default_factory=list)
    T_base_frame: np.ndarray | None = None  # (4, 4)
    valid: bool = True
    reason: str = ""  # why not valid, e.g. "target not visible"
    episode: int = 0


@dataclass(kw_only=True)
class ActionChunk(Message):
    """T actions of D values; action t is meant for robot step `start_step + t` (at `stamps_ns[t]`)."""

    actions: np.ndarray  # (T, D) float32
    stamps_ns: np.ndarray  # (T,) int64
    start_step: int = 0
    episode: int = 0
    control_mode: str = ""


@dataclass(kw_only=True)
class RobotState(Message):
    """Proprioception."""

    qpos: np.ndarray  # (J,) float32
    qvel: np.ndarray  # (J,) float32
    ee_pose: np.ndarray  # (7,) xyz + quaternion wxyz, base frame
    gripper: float = 0.0  # opening in [0, 1]
    episode: int = 0
    step: int = 0
    success: bool = False
    done: bool = False  # the last state of its episode
    goal_pos: np.ndarray | None = None  # (3,) task goal in the base frame, when the task has one


@dataclass(kw_only=True)
class Command(Message):
    """One action for the robot to execute now; `hold` means keep still."""

    action: np.ndarray  # (D,) float32
    hold: bool = False
    reason: str = ""
    episode: int = 0
    step: int = -1  # the robot step it answers


@dataclass(kw_only=True)
class EStop(Message):
    """Emergency stop: while engaged the controller holds, whatever else arrives."""

    engaged: bool = True
    reason: str = ""


@dataclass(kw_only=True)
class Answer(Message):
    """A question's answer with its evidence."""

    question: str = ""
    answer: str = ""
    choice: int = -1
    confidence: float = 0.0
    spans_s: np.ndarray | None = None  # (S, 2)
    frame_indices: np.ndarray | None = None  # (K,)
