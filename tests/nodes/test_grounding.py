"""Grounding on constructed frames: the colour baseline and the oracle find the named cube, say when it
is absent, and an absent target reaches the planner (no plan, with the reason) and the controller (hold);
the shipped UGround is selectable by name and keeps the grounder's contract (its quality is not asserted:
it was trained on shapes-world stills, not on these frames)."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from nodes.controller import Controller
from nodes.grounding import (
    COLOR,
    ORACLE,
    UGROUND,
    ColorGrounder,
    Grounding,
    Instruction,
    OracleGrounder,
    TargetGrounding,
    Mask,
    make_grounder,
    named_colour,
    rgb_to_hsv,
)
from nodes.pointcloud import PointCloudNode
from nodes.waypoint_planner import GeometricPlanner
from pipeline.harness import NodeHarness
from pipeline.messages import ActionChunk, Frame, RobotState, Waypoints
from pipeline.node import ParamsError
from sim.pointcloud import pose_to_matrix

SIZE = 96
K = np.array([[120.0, 0, SIZE / 2], [0, 120.0, SIZE / 2], [0, 0, 1]])
CUBE_HALF = 0.02
TABLE_RGB, ROBOT_RGB = (190, 95, 50), (140, 142, 143)  # the sim's wood (hue ~20°) and the Panda's grey
#: colour -> (rgb as the sim renders it, cube centre xy in the base frame)
CUBES = {"green": ((46, 160, 63), (0.05, 0.08)), "blue": ((46, 75, 173), (0.10, -0.05)),
         "yellow": ((176, 168, 47), (-0.02, -0.06))}
SEGMENT_NAMES = {1: "table-workspace", 2: "panda_link7", 3: "cube_green", 4: "cube_blue", 5: "cube_yellow", 6: "cube_red"}
DOWN = np.array([0.0, 1.0, 0.0, 0.0])  # TCP pointing down


def segment_id(colour: str) -> int:
    return next(i for i, name in SEGMENT_NAMES.items() if name == f"cube_{colour}")


def camera_pose() -> np.ndarray:
    """Camera -> base: 0.6 m above (0.03, 0, 0), looking straight down (image x = base -y, image y = base -x)."""
    T = np.eye(4)
    T[:3, :3] = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    T[:3, 3] = [0.03, 0.0, 0.6]
    return T


def scene_frame(colours=tuple(CUBES), step: int = 0, episode: int = 0) -> Frame:
    """A top-down RGB-D frame of the table with the given cubes (top faces) and a strip of robot."""
    T = camera_pose()
    v, u = np.mgrid[0:SIZE, 0:SIZE]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((SIZE, SIZE))], -1) @ T[:3, :3].T
    height = np.zeros((SIZE, SIZE))
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = TABLE_RGB
    segmentation = np.ones((SIZE, SIZE), np.int32)
    top_xy = T[:3, 3][:2] + rays[..., :2] * ((T[2, 3] - 2 * CUBE_HALF) / -rays[..., 2:3])
    for colour in colours:
        rgb, centre = CUBES[colour]
        on_top = np.all(np.abs(top_xy - centre) <= CUBE_HALF, axis=-1)
        height[on_top], image[on_top] = 2 * CUBE_HALF, rgb
        segmentation[on_top] = segment_id(colour)
    image[:, -6:], segmentation[:, -6:], height[:, -6:] = ROBOT_RGB, 2, 0.3
    depth = ((T[2, 3] - height) / -rays[..., 2]).astype(np.float32)  # distance along the optical axis
    return Frame(image=image, intrinsics=K, depth=depth, segmentation=segmentation, segment_names=SEGMENT_NAMES,
                 T_base_frame=T, frame_id="base_camera", episode=episode, step=step)


def robot_state(step: int = 0, episode: int = 0) -> RobotState:
    return RobotState(qpos=np.zeros(9, np.float32), qvel=np.zeros(9, np.float32), step=step, episode=episode,
                      ee_pose=np.array([0.0, 0.0, 0.3, *DOWN], np.float32), goal_pos=np.array([0.0, 0.0, 0.2], np.float32))


def test_instruction_words_and_hues():
    assert named_colour("Pick the GREEN cube, please") == "green"
    assert named_colour("pick the cube") is None
    hue, saturation, value = rgb_to_hsv(np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]], np.uint8))
    np.testing.assert_allclose(hue[:3], [0.0, 120.0, 240.0])
    assert saturation[3] == 0.0 and value[3] == pytest.approx(128 / 255)


@pytest.mark.parametrize("grounder", [ORACLE, COLOR])
@pytest.mark.parametrize("colour", list(CUBES))
def test_both_grounders_find_exactly_the_named_cube(grounder, colour):
    frame = scene_frame()
    result = make_grounder(grounder).ground(frame, f"pick the {colour} cube")
    assert result.found and result.reason == "" and result.score > 0.5
    np.testing.assert_array_equal(result.mask, frame.segmentation == segment_id(colour))


@pytest.mark.parametrize("grounder", [OracleGrounder(), ColorGrounder()])
def test_an_absent_or_unnamed_colour_is_an_empty_mask_with_a_reason(grounder):
    frame = scene_frame()
    absent = grounder.ground(frame, "pick the red cube")
    assert not absent.found and not absent.mask.any() and absent.reason.startswith("absent")
    unnamed = grounder.ground(frame, "pick the cube")
    assert not unnamed.found and unnamed.reason.startswith("unknown")


def test_the_colour_baseline_ignores_specks_of_the_colour():
    frame = scene_frame(colours=("blue",))
    frame.image[10:13, 10:13] = CUBES["green"][0]  # 9 green pixels, e.g. an anti-aliased edge
    assert not ColorGrounder().ground(frame, "pick the green cube").found


def test_unknown_grounder_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="oracle"):
        make_grounder("sam")
    with pytest.raises(ValueError, match="checkpoint"):
        make_grounder(COLOR, {"checkpoint": "x.pt"})


def test_the_node_waits_for_its_episodes_instruction_then_masks_each_frame():
    harness = NodeHarness(TargetGrounding, {"grounder": COLOR})
    assert harness.send("frame", scene_frame(step=0)) == []  # no instruction yet for episode 0
    out = harness.send("instruction", Instruction(text="pick the blue cube", episode=0))
    mask = out[0].message
    assert isinstance(mask, Mask) and mask.masks.shape == (1, SIZE, SIZE) and (mask.episode, mask.step) == (0, 0)
    assert mask.labels == ["pick the blue cube"] and mask.reason == ""
    absent = harness.send("instruction", Instruction(text="pick the red cube", episode=1))
    assert absent == []
    later = harness.send("frame", scene_frame(step=0, episode=1))[0].message
    assert later.masks.shape == (0, SIZE, SIZE) and later.scores.shape == (0,) and later.reason.startswith("absent")


def test_an_absent_target_is_a_warning_once_per_episode_and_counted_every_frame(caplog):
    harness = NodeHarness(TargetGrounding, {"grounder": COLOR, "instruction": "pick the red cube"})
    with caplog.at_level(logging.DEBUG, logger="groundloop.node"):
        for episode, step in ((0, 0), (0, 1), (0, 2), (1, 0)):
            assert harness.send("frame", scene_frame(step=step, episode=episode))[0].message.reason.startswith("absent")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "red" in r.getMessage()]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["episode 0 step 0", "episode 1 step 0"]
    assert harness.node.counters["absent"] == 4


SHIPPED_UGROUND = {"model": "models/uground_shapes", "device": "cpu"}


@pytest.fixture(scope="module")
def uground():
    """The shipped UGround, loaded once: the registry builds it lazily (nodes.uground imports this module)."""
    from nodes.uground.node import UGroundGrounder

    grounder = make_grounder(UGROUND, SHIPPED_UGROUND)
    assert isinstance(grounder, UGroundGrounder)
    return grounder


def assert_grounding_contract(result: Grounding) -> None:
    """A found target is a non-empty (H, W) mask with a score in [0, 1]; an absent one is empty with a reason."""
    assert isinstance(result, Grounding) and result.mask.shape == (SIZE, SIZE) and result.mask.dtype == bool
    if result.found:
        assert result.mask.any() and 0.0 <= result.score <= 1.0
    else:
        assert not result.mask.any() and result.score == 0.0 and result.reason.startswith("absent")


@pytest.mark.parametrize("instruction", ["pick the green cube", "pick the purple moon", "nothing at all"])
def test_uground_answers_any_instruction_with_a_mask_or_an_absent_target(uground, instruction):
    assert_grounding_contract(uground.ground(scene_frame(), instruction))


def test_uground_takes_its_options_from_the_node_and_rejects_unknown_ones():
    with pytest.raises(ValueError, match="checkpoint"):
        make_grounder(UGROUND, {**SHIPPED_UGROUND, "checkpoint": "x.pt"})
    with pytest.raises(FileNotFoundError, match="no UGround model"):
        make_grounder(UGROUND, {"model": "models/no_such_uground"})
    with pytest.raises(ParamsError, match="unknown grounders"):
        NodeHarness(TargetGrounding, {"grounder": UGROUND, "options": {"sam": {}}})
    harness = NodeHarness(TargetGrounding, {"grounder": UGROUND, "instruction": "pick the blue cube",
                                            "options": {UGROUND: {**SHIPPED_UGROUND, "mode": 3},
                                                        ORACLE: {"target_template": "ignored_{colour}"}}})
    mask = harness.send("frame", scene_frame(step=3))[0].message
    assert isinstance(mask, Mask) and mask.masks.shape[1:] == (SIZE, SIZE) and mask.step == 3
    assert len(mask.masks) == len(mask.scores) == len(mask.labels) and len(mask.masks) in (0, 1)
    assert (len(mask.masks) == 0) == mask.reason.startswith("absent")


def ground(colour: str, step: int = 0) -> tuple[Frame, Mask]:
    frame = scene_frame(step=step)
    harness = NodeHarness(TargetGrounding, {"grounder": COLOR, "instruction": f"pick the {colour} cube"})
    return frame, harness.send("frame", frame)[0].message


def test_the_cloud_flags_the_masks_points_whichever_comes_first():
    frame, mask = ground("green")
    for first, second in ((("frame", frame), ("mask", mask)), (("mask", mask), ("frame", frame))):
        harness = NodeHarness(PointCloudNode, {"n_points": 4096, "target_from": "mask"})
        assert harness.send(*first) == []
        cloud = harness.send(*second)[0].message
        target_base = cloud.xyz[cloud.is_target] @ cloud.T_base_frame[:3, :3].T + cloud.T_base_frame[:3, 3]
        np.testing.assert_allclose(target_base[:, :2].mean(0), CUBES["green"][1], atol=3e-3)
        np.testing.assert_allclose(target_base[:, 2], 2 * CUBE_HALF, atol=1e-4)


def test_later_frames_use_the_newest_mask_of_their_episode_without_waiting():
    frame, mask = ground("green")
    harness = NodeHarness(PointCloudNode, {"n_points": 4096, "target_from": "mask"})
    harness.send("mask", mask)
    later = harness.send("frame", scene_frame(step=3))[0].message  # grounding lags: the step-0 mask serves
    target_points = np.unique(later.xyz[later.is_target], axis=0)  # the cloud pads by repetition
    assert later.step == 3 and len(target_points) == (frame.segmentation == segment_id("green")).sum()
    assert harness.send("frame", scene_frame(episode=1)) == []  # a new episode waits for its own grounding
    assert harness.send("mask", dataclasses.replace(mask, episode=1, seq=1))[0].message.episode == 1


def plan_for(colour: str) -> Waypoints:
    """Frame → grounding → cloud → planner, as in configs/grounded_pick.yaml."""
    frame, mask = ground(colour)
    cloud_node = NodeHarness(PointCloudNode, {"n_points": 2048, "target_from": "mask"})
    cloud_node.send("frame", frame)
    cloud = cloud_node.send("mask", mask)[0].message
    planner = NodeHarness(GeometricPlanner)
    planner.send("state", robot_state())
    planner.send("target", mask)
    return planner.send("cloud", cloud)[0].message


def test_the_planner_grasps_the_named_cube_among_distractors():
    plan = plan_for("yellow")
    assert plan.valid and plan.names == ["pre_grasp", "grasp", "lift", "goal"]
    grasp = plan.T_base_frame @ pose_to_matrix(plan.poses[1, :7])
    np.testing.assert_allclose(grasp[:2, 3], CUBES["yellow"][1], atol=3e-3)


def test_an_absent_target_means_no_plan_with_the_reason_and_the_controller_holds():
    plan = plan_for("red")
    assert not plan.valid and len(plan.poses) == 0
    assert plan.reason.startswith("grounding: absent") and "red" in plan.reason
    controller = NodeHarness(Controller)
    controller.send("plan", plan)
    commands = [controller.send("state", robot_state(step))[0].message for step in range(3)]
    assert all(c.hold and c.reason == plan.reason for c in commands)
    assert all(np.all(c.action[:6] == 0.0) for c in commands)  # no motion
    assert controller.metrics["counters"] == {"hold_no_plan": 3}


def test_a_valid_plan_lifts_the_hold():
    controller = NodeHarness(Controller)
    controller.send("plan", plan_for("red"))
    assert controller.send("state", robot_state(0))[0].message.hold
    controller.send("plan", dataclasses.replace(plan_for("blue"), seq=1))  # the planner's next message
    chunk = np.zeros((2, 7), np.float32)
    chunk[:, 0], chunk[:, 6] = 0.1, 1.0
    controller.send("actions", ActionChunk(actions=chunk, stamps_ns=np.zeros(2, np.int64), start_step=1))
    command = controller.send("state", robot_state(1))[0].message
    assert not command.hold and command.action[0] == pytest.approx(0.1)
