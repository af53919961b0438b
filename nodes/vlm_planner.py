"""The VLM waypoint planner: a camera frame in, sparse 3D waypoints out, "thinking" with a vision-language
model instead of geometry ("Bridge Thinking and Acting": the VLM plans, the action expert acts).

The VLM sees the RGB image and the instruction and answers in pixels, which it can point at, not in
metres, which it cannot see. The prompt asks for exactly one JSON object:

    {"anchor": [u, v],
     "waypoints": [{"name": "pre_grasp", "u": 320, "v": 240, "height_m": 0.10, "gripper": "open"}, ...]}

- `anchor`: the pixel of the object to manipulate; a waypoint without `u`/`v` is placed at the anchor;
- `u`, `v`: pixel coordinates, u from 0 (left) to width−1, v from 0 (top) to height−1;
- `height_m`: metres above the surface seen at that pixel, along the robot base's +z;
- `gripper`: "open" or "close" at that waypoint;
- `name`: the task's waypoint names, all required (pick: pre_grasp, grasp, lift, goal; push: pre_push,
  push_start, push_end; stack: pre_grasp, grasp, lift, place — the GeometricPlanner's names); others
  are ignored.

Each pixel is lifted with the depth image (the median of a small window, so a hole at the pixel itself
does not matter) and the intrinsics into the camera frame, raised by height_m in the base frame, and
given the top-down gripper orientation the GeometricPlanner uses, its closing axis as near the TCP's
current one as a top-down grasp allows. Waypoints go out in the camera frame with the camera → base
transform, exactly like the GeometricPlanner's. Anything wrong — the VLM call failing, no JSON, the
wrong schema, a pixel outside the image, no depth there, a waypoint outside the robot's hard workspace
box, a missing name — gives `Waypoints(valid=False)` with a reason, counted and logged: the action
expert then does not act and the controller's watchdog holds the robot. A failed plan is retried on
the next frame; a valid one stands for the episode unless `replan_every` asks for more.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nodes.vlm.adapter import SharedVlm, VlmAdapter, parse_vlm_spec
from nodes.vlm.parsing import extract_json_object
from nodes.waypoint_planner import GRIPPER_CLOSED, GRIPPER_OPEN
from pipeline.messages import Frame, RobotState, Waypoints
from pipeline.node import Node
from robot.safety import HARD_LIMITS
from sim.pointcloud import invert_transform, matrix_to_pose, pose_to_matrix

GRIPPER_WORDS = {"open": GRIPPER_OPEN, "close": GRIPPER_CLOSED, "closed": GRIPPER_CLOSED}
MIN_HEIGHT_M, MAX_HEIGHT_M = -0.20, 1.00  # height_m outside this is not a plan for a table-top arm
APPROACH_AXIS_BASE = np.array([0.0, 0.0, -1.0])  # top-down: the TCP's z points down
#: closing axis without a robot state: the Panda's TCP pointing down (quaternion wxyz 0 1 0 0) closes along −y
DEFAULT_CLOSING_AXIS_BASE = np.array([0.0, -1.0, 0.0])
HORIZONTAL_EPS = 1e-6
ANSWER_EXCERPT_CHARS = 160
MAX_SCHEMA_PROBLEMS = 3

CAUSE_FRAME = "frame_incomplete"
CAUSE_VLM = "vlm_error"
CAUSE_NO_JSON = "no_json"
CAUSE_SCHEMA = "schema"
CAUSE_NAMES = "waypoint_names"
CAUSE_PIXEL = "pixel_outside_image"
CAUSE_DEPTH = "depth_hole"
CAUSE_WORKSPACE = "outside_workspace"
COUNTER_PLANS = "plans"
COUNTER_INVALID = "invalid_plans"


@dataclass(frozen=True)
class WaypointRole:
    """One waypoint a task needs: its name, what it means (for the prompt) and an example value."""

    name: str
    meaning: str
    example_height_m: float
    example_gripper: str


TASK_WAYPOINTS: dict[str, tuple[WaypointRole, ...]] = {
    "pick": (WaypointRole("pre_grasp", "above the object, before grasping", 0.10, "open"),
             WaypointRole("grasp", "at the object, where the fingers close (a negative height reaches below its top)",
                          -0.02, "close"),
             WaypointRole("lift", "above the grasp, holding the object", 0.10, "close"),
             WaypointRole("goal", "where the held object should end up", 0.15, "close")),
    "push": (WaypointRole("pre_push", "above the start of the push", 0.08, "close"),
             WaypointRole("push_start", "beside the object, on the side away from the target", 0.02, "close"),
             WaypointRole("push_end", "where the push ends, the object at its target", 0.02, "close")),
    "stack": (WaypointRole("pre_grasp", "above the cube to move, before grasping", 0.10, "open"),
              WaypointRole("grasp", "at the cube to move, where the fingers close (a negative height reaches below its top)",
                           -0.02, "close"),
              WaypointRole("lift", "above the grasp, holding the cube", 0.10, "close"),
              WaypointRole("place", "just above the base cube, where the gripper lets go", 0.05, "open")),
}

PROMPT_TEMPLATE = """You control a robot arm. The image is its camera view, {width}x{height} pixels.
Task: {instruction}

