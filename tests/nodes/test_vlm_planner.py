"""The VLM waypoint planner with a scripted VLM: a plan in pixels becomes exact 3D waypoints, and every
kind of bad answer becomes an invalid plan that says why, is counted, and makes the loop hold."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nodes.action_expert.node import ActionExpert
from nodes.controller import WATCHDOG_DEADLINE_S, Controller
from nodes.vlm import VlmAdapter, VlmError
from nodes.vlm_planner import VlmWaypointPlanner
from pipeline.harness import NodeHarness, TimedInput
from pipeline.messages import Frame, PointCloud, RobotState, Waypoints
from pipeline.node import ParamsError
from sim.pointcloud import backproject_depth, matrix_to_pose, pose_to_matrix, quat_to_matrix

SHIPPED_EXPERT = Path(__file__).resolve().parents[2] / "models" / "action_expert_pickcube.pt"
SIZE = 64
K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
TABLE_DEPTH_M, CUBE_DEPTH_M, WALL_DEPTH_M = 0.75, 0.70, 3.0
CUBE_PIXELS = (slice(28, 37), slice(28, 37))  # rows, cols
WALL_ROWS = slice(0, 4)  # far away: lifts to outside the workspace
HOLE_PIXELS = (slice(50, 59), slice(50, 59))  # no depth at all: wider than the median window
DOWN_WXYZ = np.array([0.0, 1.0, 0.0, 0.0])  # TCP pointing down
PARAMS = {"vlm": {"hf": "models/vlm"}, "instruction": "pick up the red cube and lift it", "task": "pick"}
VALID_PLAN = """Sure. The red cube is near the centre.
```json
{"anchor": [32, 32],
 "waypoints": [
   {"name": "grasp", "height_m": 0.0, "gripper": "close"},
   {"name": "pre_grasp", "height_m": 0.10, "gripper": "open"},
   {"name": "approach", "u": 1, "v": 1, "height_m": 0.5, "gripper": "open", "note": "extra: ignored"},
   {"name": "lift", "u": 32.5, "v": 31.5, "height_m": 0.10, "gripper": "Close"},
   {"name": "goal", "u": 20, "v": 30, "height_m": 0.15, "gripper": "closed"}]}
```
Let me know if you need anything else."""
EXPECTED = [("pre_grasp", 32, 32, CUBE_DEPTH_M, 0.10, 1.0), ("grasp", 32, 32, CUBE_DEPTH_M, 0.0, -1.0),
            ("lift", 32.5, 31.5, CUBE_DEPTH_M, 0.10, -1.0), ("goal", 20, 30, TABLE_DEPTH_M, 0.15, -1.0)]


def plan_with(**changes) -> str:
    """The EXPECTED plan as JSON, with waypoints changed by name, e.g. plan_with(goal={"u": 99})."""
    plan = {"anchor": [32, 32], "waypoints": [{"name": n, "u": u, "v": v, "height_m": h, "gripper": "open" if g > 0 else "close"}
                                              for n, u, v, _, h, g in EXPECTED]}
    for waypoint in plan["waypoints"]:
        waypoint.update(changes.get(waypoint["name"], {}))
    return json.dumps(plan)


class ScriptedVlm(VlmAdapter):
    """Answers with canned texts in turn; an exception in the script is raised instead."""

    def __init__(self, *answers: str | Exception):
        self.answers = list(answers)
        self.prompts: list[str] = []

    def generate(self, images, prompt, *, max_new_tokens, n_samples=1, temperature=0.0, seed=0):
        self.prompts.append(prompt)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return [answer] * n_samples


def camera_pose() -> np.ndarray:
    """A camera 0.5 m up and 0.7 m in front of the base, looking down at the table (camera -> base)."""
    forward = np.array([-0.6, 0.0, -0.5]) / np.linalg.norm([-0.6, 0.0, -0.5])
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)  # OpenCV: x right, y down, z forward
    T[:3, 3] = [0.7, 0.0, 0.5]
    return T


def frame(episode: int = 0, step: int = 0) -> Frame:
    depth = np.full((SIZE, SIZE), TABLE_DEPTH_M, np.float32)
    depth[CUBE_PIXELS] = CUBE_DEPTH_M
    depth[32, 32] = 0.0  # a one-pixel hole right at the anchor: the median window rides over it
    depth[WALL_ROWS] = WALL_DEPTH_M
    depth[HOLE_PIXELS] = np.nan
    return Frame(image=np.zeros((SIZE, SIZE, 3), np.uint8), intrinsics=K, depth=depth, T_base_frame=camera_pose(),
                 frame_id="base_camera", episode=episode, step=step)


def robot_state(episode: int = 0, step: int = 0, yaw: float = 0.0) -> RobotState:
    yawed = quat_to_matrix([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]) @ quat_to_matrix(DOWN_WXYZ)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = yawed, [0.2, 0.0, 0.3]
    return RobotState(qpos=np.zeros(9, np.float32), qvel=np.zeros(9, np.float32), ee_pose=matrix_to_pose(T).astype(np.float32),
                      gripper=1.0, episode=episode, step=step)


@pytest.fixture
def planner(monkeypatch):
    """A harness around the planner whose `SharedVlm` hands out the ScriptedVlm set on `harness.vlm`."""
    harness_vlm = ScriptedVlm()
    monkeypatch.setattr("nodes.vlm_planner.SharedVlm", lambda spec: harness_vlm)

    def make(*answers: str | Exception, **params) -> NodeHarness:
        harness_vlm.answers = list(answers)
        harness = NodeHarness(VlmWaypointPlanner, {**PARAMS, **params})
        harness.vlm = harness_vlm
        return harness

    return make


def base_poses(plan: Waypoints) -> np.ndarray:
    return np.stack([plan.T_base_frame @ pose_to_matrix(row[:7]) for row in plan.poses])


def test_a_valid_plan_lifts_each_pixel_to_its_3d_point(planner):
    harness = planner(VALID_PLAN)
    harness.send("state", robot_state())
    (out,) = harness.send("frame", frame())
    plan = out.message
    assert plan.valid and plan.reason == "" and plan.names == [name for name, *_ in EXPECTED]
    assert plan.frame_id == "base_camera" and plan.poses.shape == (4, 8) and plan.poses.dtype == np.float32
    T = camera_pose()
    poses = base_poses(plan)
    for pose, (name, u, v, depth, height, gripper) in zip(poses, EXPECTED):
        camera_point = np.array([(u - 32) * depth / 100, (v - 32) * depth / 100, depth])
        expected = T[:3, :3] @ camera_point + T[:3, 3] + [0, 0, height]
        np.testing.assert_allclose(pose[:3, 3], expected, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(pose[:3, :3], quat_to_matrix(DOWN_WXYZ), atol=1e-5, err_msg=name)  # top-down, as the TCP
    assert list(plan.poses[:, 7]) == [g for *_, g in EXPECTED]
    assert harness.metrics["counters"] == {"plans": 1}
    assert "pre_grasp" in harness.vlm.prompts[0] and "63 (right edge)" in harness.vlm.prompts[0]


def test_the_closing_axis_follows_the_tcp_and_stays_top_down(planner):
    harness = planner(VALID_PLAN)
    harness.send("state", robot_state(yaw=np.radians(30)))
    grasp = base_poses(harness.send("frame", frame())[0].message)[1]
    np.testing.assert_allclose(grasp[:3, 2], [0, 0, -1], atol=1e-6)
    np.testing.assert_allclose(grasp[:3, 1], quat_to_matrix([np.cos(np.radians(15)), 0, 0, np.sin(np.radians(15))]) @ [0, -1, 0],
                               atol=1e-6)


@pytest.mark.parametrize("answer, cause, words", [
    ("I cannot see a cube, sorry.", "no_json", "no JSON object"),
    ('{"anchor": [32], "waypoints": []}', "schema", "anchor"),
    (plan_with(goal={"gripper": "maybe"}), "schema", "gripper"),
    (plan_with(goal={"height_m": float("nan")}), "schema", "height_m"),  # json.loads takes NaN; the schema does not
    (plan_with(goal={"u": 70, "v": 10}), "pixel_outside_image", "'goal': pixel (70, 10) is outside the 64x64 image"),
    (plan_with(goal={"v": -1}), "pixel_outside_image", "outside the 64x64 image"),
    (plan_with(goal={"u": 10, "v": 1}), "outside_workspace", "'goal' at"),
    (plan_with(lift={"height_m": 0.9}), "outside_workspace", "outside the workspace box"),
    (plan_with(grasp={"u": 54, "v": 54}), "depth_hole", "'grasp': no valid depth"),
    (plan_with(goal={"name": "place"}), "waypoint_names", "missing waypoints for task 'pick': ['goal']"),
    (VlmError("POST http://127.0.0.1:8000/v1/chat/completions: HTTP 500"), "vlm_error", "HTTP 500"),
    (TimeoutError("no answer within 30 s"), "vlm_error", "TimeoutError"),
])
def test_bad_answers_give_an_invalid_plan_that_names_the_problem(planner, answer, cause, words):
    harness = planner(answer)
    (out,) = harness.send("frame", frame())
    plan = out.message
    assert not plan.valid and words in plan.reason and plan.poses.shape == (0, 8)
    assert harness.metrics["counters"] == {"invalid_plans": 1, f"invalid_plans_{cause}": 1}


def test_a_frame_without_depth_is_refused_without_asking_the_vlm(planner):
    harness = planner()
    incomplete = frame()
    incomplete.depth = None
    plan = harness.send("frame", incomplete)[0].message
    assert not plan.valid and "no depth" in plan.reason and harness.vlm.prompts == []


def test_plans_once_per_episode_and_retries_after_a_failure(planner):
    harness = planner("garbage", VALID_PLAN, VALID_PLAN)
    plans = [o.message for o in harness.run([TimedInput(0.0, "frame", frame(0, 0)), TimedInput(0.1, "frame", frame(0, 1)),
                                             TimedInput(0.2, "frame", frame(0, 2)), TimedInput(0.3, "frame", frame(1, 0))])]
    assert [(p.episode, p.valid) for p in plans] == [(0, False), (0, True), (1, True)]


def test_replan_every_n_steps(planner):
    harness = planner(VALID_PLAN, VALID_PLAN, replan_every=5)
    out = harness.run([TimedInput(0.1 * s, "frame", frame(0, s)) for s in (0, 3, 5, 7)])
    assert len(out) == 2 and len(harness.vlm.prompts) == 2


def test_a_bad_vlm_spec_fails_validation_by_name():
    with pytest.raises(ParamsError, match="params.vlm.*vlm.model"):
        VlmWaypointPlanner({**PARAMS, "vlm": {"openai": "http://127.0.0.1:8000/v1"}})


def test_an_invalid_plan_makes_the_loop_hold_and_a_valid_one_moves_it(planner):
    """Planner → shipped ActionExpert → Controller, each through its harness, as the graph wires them."""
    harness = planner("no plan here", VALID_PLAN)
    expert = NodeHarness(ActionExpert, {"checkpoint": str(SHIPPED_EXPERT), "device": "cpu", "num_threads": 1})
    controller = NodeHarness(Controller)

    def one_step(episode: int, t_s: float) -> list:
        camera = frame(episode)
        plan = harness.send("frame", camera, t_s)[0].message
        points, _ = backproject_depth(np.nan_to_num(camera.depth), K)
        cloud = PointCloud(xyz=points, T_base_frame=camera.T_base_frame, frame_id="base_camera", episode=episode, step=0)
        state = robot_state(episode)
        chunks = expert.run([TimedInput(t_s, "waypoints", plan), TimedInput(t_s, "state", state), TimedInput(t_s, "cloud", cloud)])
        return controller.run([TimedInput(t_s, "state", state)] + [TimedInput(t_s, "actions", c.message) for c in chunks],
                              until_s=t_s + 2 * WATCHDOG_DEADLINE_S)

    held = one_step(episode=0, t_s=0.0)
    assert [(c.message.hold, c.message.reason) for c in held] == [(True, "watchdog")]
    assert expert.metrics["counters"] == {"invalid_plans": 1}
    moved = one_step(episode=1, t_s=5.0)
    assert len(moved) == 1 and not moved[0].message.hold and np.all(np.isfinite(moved[0].message.action))