Plan the gripper's waypoints. Answer with one JSON object and nothing else, in this schema:
{{"anchor": [u, v], "waypoints": [{{"name": NAME, "u": u, "v": v, "height_m": METRES, "gripper": "open" or "close"}}, ...]}}
- anchor: the pixel of the object to manipulate. A waypoint without u and v is placed at the anchor.
- u, v: pixel coordinates, u from 0 (left edge) to {max_u} (right edge), v from 0 (top edge) to {max_v} (bottom edge).
- height_m: metres above the surface seen at that pixel (0 = on the surface).
- gripper: the gripper command at that waypoint.
The waypoints, in this order:
{waypoint_lines}
Example answer: {example}"""


class PlanRejected(Exception):
    """A plan that must not be followed; `cause` names the counter, the message the reason."""

    def __init__(self, cause: str, reason: str):
        super().__init__(reason)
        self.cause = cause


class PlannedWaypoint(BaseModel):
    """One waypoint as the VLM gives it (extra keys, e.g. comments, are ignored)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    name: str
    u: float | None = None
    v: float | None = None
    height_m: float = Field(0.0, ge=MIN_HEIGHT_M, le=MAX_HEIGHT_M)
    gripper: Literal["open", "close", "closed"]

    @field_validator("gripper", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _both_or_neither(self) -> "PlannedWaypoint":
        if (self.u is None) != (self.v is None):
            raise ValueError("give both u and v, or neither (then the anchor is used)")
        return self


class VlmPlan(BaseModel):
    """The VLM's whole answer."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    anchor: tuple[float, float]
    waypoints: list[PlannedWaypoint] = Field(min_length=1)


def build_prompt(instruction: str, task: str, width: int, height: int) -> str:
    """The prompt that spells out the JSON schema, the pixel range and the task's waypoints in order."""
    roles = TASK_WAYPOINTS[task]
    example_pixel = [width // 2, height // 2]
    example = {"anchor": example_pixel, "waypoints": [
        {"name": r.name, "u": example_pixel[0], "v": example_pixel[1], "height_m": r.example_height_m,
         "gripper": r.example_gripper} for r in roles]}
    lines = "\n".join(f"- {r.name}: {r.meaning}" for r in roles)
    return PROMPT_TEMPLATE.format(width=width, height=height, instruction=instruction, max_u=width - 1, max_v=height - 1,
                                  waypoint_lines=lines, example=json.dumps(example))


def parse_plan(answer: str) -> VlmPlan:
    """The plan in a VLM answer; PlanRejected saying what is wrong with it."""
    raw = extract_json_object(answer)
    if raw is None:
        excerpt = answer[:ANSWER_EXCERPT_CHARS] if isinstance(answer, str) else repr(answer)
        raise PlanRejected(CAUSE_NO_JSON, f"no JSON object in the VLM's answer: {excerpt!r}")
    try:
        return VlmPlan.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'plan'}: {err['msg']}"
                             for err in exc.errors()[:MAX_SCHEMA_PROBLEMS])
        raise PlanRejected(CAUSE_SCHEMA, f"the VLM's plan does not match the schema: {problems}") from None


def select_waypoints(plan: VlmPlan, task: str) -> list[PlannedWaypoint]:
    """The task's waypoints in the task's order; PlanRejected if one is missing or given twice."""
    by_name: dict[str, list[PlannedWaypoint]] = {}
    for waypoint in plan.waypoints:
        by_name.setdefault(waypoint.name, []).append(waypoint)
    required = [role.name for role in TASK_WAYPOINTS[task]]
    missing = [name for name in required if name not in by_name]
    if missing:
        raise PlanRejected(CAUSE_NAMES, f"missing waypoints for task {task!r}: {missing} (the VLM gave {list(by_name)})")
    repeated = [name for name in required if len(by_name[name]) > 1]
    if repeated:
        raise PlanRejected(CAUSE_NAMES, f"waypoints given more than once: {repeated}")
    return [by_name[name][0] for name in required]


def median_depth(depth: np.ndarray, u: float, v: float, radius: int) -> float | None:
    """Median of the finite, positive depths within `radius` pixels of (u, v); None if there are none."""
    col, row = int(round(u)), int(round(v))
    window = depth[max(row - radius, 0):row + radius + 1, max(col - radius, 0):col + radius + 1]
    good = window[np.isfinite(window) & (window > 0)]
    return float(np.median(good)) if good.size else None


def lift_pixel(K: np.ndarray, u: float, v: float, z: float) -> np.ndarray:
    """The camera-frame point (OpenCV axes) at pixel (u, v) and depth z."""
    return np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z])


def top_down_rotation(closing_hint_base: np.ndarray) -> np.ndarray:
    """The GeometricPlanner's top-down TCP rotation (columns: x, closing y, approach z = down) whose closing
    axis is the horizontal direction nearest `closing_hint_base`."""
    closing = np.array([closing_hint_base[0], closing_hint_base[1], 0.0])
    norm = np.linalg.norm(closing)
    closing = closing / norm if norm > HORIZONTAL_EPS else DEFAULT_CLOSING_AXIS_BASE
    return np.stack([np.cross(closing, APPROACH_AXIS_BASE), closing, APPROACH_AXIS_BASE], axis=1)


def check_frame(frame: Frame) -> None:
    if frame.depth is None or frame.intrinsics is None or frame.T_base_frame is None:
        missing = [name for name in ("depth", "intrinsics", "T_base_frame") if getattr(frame, name) is None]
        raise PlanRejected(CAUSE_FRAME, f"the frame has no {', '.join(missing)}: cannot lift pixels to 3D")
    if frame.depth.shape != frame.image.shape[:2]:
        raise PlanRejected(CAUSE_FRAME, f"depth {frame.depth.shape} and image {frame.image.shape[:2]} differ in size")
    for name, shape in (("intrinsics", (3, 3)), ("T_base_frame", (4, 4))):
        matrix = np.asarray(getattr(frame, name))
        if matrix.shape != shape or not np.all(np.isfinite(matrix)):
            raise PlanRejected(CAUSE_FRAME, f"the frame's {name} is not a finite {shape[0]}x{shape[1]} matrix")


def _check_pixel(label: str, u: float, v: float, width: int, height: int) -> None:
    if not (0.0 <= u <= width - 1 and 0.0 <= v <= height - 1):
        raise PlanRejected(CAUSE_PIXEL, f"{label}: pixel ({u:g}, {v:g}) is outside the {width}x{height} image")


def lift_waypoints(waypoints: list[PlannedWaypoint], anchor: tuple[float, float], frame: Frame,
                   closing_hint_base: np.ndarray, depth_window_px: int) -> np.ndarray:
    """(K, 8) camera-frame rows (xyz, quat wxyz, gripper) of the waypoints; PlanRejected if one cannot be
    lifted or leaves the robot's hard workspace box."""
    height, width = frame.image.shape[:2]
    _check_pixel("anchor", *anchor, width, height)
    T_base_camera = np.asarray(frame.T_base_frame, np.float64)
    T_camera_base = invert_transform(T_base_camera)
    rotation = top_down_rotation(closing_hint_base)
    low, high = np.asarray(HARD_LIMITS.workspace_low), np.asarray(HARD_LIMITS.workspace_high)
    rows = []
    for waypoint in waypoints:
        u, v = (waypoint.u, waypoint.v) if waypoint.u is not None else anchor
        label = f"waypoint {waypoint.name!r}"
        _check_pixel(label, u, v, width, height)
        z = median_depth(frame.depth, u, v, depth_window_px)
        if z is None:
            raise PlanRejected(CAUSE_DEPTH, f"{label}: no valid depth within {depth_window_px} px of pixel ({u:g}, {v:g}) "
                                            "(a depth hole)")
        position = T_base_camera[:3, :3] @ lift_pixel(frame.intrinsics, u, v, z) + T_base_camera[:3, 3]
        position[2] += waypoint.height_m
        if not (np.all(np.isfinite(position)) and np.all(position >= low) and np.all(position <= high)):
            raise PlanRejected(CAUSE_WORKSPACE, f"{label} at ({', '.join(f'{c:.3f}' for c in position)}) m in the base "
                                                f"frame is outside the workspace box {tuple(low)}..{tuple(high)}")
        pose_base = np.eye(4)
        pose_base[:3, :3], pose_base[:3, 3] = rotation, position
        rows.append(np.concatenate([matrix_to_pose(T_camera_base @ pose_base), [GRIPPER_WORDS[waypoint.gripper]]]))
    return np.stack(rows).astype(np.float32)


class VlmPlannerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vlm: dict[str, Any] = Field(description="the model: {hf: PATH} or {openai: URL, model: NAME} (see nodes.vlm.adapter)")
    instruction: str = Field(min_length=1, description="what to do, e.g. 'pick up the red cube and lift it'")
    task: Literal["pick", "push", "stack"] = "pick"
    max_new_tokens: int = Field(384, ge=16)
    replan_every: int | None = Field(None, ge=1, description="plan again every N robot steps; None: once per episode")
    depth_window_px: int = Field(2, ge=0, description="median depth over a (2r+1)² window around each pixel")

    @field_validator("vlm")
    @classmethod
    def _valid_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        parse_vlm_spec(spec)  # checks the spec only: validating a graph loads no model
        return spec


class VlmWaypointPlanner(Node):
    Params = VlmPlannerParams
    inputs = {"frame": Frame, "state": RobotState}
    outputs = {"waypoints": Waypoints}

    def setup(self) -> None:
        self.vlm: VlmAdapter = SharedVlm(self.params.vlm)  # one copy per process, shared by the graph's nodes
        self.state: RobotState | None = None
        self.planned_episode, self.planned_step = -1, -1

    def close(self) -> None:
        vlm = getattr(self, "vlm", None)
        if vlm is not None:
            vlm.close()

    def on_state(self, msg: RobotState) -> None:
        self.state = msg

    def _due(self, frame: Frame) -> bool:
        if self.planned_episode != frame.episode:
            return True
        every = self.params.replan_every
        return every is not None and frame.step - self.planned_step >= every

    def _closing_hint(self, frame: Frame) -> np.ndarray:
        state = self.state
        if state is None or state.episode != frame.episode or not np.all(np.isfinite(state.ee_pose)):
            return DEFAULT_CLOSING_AXIS_BASE
        return pose_to_matrix(state.ee_pose)[:3, 1]

    def _plan(self, frame: Frame) -> tuple[np.ndarray, list[str]]:
        check_frame(frame)
        height, width = frame.image.shape[:2]
        prompt = build_prompt(self.params.instruction, self.params.task, width, height)
        try:
            answers = self.vlm.generate([np.asarray(frame.image)], prompt, max_new_tokens=self.params.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 — whatever the backend raised, the robot must not move on it
            raise PlanRejected(CAUSE_VLM, f"the VLM call failed: {type(exc).__name__}: {exc}") from None
        if not answers:
            raise PlanRejected(CAUSE_VLM, "the VLM returned no answer")
        plan = parse_plan(answers[0])
        waypoints = select_waypoints(plan, self.params.task)
        rows = lift_waypoints(waypoints, plan.anchor, frame, self._closing_hint(frame), self.params.depth_window_px)
        return rows, [w.name for w in waypoints]

    def on_frame(self, msg: Frame) -> None:
        if not self._due(msg):
            return
        try:
            rows, names = self._plan(msg)
        except PlanRejected as rejected:
            self._invalid(msg, rejected.cause, str(rejected))
            return
        self.planned_episode, self.planned_step = msg.episode, msg.step
        self.count(COUNTER_PLANS)
        self.emit("waypoints", Waypoints(stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, poses=rows, names=names,
                                         T_base_frame=msg.T_base_frame, episode=msg.episode))

    def _invalid(self, msg: Frame, cause: str, reason: str) -> None:
        self.count(COUNTER_INVALID)
        self.count(f"{COUNTER_INVALID}_{cause}")
        self.log.error("episode %d step %d: no plan: %s", msg.episode, msg.step, reason)
        self.emit("waypoints", Waypoints(stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, poses=np.zeros((0, 8), np.float32),
                                         valid=False, reason=reason, episode=msg.episode))
